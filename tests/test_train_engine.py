"""The shared loop: checkpoints, logs, resume at epoch boundaries, safety checks; and the
supervised and linear-probe recipes' containers and behaviours."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml
from PIL import Image

import castvit
from castvit.checkpoint import read_checkpoint
from castvit.data.datasets import ImageFolder, build_loader, synthetic_dataset
from castvit.data.transforms import EvalView, SuperpixelConfig, TrainView
from castvit.train.engine import LoopConfig, Recipe, fit
from castvit.train.linear_probe import LinearProbeConfig, train_linear_probe
from castvit.train.optim import ModelEma
from castvit.train.supervised import SupervisedConfig, evaluate_classifier, soft_cross_entropy, train_supervised


pytestmark = pytest.mark.usefixtures("one_thread")

GRID = SuperpixelConfig(method="grid", n_segments=16)
TINY = dict(img_size=32, embed_dim=48, depth=[1, 1, 1, 1], num_heads=4, num_clusters=[8, 4, 4, 2], num_classes=4)


def tiny_model(**kw):
    torch.manual_seed(0)
    return castvit.create_model("cast_small", **{**TINY, **kw})


def loaders(n_train=16, n_val=8, batch=4):
    train = build_loader(synthetic_dataset(n_train, seed=0, image_size=32), TrainView(32, scale=(0.5, 1.0),
                         superpixels=GRID), batch_size=batch, train=True, keep_keys=("label",))
    val = build_loader(synthetic_dataset(n_val, seed=1, image_size=32), EvalView(32, crop_fraction=1.0,
                       superpixels=GRID), batch_size=batch, train=False, keep_keys=("label",))
    return train, val


@pytest.fixture(scope="module")
def supervised_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sup")
    train, val = loaders()
    model = tiny_model()
    cfg = SupervisedConfig(epochs=2, lr=1e-3, warmup_epochs=1, ema_decay=0.9, log_every=2, num_workers=0,
                           checkpoint_every_steps=2)
    history = train_supervised(model, train, cfg, val_loader=val, out_dir=out, progress=False)
    return out, model, history


def test_checkpoint_holds_everything_needed_to_resume(supervised_run):
    out, model, _ = supervised_run
    ckpt = read_checkpoint(out / "last.pth.tar")
    assert {"model", "optimizer", "lr_scheduler", "epoch", "model_ema", "scaler", "args"} <= set(ckpt)
    info = ckpt["castvit"]
    assert (info["epoch"], info["step"], info["global_step"]) == (2, 0, 8)
    assert info["recipe"] == "supervised" and info["config"]["lr"] == 1e-3
    assert len(info["rng"]) == 1 and {"python", "numpy", "torch"} <= set(info["rng"][0])
    assert len(info["history"]) == 2
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["model"][k], v)


def test_last_best_config_and_metrics_are_written_atomically(supervised_run):
    out, _, history = supervised_run
    names = sorted(p.name for p in out.iterdir())
    assert names == ["best.pth.tar", "config.yaml", "last.pth.tar", "metrics.jsonl"], "no temp files left"
    assert yaml.safe_load((out / "config.yaml").read_text())["ema_decay"] == 0.9
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["global_step"] for r in steps] == [2, 4, 6, 8]
    assert {"loss", "acc", "lr"} <= set(steps[0])
    assert len(epochs) == 2 and {"train_loss", "train_acc", "val_acc", "val_loss", "val_ema_acc", "lr",
                                 "skipped_images"} <= set(epochs[0])
    assert history["val_acc"] == [r["val_acc"] for r in epochs]
    best = read_checkpoint(out / "best.pth.tar")["castvit"]
    assert best["best"] == max(history["val_acc"])


def test_supervised_container_loads_with_castvit_load_checkpoint(supervised_run):
    out, model, _ = supervised_run
    fresh = tiny_model()
    assert castvit.load_checkpoint(fresh, out / "last.pth.tar").container == "deit"
    ema = tiny_model()
    castvit.load_checkpoint(ema, out / "last.pth.tar", use_ema=True)
    assert not torch.equal(ema.head.weight, fresh.head.weight)


def test_resume_at_an_epoch_boundary_extends_a_finished_run(supervised_run, tmp_path):
    out, _, _ = supervised_run
    import shutil

    shutil.copytree(out, tmp_path / "run")
    train, val = loaders()
    cfg = SupervisedConfig(epochs=3, lr=1e-3, warmup_epochs=1, ema_decay=0.9, log_every=2, num_workers=0)
    history = train_supervised(tiny_model(), train, cfg, val_loader=val, out_dir=tmp_path / "run",
                               progress=False, resume=True)
    assert history["epoch"] == [0, 1, 2]
    assert read_checkpoint(tmp_path / "run" / "last.pth.tar")["castvit"]["global_step"] == 12


def test_resume_without_a_checkpoint_starts_fresh_with_a_warning(tmp_path):
    train, _ = loaders()
    with pytest.warns(UserWarning, match="starting from scratch"):
        history = train_supervised(tiny_model(), train, SupervisedConfig(epochs=1, num_workers=0, warmup_epochs=0),
                                   out_dir=tmp_path, progress=False, resume=True)
    assert history["epoch"] == [0]


def test_unreadable_images_are_counted_in_the_epoch_log(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    (tmp_path / "data" / "b" / "2.png").write_bytes(b"broken")
    loader = build_loader(ImageFolder(tmp_path / "data"), TrainView(32, superpixels=GRID), batch_size=4, train=True)
    with pytest.warns(UserWarning):
        history = train_supervised(tiny_model(num_classes=2), loader, SupervisedConfig(epochs=1, num_workers=0,
                                   warmup_epochs=0), out_dir=tmp_path / "out", progress=False)
    assert history["skipped_images"] == [1]
    epoch = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()][-1]
    assert epoch["skipped_images"] == 1


class ConstantRecipe(Recipe):
    name = "constant"

    def __init__(self, loss):
        self.loss = loss

    def train_step(self, batch, *, epoch, step, t):
        return {"loss": torch.tensor(self.loss)}, len(batch["label"]), {"lr": 0.0}

    def container(self, next_epoch):
        return {"epoch": next_epoch}

    def load_container(self, ckpt):
        return ckpt["epoch"]


def test_a_non_finite_loss_stops_training_with_a_clear_error():
    train, _ = loaders()
    with pytest.raises(FloatingPointError, match="loss is nan"):
        fit(ConstantRecipe(float("nan")), train, LoopConfig(epochs=1), progress=False)


def test_bf16_autocast_trains_and_evaluates():
    train, val = loaders(n_train=8)
    history = train_supervised(tiny_model(), train, SupervisedConfig(epochs=1, amp_bf16=True, num_workers=0,
                               warmup_epochs=0), val_loader=val, progress=False)
    assert np.isfinite(history["train_loss"][0]) and 0 <= history["val_acc"][0] <= 1


class FixedLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.calls = 0

    def forward(self, images, superpixels):
        out = self.logits[self.calls:self.calls + len(images)]
        self.calls += len(images)
        return out


def test_evaluate_classifier_counts_top1_top5_and_loss():
    logits = torch.tensor([[5.0, 0, 0, 0, 0, 0], [0, 5.0, 0, 0, 0, 0], [0, 0, 1.0, 2.0, 0, 0],
                           [3.0, 2, 1, 0, -1, -2]])
    batches = [{"image": torch.zeros(2, 3, 8, 8), "superpixels": torch.zeros(2, 8, 8, dtype=torch.long),
                "label": torch.tensor(lbl)} for lbl in ([0, 1], [2, 5])]
    out = evaluate_classifier(FixedLogits(logits), batches)
    assert out["acc"] == 0.5 and out["acc5"] == 0.75 and out["count"] == 4
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 5]))
    assert out["loss"] == pytest.approx(float(expected), rel=1e-6)


def test_soft_cross_entropy_with_one_hot_targets_is_cross_entropy():
    logits = torch.randn(5, 3)
    target = torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 1, 0]), 3).float()
    torch.testing.assert_close(soft_cross_entropy(logits, target),
                               torch.nn.functional.cross_entropy(logits, target.argmax(1)))


def test_ema_follows_the_timm_update_rule():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.75)
    old = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(4, 2))
    ema.update(model)
    new = model.state_dict()
    for k, v in ema.module.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.75 * old[k] + 0.25 * new[k])
        else:
            assert torch.equal(v, new[k])


def test_linear_probe_trains_only_the_head_with_the_backbone_in_eval_mode(tmp_path):
    train, val = loaders()
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = train_linear_probe(model, train, LinearProbeConfig(epochs=2, lr=0.5, num_workers=0), val_loader=val,
                                 out_dir=tmp_path, progress=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.weight", "head.bias"}, "BN statistics and backbone weights stay frozen"
    assert history["lr"][0] == pytest.approx(0.5 * 4 / 256), "cosine set per epoch: epoch 0 at the base lr"
    ckpt = read_checkpoint(tmp_path / "last.pth.tar")
    assert {"epoch", "arch", "state_dict", "best_acc1", "optimizer"} <= set(ckpt)
    assert all(k.startswith("module.") for k in ckpt["state_dict"])
    assert castvit.load_checkpoint(tiny_model(), tmp_path / "last.pth.tar").container == "linear_probe"

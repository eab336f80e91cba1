"""The recipes against the authors' scripts (docs/RECIPES.md): DeiT's per-epoch timm
schedule, checkpoint numbering, loss-scaler state their loaders accept, fp16 + GradScaler;
and what every checkpoint carries (castvit's model record and preprocessing), seeded
reproducible runs, resuming a finished run, and config keys that would be ignored."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

import castvit
from castvit.checkpoint import read_checkpoint
from castvit.cli import main
from castvit.data.datasets import build_loader, synthetic_dataset
from castvit.data.transforms import EvalView, MoCoViews, SuperpixelConfig, TrainView
from castvit.train.config import ConfigError, load_config
from castvit.train.linear_probe import LinearProbeConfig, train_linear_probe
from castvit.train.moco import MoCoConfig, train_moco
from castvit.train.schedules import deit_epoch_lr, timm_cosine_lr
from castvit.train.supervised import SupervisedConfig, train_supervised

from test_train_config import CONFIGS, TINY_CPU


pytestmark = pytest.mark.usefixtures("one_thread")


GRID = SuperpixelConfig(method="grid", n_segments=16)
TINY = dict(img_size=32, embed_dim=48, depth=[1, 1, 1, 1], num_heads=4, num_clusters=[8, 4, 4, 2])


def tiny(**kw):
    torch.manual_seed(0)
    return castvit.create_model("cast_small", **{**TINY, **kw})


def loader(n=8, batch=4, view=None, seed=0):
    view = view or TrainView(32, scale=(0.5, 1.0), superpixels=GRID)
    return build_loader(synthetic_dataset(n, seed=seed, image_size=32), view, batch_size=batch, train=True,
                        keep_keys=("label",))


def val_loader(n=4):
    return build_loader(synthetic_dataset(n, seed=1, image_size=32), EvalView(32, crop_fraction=1.0,
                        superpixels=GRID), batch_size=4, train=False, keep_keys=("label",))


# ----------------------------------------------------------------- DeiT's schedule


def test_timm_cosine_follows_the_scheduler_formula():
    kw = dict(base_lr=1e-3, epochs=300, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5)
    assert timm_cosine_lr(0, **kw) == pytest.approx(1e-6)
    assert timm_cosine_lr(1, **kw) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 5)
    assert timm_cosine_lr(4, **kw) == pytest.approx(1e-6 + 4 * (1e-3 - 1e-6) / 5)
    # no warmup prefix: the cosine runs over all 300 epochs, so epoch 5 is already past its top
    assert timm_cosine_lr(5, **kw) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 5 / 300)))
    assert timm_cosine_lr(150, **kw) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert timm_cosine_lr(300, **kw) == pytest.approx(1e-5)


def test_deit_trains_epoch_e_at_the_value_for_e_minus_one():
    kw = dict(base_lr=1e-3, epochs=300, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5)
    assert deit_epoch_lr(0, **kw) == deit_epoch_lr(1, **kw) == pytest.approx(1e-6)
    assert deit_epoch_lr(6, **kw) == timm_cosine_lr(5, **kw)
    assert deit_epoch_lr(299, **kw) == timm_cosine_lr(298, **kw)


def test_the_timm_epoch_schedule_holds_the_lr_for_a_whole_epoch(tmp_path):
    cfg = SupervisedConfig(epochs=3, lr=1e-3, warmup_epochs=2, warmup_lr=1e-6, min_lr=1e-5, lr_schedule="timm_epoch",
                           mixup_alpha=0.0, cutmix_alpha=0.0, log_every=1, num_workers=0)
    train_supervised(tiny(num_classes=4), loader(), cfg, out_dir=tmp_path, progress=False)
    steps = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    for r in steps:  # lr_scale_batch None: the lr as given
        expected = deit_epoch_lr(r["epoch"], base_lr=1e-3, epochs=3, warmup_epochs=2, warmup_lr=1e-6, min_lr=1e-5)
        assert r["lr"] == pytest.approx(expected)
    assert [r["lr"] for r in steps][:2] == [pytest.approx(1e-6)] * 2


# ------------------------------------------------------------ checkpoint numbering


class TinyEncoder(torch.nn.Module):
    """The smallest encoder MoCo accepts (a head and ``num_features``): 100 epochs in
    seconds, since pickling a checkpoint costs per tensor."""

    num_features = 4

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 4)
        self.head = torch.nn.Linear(4, 4)

    def forward(self, images, superpixels):
        return self.head(self.proj(images.mean((2, 3))))


def test_a_100_epoch_moco_run_ends_with_checkpoint_0099(tmp_path):
    views = MoCoViews(32, scale=(0.5, 1.0), jitter_prob=0.0, grayscale_prob=0.0, blur_prob=(0.0, 0.0),
                      solarize_prob=(0.0, 0.0), superpixels=GRID)
    cfg = MoCoConfig(epochs=100, lr=1e-3, warmup_epochs=10, dim=4, mlp_dim=8, num_workers=0, log_every=100,
                     keep_epoch_checkpoints=True, sync_bn=False)
    torch.manual_seed(0)
    train_moco(TinyEncoder(), loader(4, view=views), cfg, out_dir=tmp_path, progress=False)
    numbered = sorted(p.name for p in tmp_path.glob("checkpoint_*.pth.tar"))
    assert numbered[0] == "checkpoint_0000.pth.tar" and numbered[-1] == "checkpoint_0099.pth.tar"
    assert len(numbered) == 100
    last = read_checkpoint(tmp_path / "checkpoint_0099.pth.tar")
    assert last["epoch"] == 100, "the authors' MoCo container stores epoch + 1"
    assert read_checkpoint(tmp_path / "checkpoint_0000.pth.tar")["castvit"]["epoch"] == 1


# ---------------------------------------------------------------- a supervised run


@pytest.fixture(scope="module")
def supervised_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sup")
    sp = SuperpixelConfig(method="seeds", n_segments=64, histogram_bins=5, num_iterations=4)
    view = TrainView(32, scale=(0.5, 1.0), hflip_prob=0.0, superpixels=sp)
    model = tiny(num_classes=4)
    cfg = SupervisedConfig(epochs=2, lr=1e-3, warmup_epochs=1, mixup_alpha=0.0, cutmix_alpha=0.0, num_workers=0,
                           keep_epoch_checkpoints=True, ema_decay=0.9)
    train_supervised(model, loader(view=view), cfg, val_loader=val_loader(), out_dir=out, progress=False)
    return out, model


def test_every_checkpoint_carries_the_model_record_and_its_preprocessing(supervised_run):
    out, model = supervised_run
    names = ["last.pth.tar", "best.pth.tar", "checkpoint_0000.pth.tar", "checkpoint_0001.pth.tar"]
    for name in names:
        record = read_checkpoint(out / name)["castvit_model"]
        assert record["name"] == "cast_small" and record["config"]["num_classes"] == 4
        assert record["config"]["embed_dim"] == 48
        pre = record["pretrained_cfg"]
        assert pre["input_size"] == [32, 32]
        assert pre["superpixels"] == {"method": "seeds", "n_segments": 64, "histogram_bins": 5, "num_iterations": 4,
                                      "num_levels": 1, "prior": 2, "pixels_per_superpixel": 16.0}
        assert pre["mean"] == pytest.approx([0.485, 0.456, 0.406]) and pre["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert model.pretrained_cfg["superpixels"]["n_segments"] == 64, "the trained model itself says so too"


def test_a_training_checkpoint_rebuilds_its_model_without_retyping_it(supervised_run):
    out, model = supervised_run
    rebuilt = castvit.create_model(pretrained=out / "last.pth.tar").eval()
    assert rebuilt.pretrained_cfg["superpixels"]["n_segments"] == 64
    model.eval()
    images, sp = torch.randn(2, 3, 32, 32), torch.arange(16).view(4, 4).repeat_interleave(8, 0).repeat_interleave(8, 1)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images, sp.expand(2, -1, -1)), model(images, sp.expand(2, -1, -1)))


def test_the_deit_container_stores_a_loss_scaler_state_the_authors_can_load(supervised_run):
    out, _ = supervised_run
    state = read_checkpoint(out / "last.pth.tar")["scaler"]
    scaler = torch.amp.GradScaler("cpu", enabled=True)  # DeiT's NativeScaler wraps this
    scaler.load_state_dict(state)
    assert scaler.get_scale() == 65536.0
    with pytest.raises(RuntimeError, match="empty"):
        torch.amp.GradScaler("cpu", enabled=True).load_state_dict({})  # what castvit wrote before


def test_fp16_with_a_grad_scaler_trains_saves_and_resumes_its_scaler(tmp_path):
    cfg = SupervisedConfig(epochs=1, lr=1e-3, warmup_epochs=0, mixup_alpha=0.0, cutmix_alpha=0.0, num_workers=0,
                           amp_fp16=True)
    history = train_supervised(tiny(num_classes=4), loader(), cfg, out_dir=tmp_path, progress=False)
    assert math.isfinite(history["train_loss"][0])
    state = read_checkpoint(tmp_path / "last.pth.tar")["scaler"]
    assert set(state) == {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}
    assert state["_growth_tracker"] == 2 or state["scale"] < 65536.0, "the scaler ran: it counted or backed off"
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    scaler.load_state_dict(state)
    from castvit.train.supervised import SupervisedRecipe

    recipe = SupervisedRecipe(tiny(num_classes=4), cfg, global_batch=4, device=torch.device("cpu"))
    recipe.load_container(read_checkpoint(tmp_path / "last.pth.tar"))
    assert recipe.scaler.state_dict() == scaler.state_dict()
    with pytest.raises(ValueError, match="exclusive"):
        SupervisedConfig(amp_bf16=True, amp_fp16=True)


# ------------------------------------------------------------ MoCo and the linear probe


@pytest.fixture(scope="module")
def moco_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("moco")
    views = MoCoViews(32, scale=(0.5, 1.0), superpixels=GRID)
    cfg = MoCoConfig(epochs=1, lr=1e-3, warmup_epochs=0, dim=16, mlp_dim=32, num_workers=0)
    train_moco(tiny(num_classes=7), loader(view=views), cfg, out_dir=out, progress=False)
    return out


@pytest.mark.filterwarnings("ignore:the moco checkpoint's head")
def test_the_moco_container_records_the_base_encoder_and_a_loadable_scaler(moco_run):
    ckpt = read_checkpoint(moco_run / "last.pth.tar")
    record = ckpt["castvit_model"]
    assert record["name"] == "cast_small" and record["config"]["num_clusters"] == [8, 4, 4, 2]
    assert record["pretrained_cfg"]["superpixels"]["method"] == "grid"
    scaler = torch.amp.GradScaler("cpu", enabled=True)  # MoCo-v3: scaler.load_state_dict(checkpoint['scaler'])
    scaler.load_state_dict(ckpt["scaler"])
    encoder = castvit.create_model(pretrained=moco_run / "last.pth.tar")  # projector dropped, head fresh
    base = {k[len("module.base_encoder."):]: v for k, v in ckpt["state_dict"].items()
            if k.startswith("module.base_encoder.") and ".head." not in k and not k.startswith("module.base_encoder.head")}
    for k, v in encoder.state_dict().items():
        if k in base:
            assert torch.equal(v, base[k]), k


@pytest.mark.filterwarnings("ignore:the moco checkpoint's head")
def test_the_linear_probe_records_the_probed_classifier(moco_run, tmp_path):
    model = tiny(num_classes=5)
    castvit.load_checkpoint(model, moco_run / "last.pth.tar")
    train_linear_probe(model, loader(), LinearProbeConfig(epochs=1, lr=0.1, num_workers=0), val_loader=val_loader(),
                       out_dir=tmp_path, progress=False)
    for name in ("last.pth.tar", "best.pth.tar"):
        record = read_checkpoint(tmp_path / name)["castvit_model"]
        assert record["name"] == "cast_small" and record["config"]["num_classes"] == 5
    probed = castvit.create_model(pretrained=tmp_path / "last.pth.tar")
    assert torch.equal(probed.head.weight, model.head.weight)


# ---------------------------------------------------------- reproducibility, resume


def test_two_fresh_runs_of_the_same_command_are_bit_identical(tmp_path):
    torch.manual_seed(1234)  # whatever the process did before must not matter
    args = ["train", str(CONFIGS / "supervised_synthetic_cpu.yaml"), *TINY_CPU, "--no-progress"]
    assert main([*args, f"output_dir={tmp_path / 'a'}"]) == 0
    torch.randn(100)
    assert main([*args, f"output_dir={tmp_path / 'b'}"]) == 0
    a, b = read_checkpoint(tmp_path / "a" / "last.pth.tar"), read_checkpoint(tmp_path / "b" / "last.pth.tar")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k

    def metrics(run):
        return [{k: v for k, v in json.loads(line).items() if k != "epoch_time_s"}
                for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    assert metrics("a") == metrics("b")


def test_resuming_a_finished_run_says_so_and_how_to_extend_it(tmp_path, capsys):
    args = ["train", str(CONFIGS / "supervised_synthetic_cpu.yaml"), *TINY_CPU, f"output_dir={tmp_path}",
            "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "finished run" in out and "nothing to train" in out
    assert re.search(r"train\.epochs=\d+", out) and "--resume" in out
    assert main([*args, "train.epochs=2", "--resume"]) == 0
    assert "finished run" not in capsys.readouterr().out
    assert read_checkpoint(tmp_path / "last.pth.tar")["castvit"]["epoch"] == 2


# ------------------------------------------------------- keys that would be ignored


def test_the_python_api_refuses_a_batch_size_the_loader_does_not_give():
    cfg = SupervisedConfig(epochs=1, batch_size=1024, num_workers=0, warmup_epochs=0)
    with pytest.raises(ValueError, match="batch_size=1024 but the loader gives a global batch of 4"):
        train_supervised(tiny(num_classes=4), loader(), cfg, progress=False)
    history = train_supervised(tiny(num_classes=4), loader(), SupervisedConfig(epochs=1, batch_size=4, num_workers=0,
                               warmup_epochs=0), progress=False)
    assert len(history["train_loss"]) == 1


def test_supervised_drop_path_must_be_the_models():
    cfg = SupervisedConfig(epochs=1, drop_path=0.1, num_workers=0, warmup_epochs=0)
    with pytest.raises(ValueError, match="drop_path_rate=0.0"):
        train_supervised(tiny(num_classes=4), loader(), cfg, progress=False)
    train_supervised(tiny(num_classes=4, drop_path_rate=0.1), loader(), cfg, progress=False)
    from castvit.train.supervised import check_drop_path

    wrapper = torch.nn.Sequential(tiny(num_classes=4, drop_path_rate=0.1))  # not built by create_model
    check_drop_path(wrapper, 0.1)  # read from its stochastic-depth modules
    with pytest.raises(ValueError, match="drop_path_rate=0.1"):
        check_drop_path(wrapper, 0.0)


def test_the_recipe_builds_the_model_with_train_drop_path():
    from castvit.train.build import build_model

    cfg = load_config(CONFIGS / "supervised_synthetic_cpu.yaml", [*TINY_CPU, "train.drop_path=0.2"])
    model = build_model(cfg, 4)
    assert model.castvit_config["drop_path_rate"] == 0.2
    cfg = load_config(CONFIGS / "supervised_synthetic_cpu.yaml", [*TINY_CPU, "train.drop_path=0.2",
                                                                  "model.kwargs.drop_path_rate=0.1"])
    with pytest.raises(ConfigError, match="disagree"):
        build_model(cfg, 4)


@pytest.mark.parametrize("config, overrides, message", [
    ("moco_synthetic_cpu", ["model.num_classes=10"], "model.num_classes has no meaning for moco"),
    ("moco_imagenet1k", ["data.train_size=100"], "data.train_size is not used with data.kind imagefolder"),
    ("supervised_imagenet1k", ["data.scene={num_classes: 3}"], "data.scene is not used"),
    ("supervised_synthetic_cpu", ["data.train=/data/x"], "data.train is not used with data.kind synthetic"),
    ("supervised_imagenet1k", ["data.knn_memory_size=100"], "kNN monitor is MoCo's"),
    ("moco_coco", ["data.knn_memory_size=100"], "unlabelled"),
    ("supervised_synthetic_cpu", ["train.batch_size=null"], "train.batch_size"),
])
def test_config_keys_that_nothing_would_read_are_refused(config, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(CONFIGS / f"{config}.yaml", overrides)


def test_the_deit_recipe_runs_as_the_authors_did():
    cfg = load_config(CONFIGS / "supervised_imagenet1k.yaml")
    assert cfg["data"]["repeated_aug"] == 3
    assert cfg["data"]["train_view"]["interpolation"] == cfg["data"]["eval_view"]["interpolation"] == "bicubic"
    assert cfg["data"]["train_view"]["rand_augment_mstd"] == 0.5 and cfg["data"]["train_view"]["rand_augment_increasing"]
    assert cfg["train"]["lr_schedule"] == "timm_epoch" and cfg["train"]["warmup_lr"] == 1e-6


def test_the_imagenet100_probe_keeps_a_1000_way_head_as_the_authors():
    cfg = load_config(CONFIGS / "linear_probe_imagenet100.yaml")
    assert cfg["model"]["num_classes"] == 1000
    from castvit.train.build import build_model

    small = load_config(CONFIGS / "supervised_synthetic_cpu.yaml", [*TINY_CPU, "model.num_classes=1000"])
    assert build_model(small, 4).head.out_features == 1000
    small = load_config(CONFIGS / "supervised_synthetic_cpu.yaml", [*TINY_CPU, "model.num_classes=2"])
    with pytest.raises(ConfigError, match="below the 4 classes"):
        build_model(small, 4)

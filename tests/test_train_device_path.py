"""The device input path and the compiled forward in the recipes (issue 12): from a recipe
file, ``data.device_augment: true`` with ``superpixels.method: slic_torch`` trains MoCo,
supervised and segmentation models; ``train.compile: true`` runs a step; bad
combinations are refused by name."""

from __future__ import annotations

import math

import pytest
import torch

from castvit.checkpoint import read_checkpoint
from castvit.train.build import build_views, run
from castvit.train.config import ConfigError, resolve
from castvit.train.segmentation import SegmentationConfig

pytestmark = pytest.mark.usefixtures("one_thread")

ENCODER = {"img_size": 64, "embed_dim": 48, "depth": [1, 1, 1, 1], "num_heads": 4, "num_clusters": [16, 8, 4, 2]}
SLIC = {"method": "slic_torch", "n_segments": 64}


def classification(recipe: str, out, **train) -> dict:
    cfg = {
        "recipe": recipe, "output_dir": str(out), "device": "cpu",
        "model": {"name": "cast_small", "kwargs": dict(ENCODER)},
        "data": {"kind": "synthetic", "train_size": 16, "seed": 0, "scene": {"image_size": 64, "num_classes": 4},
                 "image_size": 64, "superpixels": dict(SLIC), "device_augment": True,
                 "train_view": {"scale": [0.3, 1.0]}},
        "train": {"epochs": 1, "batch_size": 8, "num_workers": 0, "log_every": 1, **train},
    }
    if recipe == "moco":
        cfg["train"].update(dim=16, mlp_dim=32)
    else:
        cfg["data"]["train_view"].update(jitter=0.4, erase_prob=0.5)
        cfg["train"].update(warmup_epochs=0)
    return cfg


def segmentation(out, **train) -> dict:
    return {
        "recipe": "segmentation", "output_dir": str(out), "device": "cpu",
        "model": {"name": "segmenter_cast_small",
                  "kwargs": {"num_classes": 5, "encoder": "cast_small_seg", "encoder_kwargs": dict(ENCODER),
                             "decoder_kwargs": {"n_heads": 2}}},
        "data": {"kind": "synthetic", "target": "part", "train_size": 16, "val_size": 0, "seed": 0,
                 "scene": {"image_size": 64, "num_classes": 4}, "crop_size": 64, "img_scale": [256, 64],
                 "ratio_range": [0.75, 1.5], "superpixels": {"method": "slic_torch", "pixels_per_superpixel": 64},
                 "device_augment": True},
        "train": {"epochs": 1, "batch_size": 8, "num_workers": 0, "log_every": 1, "lr": 0.01, **train},
    }


@pytest.mark.parametrize("recipe", ["moco", "supervised", "segmentation"])
def test_device_augment_with_slic_torch_trains_each_recipe_from_a_config(tmp_path, recipe):
    cfg = resolve(segmentation(tmp_path) if recipe == "segmentation" else classification(recipe, tmp_path))
    history = run(cfg, progress=False)
    assert len(history["epochs"]) == 1 and math.isfinite(history["train_loss"][0])
    ckpt = read_checkpoint(tmp_path / "last.pth.tar")
    assert ckpt["castvit"]["global_step"] == 2
    pre = ckpt["castvit_model"]["pretrained_cfg"]
    assert pre["superpixels"]["method"] == "slic_torch" and pre["superpixels"]["n_segments"] == 64
    assert pre["input_size"] == [64, 64] and pre["mean"] == [0.485, 0.456, 0.406]


@pytest.mark.parametrize("recipe", ["moco", "supervised"])
def test_with_device_augment_the_loader_workers_only_crop(recipe, tmp_path):
    """The worker batch holds uint8 crops and the drawn decisions, no superpixels and no
    normalised image: those are made on the device by the view's ``device_batch``."""
    from castvit.data.datasets import build_loader, synthetic_dataset

    cfg = resolve(classification(recipe, tmp_path))
    view, _ = build_views(cfg)
    loader = build_loader(synthetic_dataset(8, seed=0, image_size=64), view, batch_size=4, train=True)
    batch = next(iter(loader))
    assert batch["crop"].dtype == torch.uint8 and batch["crop"].shape == (4, 3, 64, 64)
    assert "superpixels" not in batch and "image" not in batch
    done = view.device_batch(batch, "cpu")
    assert done["image"].dtype == torch.float32 and done["superpixels"].shape == (4, 64, 64)
    assert int(done["superpixels"].max()) < 64 + (recipe == "supervised")  # + the erased box's own id


def test_slic_torch_on_the_cpu_loader_path(tmp_path):
    cfg = classification("supervised", tmp_path)
    cfg["data"]["device_augment"] = False
    view, _ = build_views(resolve(cfg))
    out = view(torch.randint(0, 255, (3, 80, 80), dtype=torch.uint8), torch.Generator().manual_seed(0))
    ids = out["superpixels"].unique()
    assert torch.equal(ids, torch.arange(len(ids))) and len(ids) <= 64 + 1


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["data"].update(device_augment="yes"), "data.device_augment must be true or false"),
    (lambda c: c["data"]["superpixels"].update(method="slic_gpu"), "slic_torch"),
    (lambda c: (c["data"]["superpixels"].update(method="seeds"), c["train"].update(compile=True)),
     "data.superpixels.method: slic_torch .* or model.kwargs.max_tokens"),
])
def test_bad_device_path_combinations_name_the_key_and_the_fix(tmp_path, mutate, message):
    cfg = classification("supervised", tmp_path)
    mutate(cfg)
    with pytest.raises((ConfigError, ValueError), match=message):
        resolve(cfg)
        build_views(resolve(cfg))


def test_the_linear_probe_refuses_device_augment_and_compile(tmp_path):
    cfg = classification("supervised", tmp_path)
    cfg.update(recipe="linear_probe")
    cfg["model"]["pretrained"] = "x.pth"
    cfg["train"].pop("warmup_epochs")
    with pytest.raises(ConfigError, match="data.device_augment .* remove data.device_augment"):
        resolve(cfg)
    cfg["data"]["device_augment"] = False
    cfg["train"]["compile"] = True
    with pytest.raises(ConfigError, match="train.compile .* remove train.compile"):
        resolve(cfg)


def test_segmentation_config_errors_name_the_key(tmp_path):
    cfg = segmentation(tmp_path)
    cfg["data"]["crop_size"] = None
    with pytest.raises(ConfigError, match="data.crop_size"):
        resolve(cfg)
    cfg = segmentation(tmp_path, compile=True)
    cfg["data"]["superpixels"]["method"] = "seeds"
    with pytest.raises(ConfigError, match="model.kwargs.encoder_kwargs.max_tokens"):
        resolve(cfg)
    cfg["data"]["superpixels"]["method"] = "felzenszwalb"
    with pytest.raises(ConfigError, match="data.superpixels.method"):
        resolve(cfg)


# ------------------------------------------------------------------ issue-9 fixes of the segmentation recipe


def test_segmentation_batch_size_comes_from_the_loader_or_train_batch_size():
    assert SegmentationConfig().batch_size is None


def test_segmentation_honours_amp_fp16_and_saves_its_scaler(tmp_path):
    cfg = segmentation(tmp_path, amp_fp16=True)
    cfg["data"]["device_augment"] = False
    cfg["data"]["superpixels"] = {"method": "grid", "n_segments": 64}
    run(resolve(cfg), progress=False)
    state = read_checkpoint(tmp_path / "last.pth.tar")["scaler"]
    assert state["_growth_tracker"] == 2 or state["scale"] < 65536.0, "the scaler ran: it counted or backed off"
    pre = read_checkpoint(tmp_path / "last.pth.tar")["castvit_model"]["pretrained_cfg"]
    assert pre["superpixels"] == {"method": "grid", "n_segments": 64, "pixels_per_superpixel": 64.0}


def test_segmentation_records_the_seeds_preprocessing_it_trained_with(tmp_path):
    from castvit.data.datasets import build_loader
    from castvit.data.segmentation import SegSuperpixels, SegTrainView, SegViewDataset, SyntheticSegmentation
    from castvit.train.segmentation import seg_view_preprocessing

    view = SegTrainView(crop_size=96, superpixels=SegSuperpixels(pixels_per_superpixel=128))
    loader = build_loader(SegViewDataset(SyntheticSegmentation(4, image_size=64), view), batch_size=2, train=True)
    pre = seg_view_preprocessing(loader)
    assert pre["input_size"] == [96, 96] and pre["std"] == [0.229, 0.224, 0.225]
    assert pre["superpixels"] == {"method": "seeds", "num_levels": 1, "prior": 2, "histogram_bins": 5,
                                  "num_iterations": 15, "n_segments": 72, "pixels_per_superpixel": 128}


# ------------------------------------------------------------------ train.compile


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["supervised", "moco"])
def test_train_compile_runs_a_step_with_the_compiled_static_forward(tmp_path, recipe, monkeypatch):
    # A private Inductor cache: processes compiling at the same time share /tmp/torchinductor_<user>
    # and can read each other's half-written kernels ("file too short").
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    cfg = classification(recipe, tmp_path / "run", compile=True)
    cfg["data"]["train_size"] = 8
    if recipe == "supervised":
        cfg["train"].update(mixup_alpha=0.0, cutmix_alpha=0.0)
    torch._dynamo.reset()
    history = run(resolve(cfg), progress=False)
    assert math.isfinite(history["train_loss"][0])
    ckpt = read_checkpoint(tmp_path / "run" / "last.pth.tar")
    weights = ckpt["model"] if recipe == "supervised" else ckpt["state_dict"]
    assert not any("_orig_mod" in k for k in weights), "checkpoints keep the plain model's names"
    assert ckpt["castvit"]["global_step"] == 1


@pytest.mark.parametrize("recipe, cutmix, bound", [("supervised", 0.0, 65), ("supervised", 1.0, 130),
                                                   ("moco", 0.0, 64), ("segmentation", 0.0, 64)])
def test_train_compile_puts_the_model_in_the_static_mode_with_the_view_s_token_bound(tmp_path, recipe, cutmix,
                                                                                      bound):
    """``torch.compile`` is lazy, so the wiring is checked here without compiling: the
    forward the recipe calls is compiled, the model is in the static ``max_tokens`` mode
    with the most ids the view can give (slic_torch's 64, + the erased box, × 2 under
    cutmix), and the recipe's own model stays the plain module."""
    from castvit.data.datasets import build_loader, synthetic_dataset
    from castvit.train.build import build_model
    from castvit.train.config import recipe_config_class
    from castvit.train.config import make_dataclass

    if recipe == "segmentation":
        from castvit.train.segmentation import (SegmentationRecipe, build_segmentation_loader,
                                                build_segmentation_model)
        from castvit.data.segmentation import build_segmentation_dataset

        cfg = resolve(segmentation(tmp_path, compile=True))
        model = build_segmentation_model(cfg)
        loader = build_segmentation_loader(cfg, build_segmentation_dataset(cfg["data"], "train"), 8, 0, 0)
        r = SegmentationRecipe(model, make_dataclass(SegmentationConfig, cfg["train"], "train"), steps_per_epoch=2,
                               device=torch.device("cpu"), train_loader=loader)
        compiled, static = r.ddp, model.encoder
    else:
        cfg = resolve(classification(recipe, tmp_path, compile=True, **({"cutmix_alpha": cutmix}
                                                                          if recipe == "supervised" else {})))
        view, _ = build_views(cfg)
        loader = build_loader(synthetic_dataset(8, image_size=64), view, batch_size=4, train=True)
        model = build_model(cfg, 4)
        train_cfg = make_dataclass(recipe_config_class(recipe), cfg["train"], "train")
        if recipe == "moco":
            from castvit.train.moco import MoCo, MoCoRecipe

            moco = MoCo(model, 16, 32)
            r = MoCoRecipe(moco, train_cfg, global_batch=4, device=torch.device("cpu"), train_loader=loader)
            compiled, static = moco.__dict__["_compiled"][0], moco.base_encoder
            assert moco.momentum_encoder.max_tokens == bound
        else:
            from castvit.train.supervised import SupervisedRecipe

            r = SupervisedRecipe(model, train_cfg, global_batch=4, device=torch.device("cpu"), train_loader=loader)
            compiled, static = r.ddp, r.model
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    assert static.max_tokens == bound
    assert not isinstance(r.record_model, torch._dynamo.eval_frame.OptimizedModule)


def test_the_token_bound_of_the_cpu_segmentation_view(tmp_path):
    """Without the device path too: slic_torch's count of the crop, the grid's cells."""
    from castvit.data.datasets import build_loader
    from castvit.data.segmentation import SegSuperpixels, SegTrainView, SegViewDataset, SyntheticSegmentation
    from castvit.train.engine import token_bound

    def bound(sp):
        view = SegTrainView(crop_size=64, superpixels=sp)
        data = SegViewDataset(SyntheticSegmentation(4, image_size=64), view)
        return token_bound(build_loader(data, batch_size=2, train=True))

    assert bound(SegSuperpixels(method="slic_torch", pixels_per_superpixel=64)) == 64
    assert bound(SegSuperpixels(method="grid", n_segments=24)) == 25  # 5×5 cells of 13 px (the last one cut)
    assert bound(SegSuperpixels()) is None  # SEEDS: no bound

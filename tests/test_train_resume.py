"""Exact resume: a run SIGKILLed in the middle of an epoch and resumed ends with the same
weights, optimizer state and history as an uninterrupted run, bit for bit on CPU; with the
views finished in the loader workers and with the device path (``data.device_augment``:
workers crop, the training process augments and cuts slic_torch superpixels)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from castvit.checkpoint import read_checkpoint

CHILD = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    import castvit
    from castvit.data.datasets import build_loader, synthetic_dataset
    from castvit.data.transforms import MoCoViews, SuperpixelConfig, TrainView

    recipe, mode, out, path = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    kill_after = 7  # global steps: epoch 1, step 3 of 4 (the last checkpoint is at step 2)
    grid = SuperpixelConfig(method="grid", n_segments=16)
    if path == "device":
        from castvit.data.device_augment import DeviceMoCoViews, DeviceSegView, DeviceTrainView
        grid = SuperpixelConfig(method="slic_torch", n_segments=16)
        device_view = {"supervised": DeviceTrainView, "moco": DeviceMoCoViews, "segmentation": DeviceSegView}[recipe]
    else:
        device_view = lambda view: view
    data = synthetic_dataset(16, seed=0, image_size=32, num_classes=4)
    torch.manual_seed(0)
    model = castvit.create_model("cast_small", img_size=32, embed_dim=48, depth=[1, 1, 1, 1], num_heads=4,
                                 num_clusters=[8, 4, 4, 2], num_classes=4, drop_path_rate=0.2)
    if recipe == "supervised":
        from castvit.train.supervised import SupervisedConfig, SupervisedRecipe as Recipe, train_supervised
        view = device_view(TrainView(32, scale=(0.5, 1.0), jitter=0.4, erase_prob=0.5, superpixels=grid))
        loader = build_loader(data, view, batch_size=4, train=True, seed=0, num_workers=1, keep_keys=("label",))
        cfg = SupervisedConfig(epochs=3, lr=1e-3, warmup_epochs=1, mixup_alpha=0.8, cutmix_alpha=1.0,
                               ema_decay=0.9, checkpoint_every_steps=2, log_every=1, num_workers=1)
        run = lambda: train_supervised(model, loader, cfg, out_dir=out, progress=False, resume=(mode == "resume"))
    elif recipe == "segmentation":
        from castvit.data.segmentation import SegSuperpixels, SegTrainView, SegViewDataset, SyntheticSegmentation
        from castvit.train.segmentation import SegmentationConfig, SegmentationRecipe as Recipe, train_segmentation
        torch.manual_seed(0)
        model = castvit.create_model("segmenter_cast_small", num_classes=5, encoder="cast_small_seg",
                                     encoder_kwargs=dict(img_size=32, embed_dim=48, depth=[1, 1, 1, 1], num_heads=4,
                                                         num_clusters=[8, 4, 4, 2]), decoder_kwargs={"n_heads": 2})
        view = device_view(SegTrainView(crop_size=32, img_scale=(128, 32), ratio_range=(0.75, 1.5),
                                        superpixels=SegSuperpixels(method=grid.method, n_segments=16)))
        seg_data = SegViewDataset(SyntheticSegmentation(16, seed=0, target="part", image_size=32), view, seed=0)
        loader = build_loader(seg_data, batch_size=4, train=True, seed=0, num_workers=1)
        cfg = SegmentationConfig(epochs=3, lr=0.05, checkpoint_every_steps=2, log_every=1, num_workers=1)
        run = lambda: train_segmentation(model, loader, cfg, out_dir=out, progress=False, resume=(mode == "resume"))
    else:
        from castvit.train.moco import MoCoConfig, MoCoRecipe as Recipe, train_moco
        view = device_view(MoCoViews(32, scale=(0.5, 1.0), superpixels=grid))
        loader = build_loader(data, view, batch_size=4, train=True, seed=0, num_workers=1, keep_keys=("label",))
        cfg = MoCoConfig(epochs=3, lr=1e-3, warmup_epochs=1, dim=16, mlp_dim=32, checkpoint_every_steps=2,
                         log_every=1, num_workers=1)
        run = lambda: train_moco(model, loader, cfg, out_dir=out, progress=False, resume=(mode == "resume"))
    if mode == "kill":
        step = Recipe.train_step
        count = [0]
        def train_step(self, *args, **kwargs):
            result = step(self, *args, **kwargs)
            count[0] += 1
            if count[0] == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        Recipe.train_step = train_step
    run()
""")


def run_child(script: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                          timeout=600)


def step_records(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in records]


@pytest.mark.parametrize("recipe, path", [("supervised", "workers"), ("moco", "workers"), ("supervised", "device"),
                                          ("moco", "device"), ("segmentation", "device")])
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run_bit_for_bit(tmp_path, recipe, path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    full, broken = tmp_path / "full", tmp_path / "broken"

    done = run_child(script, recipe, "full", str(full), path)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = run_child(script, recipe, "kill", str(broken), path)
    assert killed.returncode == -9, f"expected SIGKILL, got {killed.returncode}: {killed.stderr[-2000:]}"
    stopped = read_checkpoint(broken / "last.pth.tar")["castvit"]
    assert (stopped["epoch"], stopped["step"]) == (1, 2), "killed in the middle of epoch 1"
    resumed = run_child(script, recipe, "resume", str(broken), path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = read_checkpoint(full / "last.pth.tar"), read_checkpoint(broken / "last.pth.tar")
    weights = "state_dict" if recipe == "moco" else "model"
    assert a[weights].keys() == b[weights].keys()
    for k in a[weights]:
        assert torch.equal(a[weights][k], b[weights][k]), f"{k} differs after resume"
    if recipe == "supervised":
        for k in a["model_ema"]:
            assert torch.equal(a["model_ema"][k], b["model_ema"][k]), f"EMA {k} differs"
    for i, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][i][name]))
    def timeless(history):  # wall-clock times differ between runs; every other number must not
        return [{k: v for k, v in rec.items() if not k.endswith("_time_s")} for rec in history]

    assert len(a["castvit"]["history"]) == len(b["castvit"]["history"]) > 0
    assert timeless(a["castvit"]["history"]) == timeless(b["castvit"]["history"])
    assert step_records(full / "metrics.jsonl") == step_records(broken / "metrics.jsonl")

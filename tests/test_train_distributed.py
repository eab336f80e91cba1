"""Distributed equivalence: a 2-process gloo torchrun run on CPU gives the same losses and
weights, within float tolerance, as one plain process with the same global batch."""

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
    import sys
    import torch
    torch.set_num_threads(1)
    import castvit
    from castvit.data.datasets import build_loader, synthetic_dataset
    from castvit.data.transforms import MoCoViews, SuperpixelConfig, TrainView
    from castvit.train import distributed as D

    recipe, out = sys.argv[1], sys.argv[2]
    info = D.init_distributed("cpu")
    global_batch = 8
    grid = SuperpixelConfig(method="grid", n_segments=16)
    data = synthetic_dataset(16, seed=0, image_size=32, num_classes=4)
    torch.manual_seed(0)
    # No dropout anywhere: each process draws its own dropout masks.
    model = castvit.create_model("cast_small", img_size=32, embed_dim=48, depth=[1, 1, 1, 1], num_heads=4,
                                 num_clusters=[8, 4, 4, 2], num_classes=4, pool_dropout=0.0)
    local = global_batch // info.world_size
    if recipe == "moco":
        from castvit.train.moco import MoCoConfig, train_moco
        loader = build_loader(data, MoCoViews(32, scale=(0.5, 1.0), superpixels=grid), batch_size=local,
                              train=True, seed=0, keep_keys=("label",))
        cfg = MoCoConfig(epochs=2, lr=2e-3, warmup_epochs=0.5, dim=16, mlp_dim=32, log_every=1, num_workers=0,
                         sync_bn=True)
        train_moco(model, loader, cfg, out_dir=out, progress=False)
    else:
        from castvit.train.supervised import SupervisedConfig, train_supervised
        loader = build_loader(data, TrainView(32, scale=(0.5, 1.0), superpixels=grid), batch_size=local,
                              train=True, seed=0, keep_keys=("label",))
        cfg = SupervisedConfig(epochs=2, lr=2e-3, warmup_epochs=0.5, mixup_alpha=0.0, cutmix_alpha=0.0,
                               label_smoothing=0.1, log_every=1, num_workers=0, sync_bn=True)
        train_supervised(model, loader, cfg, out_dir=out, progress=False)
    D.cleanup_distributed()
""")


def run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "step"]


@pytest.mark.parametrize("recipe", ["moco", "supervised"])
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path, recipe):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    run([sys.executable, str(script), recipe, str(tmp_path / "single")])
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         recipe, str(tmp_path / "ddp")])

    single, ddp = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert len(single) == len(ddp) == 4
    torch.testing.assert_close(torch.tensor(ddp), torch.tensor(single), rtol=1e-4, atol=1e-5)
    a = read_checkpoint(tmp_path / "single" / "last.pth.tar")
    b = read_checkpoint(tmp_path / "ddp" / "last.pth.tar")
    assert b["castvit"]["world_size"] == 2 and b["castvit"]["global_batch"] == 8
    key = "state_dict" if recipe == "moco" else "model"
    worst = {"parameters": 0.0, "buffers": 0.0}
    for k, diff in noise_free_differences(a[key], b[key]).items():
        kind = "buffers" if "running_" in k else "parameters"
        worst[kind] = max(worst[kind], diff)
    print(f"{recipe}: max |loss diff| {max(abs(x - y) for x, y in zip(single, ddp)):.1e}, max |weight diff| "
          f"{worst['parameters']:.1e}, max |BN statistics diff| {worst['buffers']:.1e}")
    assert worst["parameters"] < 2e-5 and worst["buffers"] < 2e-4


def noise_free_differences(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max |a − b| per float tensor, leaving out the entries whose gradient is zero in
    theory: under AdamW they move by ±lr a step, driven by rounding noise alone. These
    are the key third of every qkv bias (softmax ignores a shift shared by all keys),
    the value third of the centroid blocks' qkv bias and their proj bias (the block
    subtracts the token mean), and, in MoCo, the final norm's bias (the projector's
    BatchNorm removes shifts)."""
    out = {}
    for k, x in a.items():
        if not x.is_floating_point():
            continue
        d = (x.float() - b[k].float()).abs()
        if k.endswith("attn.qkv.bias"):
            q, key, v = d.chunk(3)
            d = q if "centroid_fc" in k else torch.cat([q, v])
        elif k.endswith("centroid_fc.attn.proj.bias") or k.endswith("base_encoder.norm.bias"):
            continue
        out[k] = float(d.max())
    return out

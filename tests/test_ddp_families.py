"""Every registered model family trains one step under 2-process DDP (gloo, CPU) with
``find_unused_parameters=False``: a parameter that never gets a gradient makes DDP fail,
which is how the DeiT segmentation variants used to crash."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import castvit

CHILD = textwrap.dedent("""
    import os, sys
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    import castvit

    dist.init_process_group("gloo")
    name = sys.argv[1]
    torch.manual_seed(0)
    if name.startswith(("segmenter", "spml")):
        enc = dict(img_size=64, embed_dim=48, num_heads=4, pool_num_heads=4, depth=[1, 1, 1, 1],
                   num_clusters=[16, 8, 4, 2])
        model = castvit.create_model(name, num_classes=3, encoder_kwargs=enc)
    elif name.startswith("vit") or name.startswith("tome"):
        kw = dict(img_size=64, embed_dim=48, num_heads=4, num_classes=3)
        kw["depth"] = [1, 1, 1, 1] if name.startswith("tome") else 2
        if name.startswith("tome"):
            kw["num_clusters"] = [16, 8, 4, 2]
        model = castvit.create_model(name, **kw)
    else:
        model = castvit.create_model(name, img_size=64, embed_dim=48, num_heads=4, pool_num_heads=4,
                                     depth=[1, 1, 1, 1], num_clusters=[16, 8, 4, 2], num_classes=3)
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    rank = dist.get_rank()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(rank))
    sp = torch.arange(64).reshape(8, 8).repeat_interleave(8, 0).repeat_interleave(8, 1).expand(2, 64, 64)
    for _ in range(2):  # the second step is where DDP reports parameters without gradients
        out = ddp(x, sp)
        loss = out.float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dist.destroy_process_group()
    print(f"ok-rank{rank}", flush=True)
""")


def families() -> list[str]:
    """One model per family: the small size of every registered variant kind."""
    return [n for n in castvit.list_models() if "base" not in n and "deep" not in n]


@pytest.mark.slow
@pytest.mark.parametrize("name", families())
def test_two_process_ddp_step_runs(name, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(29500 + (abs(hash(name)) % 1000)), str(script), name],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok-rank0" in proc.stdout and "ok-rank1" in proc.stdout

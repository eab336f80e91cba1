"""The segmentation model and recipe: construction, checkpoints, schedule, groups, recipes
on the command line, two gloo processes vs one, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

import castvit
from castvit.checkpoint import CheckpointError, extract_state_dict, read_checkpoint
from castvit.data.transforms import grid_superpixels
from castvit.models.segmenter import load_segmentation_checkpoint
from castvit.train.segmentation import poly_lr

ROOT = Path(__file__).resolve().parents[1]
TINY_ENC = dict(img_size=64, embed_dim=48, depth=[1, 1, 1, 1], num_heads=4, pool_num_heads=4,
                num_clusters=[16, 8, 4, 2])


def _tiny(name="segmenter_cast_small", encoder="cast_small_deit_seg", **kw):
    torch.manual_seed(0)
    dec = {"decoder_kwargs": {"n_heads": 2}} if name.startswith("segmenter") else {}
    return castvit.create_model(name, num_classes=6, encoder=encoder, encoder_kwargs=TINY_ENC, **dec, **kw)


def _inputs(b=2, h=64, w=72):
    torch.manual_seed(1)
    sp = torch.stack([grid_superpixels(h, w, 40)] * b)
    return torch.randn(b, 3, h, w), sp


def test_models_by_name_logits_at_image_size_and_constant_per_superpixel():
    for name in ("segmenter_cast_small", "spml_cast_small", "segmenter_cast_base", "spml_cast_base"):
        assert name in castvit.list_models()
    seg = _tiny().eval()
    x, sp = _inputs(h=60, w=70)  # not multiples of 8: padded inside, cut back
    out = seg(x, sp)
    assert out.shape == (2, 6, 60, 70)
    for s in sp[0].unique()[:10]:  # Segmenter: each pixel takes its superpixel's row
        region = out[0][:, sp[0] == s]
        assert torch.allclose(region, region[:, :1].expand_as(region))
    spml = _tiny("spml_cast_small", encoder="cast_small_seg").eval()
    x, sp = _inputs()
    half = sp[:, ::2, ::2]  # SPML computes superpixels at half the crop: bilinear up to the image
    assert spml(x, half).shape == (2, 6, 64, 72)
    keys = list(seg.state_dict())
    assert all(k.startswith(("encoder.", "decoder.")) for k in keys)
    for k in ("decoder.cls_emb", "decoder.proj_patch", "decoder.proj_classes", "decoder.proj_dec.weight",
              "decoder.blocks.1.attn.qkv.weight", "decoder.decoder_norm.weight", "decoder.mask_norm.weight"):
        assert k in keys
    d = seg.decoder.d_model
    std = float(seg.decoder.proj_patch.detach().std())
    assert abs(std - d ** -0.5) < 0.25 * d ** -0.5  # d^-0.5 · N(0, 1)
    with pytest.raises(ValueError, match="not a segmentation CAST"):
        castvit.create_model("segmenter_cast_small", encoder="cast_small")


def test_encoder_loads_from_pretraining_containers_and_segmenter_checkpoints_round_trip(tmp_path):
    # a DeiT classifier checkpoint (flat blocks, head 1000) into the DeiT-seg encoder
    cls = castvit.create_model("cast_small_deit", **{k: v for k, v in TINY_ENC.items()})
    torch.save({"model": cls.state_dict(), "epoch": 3}, tmp_path / "deit.pth")
    seg = _tiny()
    report = seg.load_encoder(tmp_path / "deit.pth")
    assert report.container == "deit"
    own = seg.encoder.state_dict()
    assert torch.equal(own["blocks.0.attn.qkv.weight"], cls.state_dict()["blocks.0.attn.qkv.weight"])
    assert torch.equal(own["pool1.pool_block.centroid_fc.bias"], cls.state_dict()["pool1.pool_block.centroid_fc.bias"])
    # a MoCo container into the MoCo-seg encoder: flat blocks -> per-stage blocks, projector dropped
    moco = castvit.create_model("cast_small", **TINY_ENC)
    sd = {f"module.base_encoder.{k}": v for k, v in moco.state_dict().items()
          if not k.startswith("head.")}
    sd["module.base_encoder.head.0.weight"] = torch.zeros(32, 48)
    torch.save({"state_dict": sd, "epoch": 1}, tmp_path / "moco.pth.tar")
    spml = _tiny("spml_cast_small", encoder="cast_small_seg")
    assert spml.load_encoder(tmp_path / "moco.pth.tar").container == "moco"
    assert torch.equal(spml.encoder.state_dict()["blocks2.0.mlp.fc1.weight"], moco.state_dict()["blocks.1.mlp.fc1.weight"])
    # Segmenter checkpoint.pth: {"model": encoder.* / decoder.*}
    torch.save({"model": seg.state_dict(), "epoch": 10}, tmp_path / "checkpoint.pth")
    fresh = _tiny()
    torch.nn.init.zeros_(fresh.decoder.cls_emb)
    load_segmentation_checkpoint(fresh, tmp_path / "checkpoint.pth")
    x, sp = _inputs()
    torch.testing.assert_close(fresh.eval()(x, sp), seg.eval()(x, sp), rtol=0, atol=0)
    enc_sd, container = extract_state_dict(read_checkpoint(tmp_path / "checkpoint.pth"))
    assert container == "segmenter" and set(enc_sd) == set(seg.encoder.state_dict())
    other = castvit.create_model("segmenter_cast_small", num_classes=9, encoder_kwargs=TINY_ENC,
                                 decoder_kwargs={"n_heads": 2})
    with pytest.raises(CheckpointError, match="num_classes"):
        load_segmentation_checkpoint(other, tmp_path / "checkpoint.pth")
    with pytest.raises(CheckpointError, match="load_encoder"):
        load_segmentation_checkpoint(other, tmp_path / "deit.pth")


def test_poly_schedule_and_spml_group_multipliers():
    assert poly_lr(0, 100, base_lr=1e-3, min_lr=1e-5) == pytest.approx(1e-3)
    assert poly_lr(100, 100, base_lr=1e-3, min_lr=1e-5) == pytest.approx(1e-5)
    assert poly_lr(50, 100, base_lr=1.0, min_lr=0.0, power=0.9) == pytest.approx(0.5 ** 0.9)
    assert poly_lr(0, 1000, base_lr=1.0, warmup_iters=100, warmup_ratio=0.1) == pytest.approx(0.1)
    assert poly_lr(50, 1000, base_lr=1.0, warmup_iters=100) == pytest.approx((1 - 0.05) ** 0.9 * 0.55)
    spml = _tiny("spml_cast_small", encoder="cast_small_seg")
    groups = {g["name"]: g for g in spml.param_groups(1e-4, {"encoder_weight": 1, "encoder_bias": 2,
                                                             "decoder_weight": 10, "decoder_bias": 20})}
    assert {k: g["lr_scale"] for k, g in groups.items()} == {"encoder_weight": 1, "encoder_bias": 2,
                                                             "decoder_weight": 10, "decoder_bias": 20}
    assert groups["decoder_bias"]["weight_decay"] == 0 and groups["encoder_weight"]["weight_decay"] == 1e-4
    head = {id(p) for p in spml.decoder.parameters()}
    assert {id(p) for p in groups["decoder_weight"]["params"]} | {id(p) for p in groups["decoder_bias"]["params"]} \
        == head
    n = sum(len(g["params"]) for g in groups.values())
    assert n == sum(1 for p in spml.parameters() if p.requires_grad)
    from castvit.train.optim import set_lr

    opt = torch.optim.SGD(list(groups.values()), lr=1.0)
    set_lr(opt, 3e-3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([3e-3, 6e-3, 3e-2, 6e-2])


@pytest.mark.parametrize("config,expect", [
    ("segmenter_ade20k", {"lr": 1e-3, "power": 0.9, "batch_size": 8, "epochs": 64, "crop_size": 512,
                          "num_classes": 150, "nesterov": True, "weight_decay": 0.0, "stride": 480}),
    ("segmenter_pascal_context", {"lr": 1e-3, "power": 0.9, "batch_size": 16, "epochs": 256, "crop_size": 480,
                                  "num_classes": 60, "nesterov": True, "weight_decay": 0.0, "stride": 448}),
    ("spml_voc", {"lr": 3e-3, "power": 0.9, "batch_size": 16, "epochs": 45, "crop_size": 512, "num_classes": 21,
                  "weight_decay": 1e-4, "warmup_iters": 100}),
])
def test_print_config_shows_the_published_values(config, expect, capsys):
    from castvit.cli import main

    assert main(["train", str(ROOT / "configs" / f"{config}.yaml"), "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["recipe"] == "segmentation"
    flat = {**cfg["train"], **cfg["data"], **cfg["data"].get("eval", {}), **cfg["model"]["kwargs"]}
    for k, v in expect.items():
        assert flat[k] == v, (k, flat[k], v)
    if config == "spml_voc":
        assert cfg["train"]["lr_mult"] == {"encoder_weight": 1.0, "encoder_bias": 2.0, "decoder_weight": 10.0,
                                           "decoder_bias": 20.0}
        assert cfg["data"]["eval"]["mean_over"] == "all" and cfg["data"]["eval"]["mode"] == "whole"
    else:
        assert flat["img_scale"][1] in (512, 520) and flat["ratio_range"] == [0.5, 2.0]
        assert flat["cat_max_ratio"] == 0.75


def test_bad_segmentation_config_names_the_key(capsys):
    from castvit.cli import main

    assert main(["train", str(ROOT / "configs" / "segmenter_ade20k.yaml"), "data.crop_sise=3",
                 "--print-config"]) == 2
    assert "crop_sise" in capsys.readouterr().err


CHILD = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    import castvit
    from castvit.data.datasets import build_loader
    from castvit.data.segmentation import SegSuperpixels, SegTrainView, SegViewDataset, SyntheticSegmentation
    from castvit.train import distributed as D
    from castvit.train.segmentation import SegmentationConfig, SegmentationRecipe, train_segmentation

    mode, out = sys.argv[1], sys.argv[2]
    info = D.init_distributed("cpu")
    data = SyntheticSegmentation(16, seed=0, target="part", image_size=32)
    view = SegTrainView(crop_size=32, img_scale=(128, 32), ratio_range=(0.75, 1.5),
                        superpixels=SegSuperpixels(method="grid", n_segments=24))
    torch.manual_seed(0)
    # no dropout: each process would draw its own masks
    model = castvit.create_model("segmenter_cast_small", num_classes=5, encoder="cast_small_seg",
                                 encoder_kwargs=dict(img_size=32, embed_dim=48, depth=[1, 1, 1, 1], num_heads=4,
                                                     pool_num_heads=4, num_clusters=[8, 4, 4, 2], pool_dropout=0.0,
                                                     fusion_dropout=0.0),
                                 decoder_kwargs={"n_heads": 2, "dropout": 0.0})
    loader = build_loader(SegViewDataset(data, view, seed=0), batch_size=8 // info.world_size, train=True, seed=0,
                          num_workers=1 if mode != "ddp" else 0)
    cfg = SegmentationConfig(epochs=3, batch_size=8, lr=0.05, log_every=1, checkpoint_every_steps=1,
                             num_workers=0, sync_bn=True)
    if mode == "kill":
        step = SegmentationRecipe.train_step
        count = [0]
        def train_step(self, *args, **kwargs):
            result = step(self, *args, **kwargs)
            count[0] += 1
            if count[0] == 4:  # epoch 1, step 2 of 2: after the checkpoint of step 1
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        SegmentationRecipe.train_step = train_step
    train_segmentation(model, loader, cfg, out_dir=out, progress=False, resume=(mode == "resume"))
    D.cleanup_distributed()
""")


def _run(cmd, ok=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if ok:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def _losses(out: Path):
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "step"]


@pytest.mark.slow
def test_two_gloo_processes_match_one_and_kill_resume_is_exact(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    _run([sys.executable, str(script), "single", str(tmp_path / "single")])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
          "ddp", str(tmp_path / "ddp")])
    single, ddp = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert len(single) == len(ddp) == 6
    torch.testing.assert_close(torch.tensor(ddp), torch.tensor(single), rtol=1e-4, atol=1e-5)
    a = read_checkpoint(tmp_path / "single" / "last.pth.tar")
    b = read_checkpoint(tmp_path / "ddp" / "last.pth.tar")
    assert b["castvit"]["world_size"] == 2
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-3, atol=1e-5, msg=k)
    # SIGKILL mid-run, resume: bit-identical to the uninterrupted single-process run
    killed = _run([sys.executable, str(script), "kill", str(tmp_path / "resumed")], ok=False)
    assert killed.returncode != 0
    _run([sys.executable, str(script), "resume", str(tmp_path / "resumed")])
    c = read_checkpoint(tmp_path / "resumed" / "last.pth.tar")
    for k, v in a["model"].items():
        assert torch.equal(c["model"][k], v), k
    assert _losses(tmp_path / "resumed") == single
    assert c["castvit"]["history"] == a["castvit"]["history"] or \
        [r["train_loss"] for r in c["castvit"]["history"]] == [r["train_loss"] for r in a["castvit"]["history"]]

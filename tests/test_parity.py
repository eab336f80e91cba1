"""castvit against outputs of the authors' release (shared/fixtures/official)."""

import argparse

import numpy as np
import pytest
import torch

import castvit
from castvit.checkpoint import load_checkpoint
from castvit.hierarchy import Hierarchy
from castvit.models import fast_cpu, farthest_point_sampling
from conftest import TINY, close, load_fixture

FIXTURES = {
    "cast_small_cls_tiny.pt": "cast_small",
    "cast_small_cls_tiny_perturbed.pt": "cast_small",
    "cast_seg_pretrain_tiny.pt": "cast_small_seg_pretrain",
}


# Every numerical test runs on the plain model and with the opt-in CPU speed-ups.
FAST = pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast_cpu"])


def build(fixture_name: str, fx: dict, fast: bool = False) -> torch.nn.Module:
    model = castvit.create_model(FIXTURES[fixture_name], mask_padded_tokens=False, **TINY)
    load_checkpoint(model, fx["state_dict"])  # alias keys included, as the authors save them
    if fast:
        fast_cpu.enable(model)
        assert fast_cpu.is_enabled(model)
    return model.eval()


@FAST
@pytest.mark.parametrize("fixture_name", list(FIXTURES))
def test_forward_reproduces_authors_outputs(fixture_name, fast):
    fx = load_fixture(fixture_name)
    model = build(fixture_name, fx, fast)
    with torch.no_grad():
        feats = model.forward_features(fx["inputs"]["image"], fx["inputs"]["superpixel"])
        logits = model.forward_head(feats)
    close(logits, fx["outputs"]["logits"])
    if "features" in fx["outputs"]:
        close(feats["features"], fx["outputs"]["features"])
    for key, ref in fx["outputs"]["intermediates"].items():
        close(feats[key], ref)


@FAST
@pytest.mark.parametrize("fixture_name", list(FIXTURES))
def test_conv_stem_reproduces_authors_patch_embed(fixture_name, fast):
    fx = load_fixture(fixture_name)
    model = build(fixture_name, fx, fast)
    with torch.no_grad():
        close(model.patch_embed(fx["inputs"]["image"]), fx["derived"]["patch_embed"])


@pytest.mark.parametrize("fixture_name", list(FIXTURES))
def test_farthest_point_sampling_reproduces_authors_sampler(fixture_name):
    fx = load_fixture(fixture_name)
    for call in fx["fps_calls"]:
        out = farthest_point_sampling(call["pos"], call["npoints"], call["start_idx"])
        assert torch.equal(out, call["out"])


@FAST
@pytest.mark.parametrize("fixture_name", list(FIXTURES))
def test_hierarchy_reproduces_authors_label_maps(fixture_name, fast):
    fx = load_fixture(fixture_name)
    model = build(fixture_name, fx, fast)
    y = fx["inputs"]["superpixel"]
    with torch.no_grad():
        feats = model.forward_features(fx["inputs"]["image"], y)
    hierarchies = Hierarchy.from_outputs(feats, y, vanished="own_token")
    for b, h in enumerate(hierarchies):
        for level in range(1, 5):
            ref_px = fx["derived"]["hier_seg_pixel"][f"level{level}"][b].numpy()
            ref_tok = fx["derived"]["hier_seg_token"][f"level{level}"][b].numpy()
            assert np.array_equal(h.label_map(level), ref_px)
            present = fx["derived"]["labels_present"][b].numpy()
            assert np.array_equal(h.segment_of(level)[present], ref_tok[present])


@FAST
def test_gradients_reproduce_authors_in_eval_mode(fast):
    name = "cast_small_cls_tiny_perturbed.pt"
    fx = load_fixture(name)
    ref = fx["grad_eval"]
    model = build(name, fx, fast)
    image = fx["inputs"]["image"].clone().requires_grad_(True)
    loss = (model(image, fx["inputs"]["superpixel"]) * ref["loss_weights"]).sum()
    loss.backward()
    close(loss.detach(), ref["loss"])
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert list(trainable) == list(ref["grad_params"])
    for n, g in [("image", image.grad)] + [(n, p.grad) for n, p in trainable.items()]:
        want = ref["grad_image"] if n == "image" else ref["grad_params"][n]
        tol = 1e-4 * want.abs().max().item() + 1e-6
        assert (g - want).abs().max().item() <= tol, n


@FAST
def test_train_mode_step_reproduces_authors_loss_gradient_and_bn_statistics(fast):
    name = "cast_small_cls_tiny_perturbed.pt"
    fx = load_fixture(name)
    ref = fx["grad_train_nodropout"]
    model = build(name, fx, fast).train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    image = fx["inputs"]["image"].clone().requires_grad_(True)
    loss = (model(image, fx["inputs"]["superpixel"]) * ref["loss_weights"]).sum()
    loss.backward()
    close(loss.detach(), ref["loss"])
    tol = 1e-4 * ref["grad_image"].abs().max().item() + 1e-6
    assert (image.grad - ref["grad_image"]).abs().max().item() <= tol
    state = model.state_dict()
    for k, v in ref["bn_buffers_after"].items():
        close(state[k], v)


def _containers(sd: dict[str, torch.Tensor]) -> dict[str, dict]:
    enc = {k: v for k, v in sd.items() if not k.startswith("head.")}
    projector = {"head.0.weight": torch.randn(64, 48), "head.1.weight": torch.ones(64)}
    return {
        "moco": {"epoch": 100, "arch": "cast_small", "optimizer": {"state": {}, "param_groups": []},
                 "scaler": {"scale": 1024.0},
                 "state_dict": {**{f"module.base_encoder.{k}": v for k, v in enc.items()},
                                **{f"module.base_encoder.{k}": v for k, v in projector.items()},
                                **{f"module.momentum_encoder.{k}": v for k, v in enc.items()},
                                "module.predictor.0.weight": torch.randn(64, 16)}},
        "linear_probe": {"epoch": 90, "arch": "cast_small", "best_acc1": 1.0,
                         "state_dict": {f"module.{k}": v for k, v in sd.items()}},
        "deit": {"model": sd, "optimizer": {}, "lr_scheduler": {}, "epoch": 299, "model_ema": sd, "scaler": {},
                 "args": argparse.Namespace(model="cast_small", lr=1e-3, batch_size=128, output_dir="out")},
        "segmenter": {"model": {**{f"encoder.{k}": v for k, v in sd.items()},
                                "decoder.head.weight": torch.randn(3, 3)}},
        "spml": {"embedding_model": {f"module.vit_backbone.{k}": v for k, v in sd.items()}},
    }


@pytest.mark.parametrize("container", ["moco", "linear_probe", "deit", "segmenter", "spml"])
def test_official_container_files_load_and_reproduce_outputs(container, tmp_path):
    name = "cast_small_cls_tiny.pt"
    fx = load_fixture(name)
    path = tmp_path / f"{container}.pth"
    torch.save(_containers(fx["state_dict"])[container], path)
    model = castvit.create_model("cast_small", mask_padded_tokens=False, **TINY).eval()
    report = load_checkpoint(model, path)
    assert report.container == container
    feats = model.forward_features(fx["inputs"]["image"], fx["inputs"]["superpixel"])
    for key in ("out4", "logit1", "logit4", "sampled_inds2"):
        close(feats[key], fx["outputs"]["intermediates"][key])
    if container == "moco":
        # The projector does not fit a classifier: the head is dropped and re-initialised.
        assert report.reinitialised == ["head.weight", "head.bias"]
    else:
        close(model.forward_head(feats), fx["outputs"]["logits"])


def test_segmentation_pretrain_checkpoint_loads_from_file(tmp_path):
    name = "cast_seg_pretrain_tiny.pt"
    fx = load_fixture(name)
    torch.save({"model": fx["state_dict"], "args": argparse.Namespace(epochs=1)}, tmp_path / "ckpt.pth")
    model = castvit.create_model("cast_small_seg_pretrain", mask_padded_tokens=False, **TINY).eval()
    load_checkpoint(model, tmp_path / "ckpt.pth")
    with torch.no_grad():
        close(model(fx["inputs"]["image"], fx["inputs"]["superpixel"]), fx["outputs"]["logits"])


@pytest.mark.parametrize("aliases", ["with", "without", "only"])
def test_loader_accepts_checkpoints_with_or_without_alias_keys(aliases):
    fx = load_fixture("cast_small_cls_tiny.pt")
    sd = dict(fx["state_dict"])
    alias = [k for k in sd if k.split(".")[0] in ("blocks1", "blocks2", "blocks3", "blocks4")]
    assert alias, "the fixture should carry alias keys"
    if aliases == "without":
        sd = {k: v for k, v in sd.items() if k not in alias}
    elif aliases == "only":
        sd = {k: v for k, v in sd.items() if not k.startswith("blocks.")}
    model = castvit.create_model("cast_small", mask_padded_tokens=False, **TINY).eval()
    load_checkpoint(model, sd)
    with torch.no_grad():
        close(model(fx["inputs"]["image"], fx["inputs"]["superpixel"]), fx["outputs"]["logits"])

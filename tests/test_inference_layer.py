"""The layer a user meets first: the predictor, preprocessing from the model's config,
weights by name (against a local mirror), conversions, and the defects a review found."""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

import castvit
from castvit.checkpoint import CheckpointError, load_checkpoint
from castvit.inference import HierarchyPredictor, as_uint8_images
from castvit.models import hub
from castvit.ops import normalize_images

TINY = dict(img_size=64, embed_dim=48, num_heads=4, pool_num_heads=4, depth=[1, 1, 1, 1],
            num_clusters=[16, 8, 4, 2], num_classes=10)
SRC = Path(castvit.__file__).parent


@pytest.fixture()
def photo():
    return np.ascontiguousarray(data.coffee()[::4, ::4])  # 100×150


# ------------------------------------------------------------------ predictor
def test_a_fresh_train_mode_model_gives_identical_outputs_and_keeps_its_buffers(photo):
    torch.manual_seed(0)
    model = castvit.create_model("cast_small", **TINY)  # train mode, as PyTorch builds it
    assert model.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    predictor = HierarchyPredictor(model)
    a, b = predictor.predict(photo), predictor.predict(photo)
    for s in range(a.num_levels):
        assert np.array_equal(a.label_map(s), b.label_map(s))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "BatchNorm statistics changed"
    assert model.training, "the predictor restores the model's mode"


def test_segment_wrapper_on_a_train_mode_model_is_deterministic(photo):
    torch.manual_seed(0)
    model = castvit.create_model("cast_small", **TINY)
    a = castvit.segment(model, photo)
    b = castvit.segment(model, photo)
    assert isinstance(a, castvit.Hierarchy)
    assert all(np.array_equal(a.label_map(s), b.label_map(s)) for s in range(a.num_levels))


def test_preprocessing_comes_from_the_model_config():
    model = castvit.create_model("cast_small")
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == [224, 224]
    assert cfg["superpixels"] == {"method": "seeds", "num_levels": 1, "prior": 2, "histogram_bins": 15,
                                  "num_iterations": 20, "n_segments": 196, "pixels_per_superpixel": 256}
    deit = castvit.create_model("cast_small_deit").pretrained_cfg["superpixels"]
    assert (deit["histogram_bins"], deit["num_iterations"]) == (5, 15)
    seg = castvit.create_model("cast_small_seg").pretrained_cfg
    assert seg["input_size"] == [512, 512] and seg["superpixels"]["n_segments"] == 512 * 512 // 256
    # the synthetic 64-px models get their own count: enough for their first pooling
    small = castvit.create_model("cast_small", **TINY).pretrained_cfg
    assert small["input_size"] == [64, 64] and small["superpixels"]["n_segments"] >= 2 * 16


def test_the_default_working_size_is_the_model_input_area_and_superpixels_match_training(photo):
    torch.manual_seed(0)
    big = np.ascontiguousarray(data.astronaut())  # 512×512
    model = castvit.create_model("cast_small", embed_dim=48, num_heads=4, pool_num_heads=4, depth=[1, 1, 1, 1])
    predictor = HierarchyPredictor(model)
    assert predictor.size == 224
    prep = predictor.prepare(big)
    assert prep.work_image.shape[:2] == (224, 224)
    # SEEDS on the 224² working copy gives the 196 superpixels the model was trained with
    assert prep.n_requested == 196 and np.unique(prep.work_sp).size == 196
    assert prep.full_sp.shape == big.shape[:2]


def test_the_predictor_batches_with_a_bound_and_streams_in_order(photo):
    torch.manual_seed(0)
    model = castvit.create_model("cast_small", **TINY)
    images = [photo, photo[:80, :120].copy(), photo[::-1].copy(), photo[:, ::-1].copy(), photo]
    predictor = HierarchyPredictor(model, batch_size=2, num_workers=2)
    calls = []
    real = model.forward_features

    def spy(x, sp):
        calls.append(x.shape[0])
        return real(x, sp)

    model.forward_features = spy
    out = predictor.predict_batch(images)
    assert max(calls) <= 2
    for img, h in zip(images, out):
        alone = HierarchyPredictor(model, num_workers=0).predict(img)
        assert h.shape == img.shape[:2]
        assert all(np.array_equal(h.label_map(s), alone.label_map(s)) for s in range(h.num_levels))


def test_the_predictor_runs_every_superpixel_method_with_its_options(photo):
    """The predictor passes each method only the options it takes (slic_torch included)
    and its superpixels are the method's own on the working image."""
    from castvit.inference import resize_image, sample_labels
    from castvit.superpixels import compute_superpixels_single

    torch.manual_seed(0)
    model = castvit.create_model("cast_small", **TINY)
    for method in ("seeds", "slic", "slic_torch"):
        predictor = HierarchyPredictor(model, method=method)
        h = predictor.predict(photo)
        size = predictor.working_size(*photo.shape[:2])
        direct = compute_superpixels_single(resize_image(photo, *size), method=method,
                                            n_segments=predictor.superpixel_count(*size),
                                            **predictor._backend_options())
        assert h.shape == photo.shape[:2], method
        assert np.array_equal(h.label_map(0), sample_labels(direct, *photo.shape[:2])), method


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_segment(photo, dtype):
    torch.manual_seed(0)
    model = castvit.create_model("cast_small", **TINY).to(dtype)
    h = HierarchyPredictor(model).predict(photo)
    assert h.is_nested() and h.num_levels == 5


def test_pil_images_give_one_hierarchy(photo):
    from PIL import Image

    torch.manual_seed(0)
    model = castvit.create_model("cast_small", **TINY)
    h = castvit.segment(model, Image.fromarray(photo))
    assert isinstance(h, castvit.Hierarchy) and h.shape == photo.shape[:2]


def test_float_images_in_0_255_are_refused_with_the_fix(photo):
    with pytest.raises(ValueError, match="divide by 255"):
        as_uint8_images(torch.from_numpy(photo).permute(2, 0, 1).float())
    with pytest.raises(ValueError, match="divide by 255"):
        normalize_images(photo.astype(np.float32))
    ok = as_uint8_images(torch.from_numpy(photo).permute(2, 0, 1).float() / 255)[0]
    assert np.array_equal(ok, photo)


@pytest.mark.parametrize("layout", ["hwc", "bhwc", "chw", "bchw"])
def test_normalize_images_accepts_every_layout_the_api_accepts(photo, layout):
    ref = normalize_images(torch.from_numpy(photo).permute(2, 0, 1)[None])
    x = {"hwc": photo, "bhwc": photo[None], "chw": photo.transpose(2, 0, 1), "bchw": photo.transpose(2, 0, 1)[None]}
    assert torch.equal(normalize_images(x[layout]), ref)
    assert torch.equal(normalize_images(torch.from_numpy(np.ascontiguousarray(x[layout]))), ref)


def test_hierarchy_repr_is_a_short_summary(photo):
    torch.manual_seed(0)
    h = castvit.segment(castvit.create_model("cast_small", **TINY), photo)
    text = repr(h)
    assert text.startswith("Hierarchy(150×100 px, 5 levels") and len(text) < 120


# ------------------------------------------------------------------ weights by name
def _mirror(tmp_path, monkeypatch, model_name="cast_small", tag="moco_in1k"):
    """A local mirror of the model zoo holding one MoCo container made from a tiny model,
    and an empty cache."""
    entry = hub.pretrained_entry(f"{model_name}.{tag}")
    torch.manual_seed(1)
    src = castvit.create_model(model_name, **TINY)
    sd = {f"module.base_encoder.{k}": v for k, v in src.state_dict().items() if not k.startswith("head.")}
    sd["module.base_encoder.head.0.weight"] = torch.randn(32, 48)  # the MoCo projector
    mirror = tmp_path / "mirror"
    target = mirror / entry.path
    target.parent.mkdir(parents=True)
    torch.save({"epoch": 100, "arch": model_name, "state_dict": sd}, target)
    monkeypatch.setenv("CASTVIT_HUB_URL", mirror.as_uri())
    monkeypatch.setenv("CASTVIT_HOME", str(tmp_path / "cache"))
    return entry, src, target


def test_pretrained_tag_loads_from_a_local_mirror_and_reproduces_outputs(tmp_path, monkeypatch):
    entry, src, target = _mirror(tmp_path, monkeypatch)
    with pytest.warns(UserWarning, match="head"):  # the projector does not fit the classifier head
        model = castvit.create_model("cast_small.moco_in1k", **TINY)
    with pytest.warns(UserWarning, match="head"):
        same = castvit.create_model("cast_small", pretrained="moco_in1k", **TINY)
    assert (tmp_path / "cache" / entry.filename).is_file()
    x = torch.randn(1, 3, 64, 64)
    sp = torch.arange(8 * 8).reshape(8, 8).repeat_interleave(8, 0).repeat_interleave(8, 1)[None]
    model.eval(), src.eval(), same.eval()
    with torch.no_grad():
        a, b, c = (m.forward_features(x, sp)["out4"] for m in (model, src, same))
    assert torch.allclose(a, b) and torch.equal(a, c)
    recorded = json.loads((tmp_path / "cache" / "sha256.json").read_text())
    assert recorded[entry.filename] == hashlib.sha256(target.read_bytes()).hexdigest()


def test_a_file_whose_sha256_changed_is_refused(tmp_path, monkeypatch):
    entry, _, target = _mirror(tmp_path, monkeypatch)
    hub.download_pretrained(entry.full_name, progress=False)
    cached = tmp_path / "cache" / entry.filename
    cached.write_bytes(cached.read_bytes() + b"tampered")
    with pytest.raises(hub.PretrainedDownloadError, match="sha256"):
        castvit.create_model("cast_small.moco_in1k", **TINY)


def test_a_download_with_the_wrong_sha256_is_refused_and_not_kept(tmp_path, monkeypatch):
    entry, _, _ = _mirror(tmp_path, monkeypatch)
    wrong = hub.PretrainedEntry(entry.model, entry.tag, entry.path, entry.description, entry.size_mb, sha256="0" * 64)
    monkeypatch.setitem(hub._BY_NAME, entry.full_name, wrong)
    with pytest.raises(hub.PretrainedDownloadError, match="expected 0000"):
        hub.download_pretrained(entry.full_name, progress=False)
    assert not (tmp_path / "cache" / entry.filename).exists()


def test_offline_error_names_the_url_and_the_cache_path(tmp_path, monkeypatch):
    monkeypatch.setenv("CASTVIT_HUB_URL", (tmp_path / "nowhere").as_uri())
    monkeypatch.setenv("CASTVIT_HOME", str(tmp_path / "cache"))
    entry = hub.pretrained_entry("cast_small_deit.deit_in1k")
    with pytest.raises(hub.PretrainedDownloadError) as info:
        castvit.create_model("cast_small_deit.deit_in1k")
    assert entry.url in str(info.value) and str(tmp_path / "cache" / entry.filename) in str(info.value)


def test_list_pretrained_covers_the_model_zoo():
    names = castvit.list_pretrained()
    for n in ("cast_small.moco_in1k", "cast_small_deep.moco_in1k", "cast_base.moco_in1k",
              "vit_conv_small_patch16.moco_in1k", "vit_conv_base_patch16.moco_in1k",
              "cast_small_seg_pretrain.moco_coco_ep149", "cast_small_seg_pretrain.moco_coco_ep399",
              "cast_small_deit.deit_in1k"):
        assert n in names
        assert hub.pretrained_entry(n).model in castvit.list_models()
    with pytest.raises(ValueError, match="neither a file nor a published tag"):
        castvit.create_model("cast_small", pretrained="imagenet22k")


def test_hubconf_exposes_every_model(tmp_path):
    repo = SRC.parent.parent
    model = torch.hub.load(str(repo), "cast_small", source="local", **TINY)
    assert model.castvit_name == "cast_small"
    import importlib.util

    spec = importlib.util.spec_from_file_location("castvit_hubconf", repo / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert all(callable(getattr(hubconf, n, None)) for n in castvit.list_models())


def test_convert_writes_safetensors_that_rebuild_the_model(tmp_path):
    torch.manual_seed(0)
    src = castvit.create_model("cast_small_deit", **TINY)
    torch.save({"model": src.state_dict(), "epoch": 3}, tmp_path / "best_checkpoint.pth")
    out = tmp_path / "w.safetensors"
    from castvit.cli import main

    rc = main(["convert", str(tmp_path / "best_checkpoint.pth"), str(out), "--model", "cast_small_deit",
                           *[f"--model-arg={k}={json.dumps(v)}" for k, v in TINY.items()]])
    assert rc == 0 and out.is_file() and out.with_suffix(".json").is_file()
    back = castvit.create_model(pretrained=str(out))
    assert back.castvit_name == "cast_small_deit" and back.castvit_config["embed_dim"] == 48
    for k, v in src.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)


# ------------------------------------------------------------------ defects
def test_pretrained_that_reinitialises_the_head_warns_and_reports(tmp_path):
    torch.manual_seed(0)
    src = castvit.create_model("cast_small", **dict(TINY, num_classes=5))
    model = castvit.create_model("cast_small", **TINY)
    with pytest.warns(UserWarning, match="newly initialised"):
        report = load_checkpoint(model, {"state_dict": src.state_dict()})
    assert "head.weight" in report.reinitialised


def test_reset_head_refuses_typos():
    model = castvit.create_model("cast_small", **TINY)
    with pytest.raises(ValueError, match="reset_head must be"):
        load_checkpoint(model, {"state_dict": model.state_dict()}, reset_head="alwyas")


def test_an_unrelated_json_beside_a_checkpoint_is_ignored(tmp_path):
    torch.manual_seed(0)
    src = castvit.create_model("cast_small", **TINY)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "weights.pth")
    (tmp_path / "weights.json").write_text(json.dumps({"experiment": "mine", "lr": 0.1}))
    model = castvit.create_model("cast_small", pretrained=str(tmp_path / "weights.pth"), **TINY)
    assert torch.equal(model.state_dict()["cls_token"], src.state_dict()["cls_token"])


@pytest.mark.parametrize("content", [b"\x00" * 64, b"garbage that is not a zip"])
def test_garbage_checkpoints_never_suggest_unsafe_loading(tmp_path, content):
    for name in ("bad.pth", "bad.safetensors"):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            castvit.create_model("cast_small", pretrained=str(path), **TINY)
        text = str(info.value)
        assert name in text and "weights_only" not in text and "unpickl" not in text.replace("will not unpickle", "")


def test_list_models_honours_tags():
    assert set(castvit.list_models(tag="vit")) == {n for n in castvit.list_models() if n.startswith("vit_")}
    with pytest.raises(ValueError, match="unknown tag"):
        castvit.list_models(tag="nope")


def test_scipy_is_a_declared_dependency():
    import tomllib

    deps = tomllib.loads((SRC.parent.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("scipy") for d in deps)


def test_cli_help_is_plain_text_and_version_prints():
    out = subprocess.run([sys.executable, "-m", "castvit.cli", "--help"], capture_output=True, text=True, check=True)
    assert "castvit: CAST vision transformers" in out.stdout and "``" not in out.stdout
    ver = subprocess.run([sys.executable, "-m", "castvit.cli", "--version"], capture_output=True, text=True)
    assert ver.stdout.strip() == f"castvit {castvit.__version__}"


def test_models_listing_columns_stay_aligned():
    from castvit.cli.models import format_rows

    text = format_rows([("a", "x " * 60), ("longer_name", "short")], width=60)
    lines = text.splitlines()
    assert all(len(line) <= 60 for line in lines)
    starts = {len(line) - len(line.lstrip()) if not line[0].strip() else line.index(line.split()[1])
              for line in lines}
    assert starts == {len("longer_name") + 2}


# ------------------------------------------------------------------ the house
def _imports(path: Path, modules: set[str]) -> set[str]:
    """castvit modules imported anywhere in ``path`` (lazy imports included):
    ``from pkg import sub`` counts as importing ``pkg.sub`` when that is a module."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("castvit")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("castvit"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            out |= subs if subs else {node.module}
    return out


def _module_graph() -> dict[str, set[str]]:
    modules = {}
    for f in SRC.rglob("*.py"):
        rel = f.relative_to(SRC.parent).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        modules[name] = f
    graph = {}
    for name, f in modules.items():
        deps = {d for d in _imports(f, set(modules)) if d in modules and d != name}
        graph[name] = deps
    return graph


def test_the_package_import_graph_has_no_cycle():
    graph = _module_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in graph[n]:
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


LAYERS = {  # a module may import only from its own layer or below
    "castvit.models": {"castvit.train", "castvit.eval", "castvit.viz", "castvit.cli", "castvit.inference",
                       "castvit.hierarchy", "castvit.data", "castvit.demo"},
    "castvit.superpixels": {"castvit.models", "castvit.train", "castvit.eval", "castvit.viz", "castvit.cli"},
    "castvit.data": {"castvit.models", "castvit.train", "castvit.eval", "castvit.viz", "castvit.cli"},
    "castvit.hierarchy": {"castvit.inference", "castvit.train", "castvit.eval", "castvit.viz", "castvit.cli"},
    "castvit.eval": {"castvit.train", "castvit.viz", "castvit.cli", "castvit.demo"},
    "castvit.viz": {"castvit.train", "castvit.cli", "castvit.demo"},
}


def test_imports_point_down_the_flow():
    graph = _module_graph()
    bad = []
    for name, deps in graph.items():
        for layer, forbidden in LAYERS.items():
            if name == layer or name.startswith(layer + "."):
                bad += [f"{name} imports {d}" for d in deps if any(d == f or d.startswith(f + ".") for f in forbidden)]
        if not name.startswith("castvit.cli"):
            bad += [f"{name} imports {d}" for d in deps if d.startswith("castvit.cli")]
    assert not bad, "\n".join(bad)


def test_only_cli_modules_define_commands():
    offenders = []
    for f in SRC.rglob("*.py"):
        if "cli" in f.relative_to(SRC).parts:
            continue
        tree = ast.parse(f.read_text())
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        if {"add_arguments", "run"} <= names or "ArgumentParser(" in f.read_text():
            offenders.append(str(f.relative_to(SRC)))
    assert not offenders, offenders


def test_a_fine_tuned_segmenter_checkpoint_loads_whole_by_name(tmp_path):
    kw = dict(num_classes=5, encoder_kwargs=dict(TINY, num_classes=0))
    kw["encoder_kwargs"].pop("num_classes")
    torch.manual_seed(0)
    src = castvit.create_model("segmenter_cast_small", **kw)
    torch.save({"model": src.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pth")  # Segmenter's container
    back = castvit.create_model("segmenter_cast_small", pretrained=str(tmp_path / "checkpoint.pth"), **kw)
    for k, v in src.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_segment_with_a_published_name_uses_those_weights_and_does_not_warn(tmp_path, monkeypatch, photo):
    import contextlib
    import io

    from PIL import Image

    from castvit.cli import main

    _mirror(tmp_path, monkeypatch)
    Image.fromarray(photo).save(tmp_path / "p.png")
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["segment", str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--no-viewer",
                     "--model", "cast_small.moco_in1k", *[f"--model-arg={k}={json.dumps(v)}" for k, v in TINY.items()]])
    assert code == 0, err.getvalue()
    assert "RANDOM WEIGHTS" not in err.getvalue()
    doc = json.loads((tmp_path / "o" / "p" / "hierarchy.json").read_text())
    assert doc["model"]["random_weights"] is False

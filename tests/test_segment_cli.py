"""``castvit segment`` on the photographs shipped with scikit-image and scikit-learn,
at their original sizes: every output exists, parses and agrees with the others."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from castvit.cli import main
from castvit.hierarchy import Hierarchy
from castvit.ops import label_boundaries
from castvit.viz.export import read_label_png, write_label_png

# cast_small's 64/32/16/8 levels with a narrow, shallow trunk: fast on a CPU.
FAST = ["--model-arg", "embed_dim=48", "--model-arg", "num_heads=4", "--model-arg", "pool_num_heads=4",
        "--model-arg", "depth=[1,1,1,1]"]
LEVELS = 5


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["segment", *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


def photographs() -> dict[str, np.ndarray]:
    from skimage import data
    from sklearn.datasets import load_sample_image

    photos = {name: getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")}
    photos.update({name: load_sample_image(f"{name}.jpg") for name in ("china", "flower")})
    return photos


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    arrays = photographs()
    for name, arr in arrays.items():
        # the scikit-learn pictures stay JPEGs, the scikit-image ones PNGs
        suffix = ".jpg" if name in ("china", "flower") else ".png"
        Image.fromarray(arr).save(folder / f"{name}{suffix}", quality=95)
    sizes = {name: Image.open(next(folder.glob(f"{name}.*"))).size[::-1] for name in arrays}
    return folder, sizes


@pytest.fixture(scope="module")
def run(photos, tmp_path_factory):
    folder, sizes = photos
    out = tmp_path_factory.mktemp("segs")
    code, stdout, stderr = run_cli(folder, "--out", out, "--batch-size", "4", "--outputs", "all", *FAST)
    return {"code": code, "stdout": stdout, "stderr": stderr, "out": out, "sizes": sizes}


def image_dirs(run):
    return {name: run["out"] / name for name in run["sizes"]}


def label_maps(d: Path) -> list[np.ndarray]:
    return [read_label_png(d / f"level{s}_labels.png") for s in range(LEVELS)]


def test_cli_segments_every_photograph_and_exits_zero(run):
    assert run["code"] == 0, run["stderr"]
    for name in run["sizes"]:
        assert f"{name}" in run["stdout"]
    assert "6 image(s) segmented, 0 failed" in run["stdout"]


def test_cli_warns_loudly_that_weights_are_random(run):
    assert "RANDOM WEIGHTS" in run["stderr"]
    assert "--checkpoint" in run["stderr"]
    doc = json.loads((run["out"] / "astronaut" / "hierarchy.json").read_text())
    assert doc["model"]["random_weights"] is True


def test_every_output_file_exists_and_parses(run):
    for name, d in image_dirs(run).items():
        h, w = run["sizes"][name]
        for s in range(LEVELS):
            with Image.open(d / f"level{s}_overlay.png") as im:
                assert im.mode == "RGB" and im.size == (w, h)
            with Image.open(d / f"level{s}_labels.png") as im:
                assert im.mode == "I;16" and im.size == (w, h)
        with Image.open(d / "contours.png") as im:
            assert im.mode == "L" and im.size == (w, h)
        doc = json.loads((d / "hierarchy.json").read_text())
        assert doc["format"] == "castvit-segment/1"
        hier = Hierarchy.load_npz(d / "hierarchy.npz")
        assert hier.num_levels == LEVELS
    assert (run["out"] / "viewer.html").is_file()


def test_outputs_are_at_the_original_resolution(run):
    for name, d in image_dirs(run).items():
        doc = json.loads((d / "hierarchy.json").read_text())
        assert tuple(doc["size"]) == tuple(doc["original_size"]) == run["sizes"][name]
        wh, ww = doc["hierarchy"]["working_size"]
        assert wh % 8 == 0 and ww % 8 == 0 and abs(wh * ww - 224 * 224) < 0.1 * 224 * 224
        for lab in label_maps(d):
            assert lab.shape == run["sizes"][name]


def test_every_level_map_is_nested_in_the_next(run):
    for d in image_dirs(run).values():
        maps = label_maps(d)
        for fine, coarse in zip(maps, maps[1:]):
            for sid in np.unique(fine):
                assert np.unique(coarse[fine == sid]).size == 1, f"{d.name}: segment {sid} is split"


def test_every_pixel_has_a_label_listed_in_the_json(run):
    for d in image_dirs(run).values():
        doc = json.loads((d / "hierarchy.json").read_text())
        for s, lab in enumerate(label_maps(d)):
            ids = {seg["id"] for seg in doc["levels"][s]["segments"]}
            assert set(np.unique(lab).tolist()) == ids
            assert sum(seg["area"] for seg in doc["levels"][s]["segments"]) == lab.size


def test_classification_levels_have_at_most_64_32_16_8_segments(run):
    for d in image_dirs(run).values():
        doc = json.loads((d / "hierarchy.json").read_text())
        counts = [lv["num_segments"] for lv in doc["levels"]]
        assert all(c <= k for c, k in zip(counts[1:], [64, 32, 16, 8])), counts
        assert counts[0] > 64


def test_json_agrees_with_the_label_maps(run):
    for d in image_dirs(run).values():
        doc = json.loads((d / "hierarchy.json").read_text())
        maps = label_maps(d)
        image = np.asarray(Hierarchy.load_npz(d / "hierarchy.npz").image)
        for s, lab in enumerate(maps):
            level = doc["levels"][s]
            assert level["level"] == s and level["num_segments"] == len(level["segments"])
            assert level["labels"] == f"level{s}_labels.png"
            area = np.bincount(lab.ravel())
            for seg in level["segments"]:
                m = lab == seg["id"]
                ys, xs = np.nonzero(m)
                assert seg["area"] == area[seg["id"]]
                assert seg["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                if s + 1 < LEVELS:
                    assert np.unique(maps[s + 1][m]).tolist() == [seg["parent"]]
                else:
                    assert seg["parent"] is None
                children = sorted(np.unique(maps[s - 1][m]).tolist()) if s else []
                assert seg["children"] == children
                assert np.abs(np.asarray(seg["color"]) - image[m].mean(0)).max() <= 0.5 + 1e-9


def test_npz_holds_the_same_arrays_as_the_pngs(run, photos):
    folder, _ = photos
    for name, d in image_dirs(run).items():
        with np.load(d / "hierarchy.npz") as z:
            assert np.array_equal(z["labels"], np.stack(label_maps(d)))
            assert z["boundary_map"].shape == run["sizes"][name]
            src = np.asarray(Image.open(next(folder.glob(f"{name}.*"))).convert("RGB"))
            assert np.array_equal(z["image"], src)


def test_overlays_are_segment_mean_colours_with_boundaries(run):
    d = run["out"] / "coffee"
    doc = json.loads((d / "hierarchy.json").read_text())
    for s in (0, 2, 4):
        lab = read_label_png(d / f"level{s}_labels.png")
        over = np.asarray(Image.open(d / f"level{s}_overlay.png"))
        edge = label_boundaries(lab)
        assert (over[edge] == 255).all()
        for seg in doc["levels"][s]["segments"][:10]:
            inside = (lab == seg["id"]) & ~edge
            assert (over[inside] == seg["color"]).all()


def test_index_lists_every_image(run):
    index = json.loads((run["out"] / "index.json").read_text())
    assert sorted(i["name"] for i in index["images"]) == sorted(run["sizes"])
    assert all(i["status"] == "ok" for i in index["images"])


def test_batch_size_does_not_change_the_result(run, photos, tmp_path):
    folder, _ = photos
    code, _, err = run_cli(folder / "chelsea.png", folder / "rocket.png", "--out", tmp_path, "--batch-size", "1",
                           "--no-viewer", "-q", *FAST)
    assert code == 0, err
    for name in ("chelsea", "rocket"):
        for a, b in zip(label_maps(tmp_path / name), label_maps(run["out"] / name)):
            assert np.array_equal(a, b)
    assert not (tmp_path / "viewer.html").exists()


def test_globs_folders_and_clashing_names(photos, tmp_path):
    folder, _ = photos
    other = tmp_path / "other"
    other.mkdir()
    small = np.asarray(Image.open(folder / "chelsea.png"))[::2, ::2]
    Image.fromarray(small).save(other / "chelsea.png")
    out = tmp_path / "out"
    code, stdout, err = run_cli(str(folder / "chel*.png"), other, "--out", out, "--no-viewer", *FAST)
    assert code == 0, err
    assert {p.name for p in out.iterdir() if p.is_dir()} == {"chelsea", "chelsea-2"}
    doc = json.loads((out / "chelsea-2" / "hierarchy.json").read_text())
    assert doc["source"] == str((other / "chelsea.png").resolve())


def test_default_model_is_cast_small_with_64_32_16_8_levels(photos, tmp_path):
    folder, _ = photos
    code, _, err = run_cli(folder / "astronaut.png", "--out", tmp_path, "--no-viewer", "-q")
    assert code == 0, err
    doc = json.loads((tmp_path / "astronaut" / "hierarchy.json").read_text())
    assert doc["model"]["name"] == "cast_small"
    assert [lv["num_segments"] for lv in doc["levels"]][1:] == [64, 32, 16, 8]


def test_sixteen_bit_label_png_round_trips(tmp_path):
    labels = np.array([[0, 1, 255], [256, 4097, 65535]], dtype=np.int64)
    write_label_png(tmp_path / "l.png", labels)
    with Image.open(tmp_path / "l.png") as im:
        assert im.mode == "I;16"
    assert np.array_equal(read_label_png(tmp_path / "l.png"), labels)
    with pytest.raises(ValueError, match="0..65535"):
        write_label_png(tmp_path / "bad.png", labels + 1)


@pytest.mark.parametrize("shape,dtype", [((7, 5), np.uint8), ((1, 9), np.uint16), ((40, 30), np.uint16),
                                         ((40, 30), np.uint8), ((6, 4, 3), np.uint8)])
def test_png_writer_round_trips_every_pixel(tmp_path, shape, dtype):
    from castvit.viz.export import write_png

    rng = np.random.default_rng(sum(shape))
    pixels = rng.integers(0, np.iinfo(dtype).max + 1, size=shape).astype(dtype)  # the Up filter wraps mod 256
    write_png(tmp_path / "p.png", pixels[::-1].T if pixels.ndim == 2 else pixels)  # a non-contiguous view too
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == {(2, np.uint8): "L", (2, np.uint16): "I;16", (3, np.uint8): "RGB"}[(pixels.ndim, dtype)]
        back = np.asarray(im)
    assert np.array_equal(back, pixels[::-1].T if pixels.ndim == 2 else pixels)


def synthetic_hierarchy() -> Hierarchy:
    """Blocky superpixels with absent ids (parent -1), disconnected segments and
    non-contiguous cluster ids at every level."""
    rng = np.random.default_rng(3)
    cells = rng.choice(np.array([0, 2, 3, 5, 8, 9, 11, 12, 14, 17, 19, 20]), size=(6, 9))
    sp = np.kron(cells, np.ones((7, 6), dtype=np.int64))[:40, :51]
    p0 = np.full(21, -1)
    present = np.unique(sp)
    p0[present] = rng.choice([1, 4, 6, 7, 10], size=present.size)
    parents = [p0, rng.choice([0, 3, 5], size=11), np.array([1, 1, 0, 1, 0, 0]), np.array([3, 2])]
    image = rng.integers(0, 256, size=(*sp.shape, 3), dtype=np.uint8)
    return Hierarchy(superpixels=sp, parents=[np.asarray(p, dtype=np.int64) for p in parents], image=image)


def test_segment_tables_equal_the_records_computed_from_each_label_map():
    h = synthetic_hierarchy()
    maps = h.label_maps()
    tables = h.segment_tables(colors=True)
    assert len(tables) == h.num_levels
    for s, (lab, table) in enumerate(zip(maps, tables)):
        ids = np.unique(lab)
        assert table.ids.tolist() == ids.tolist() and len(table) == h.num_segments(s)
        for k, sid in enumerate(ids):
            m = lab == sid
            ys, xs = np.nonzero(m)
            assert table.area[k] == m.sum()
            assert table.bbox[k].tolist() == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert table.color[k].tolist() == np.round(h.image[m].mean(0)).astype(np.uint8).tolist()
            children = table.child_ids[table.child_ptr[k]:table.child_ptr[k + 1]].tolist()
            assert children == (np.unique(maps[s - 1][m]).tolist() if s else [])
            if s + 1 < h.num_levels:
                assert table.parent[k] == np.unique(maps[s + 1][m]).item()
            else:
                assert table.parent is None
        assert h.segments(s) == table.records()
        assert [r["color"] for r in table.records(color=True)] == table.color.tolist()
    assert tables[0].records(level_key=False)[0].keys() == {"id", "area", "bbox", "parent", "children"}
    assert h.segment_tables()[2].color is None


def test_contour_map_holds_the_coarsest_level_of_each_boundary_pixel():
    h = synthetic_hierarchy()
    expected = np.full(h.shape, -1, dtype=np.int8)
    for s, lab in enumerate(h.label_maps()):
        expected[label_boundaries(lab)] = s
    assert expected.max() == h.num_levels - 1
    assert np.array_equal(h.boundary_map(), expected)


def test_contour_png_is_brighter_the_coarser_the_level():
    from castvit.viz.export import contour_image

    levels = np.array([[-1, 0, 1, 2, 3, 4], [4, 3, 2, 1, 0, -1]], dtype=np.int8)
    assert contour_image(levels, 5).tolist() == [[0, 51, 102, 153, 204, 255], [255, 204, 153, 102, 51, 0]]
    assert contour_image(np.array([[-1, 0, 1]]), 3).tolist() == [[0, 85, 170]]


def test_model_threads_default_to_half_the_cpus_and_are_restored(photos, tmp_path, monkeypatch):
    import torch

    from castvit.cli.segment import model_streams, model_threads, usable_cpus
    from castvit.inference import HierarchyPredictor

    assert [model_threads(n) for n in (1, 2, 3, 16)] == [1, 1, 1, 8]
    assert model_streams(HierarchyPredictor(torch.nn.Linear(2, 2))) == 2  # on a CPU, two batches at once
    seen = []
    run_prepared = HierarchyPredictor.run_prepared

    def spy(self, items):
        seen.append(torch.get_num_threads())
        return run_prepared(self, items)

    monkeypatch.setattr(HierarchyPredictor, "run_prepared", spy)
    before = torch.get_num_threads()
    folder, _ = photos
    for extra, want in (([], model_threads(usable_cpus())), (["--threads", "3"], 3)):
        seen.clear()
        code, _, err = run_cli(folder / "coffee.png", "--out", tmp_path, "--no-viewer", "-q", *extra, *FAST)
        assert code == 0, err
        assert seen == [want]
        assert torch.get_num_threads() == before


def test_size_zero_runs_the_model_at_the_native_resolution(photos, tmp_path):
    folder, _ = photos
    code, _, err = run_cli(folder / "chelsea.png", "--out", tmp_path, "--size", "0", "--no-viewer", *FAST)
    assert code == 0, err
    doc = json.loads((tmp_path / "chelsea" / "hierarchy.json").read_text())
    assert doc["hierarchy"]["working_size"] == [304, 448]  # 300×451 rounded to multiples of 8
    assert doc["size"] == [300, 451]


def test_slic_superpixels_are_an_option(photos, tmp_path):
    folder, _ = photos
    code, _, err = run_cli(folder / "coffee.png", "--out", tmp_path, "--superpixels", "slic", "--no-viewer", *FAST)
    assert code == 0, err
    doc = json.loads((tmp_path / "coffee" / "hierarchy.json").read_text())
    assert doc["superpixels"]["method"] == "slic" and doc["levels"][0]["num_segments"] >= 98


def test_an_unusable_size_or_device_stops_before_any_image(photos, tmp_path):
    import torch

    folder, _ = photos
    code, _, err = run_cli(folder / "coffee.png", "--out", tmp_path, "--size", "4")
    assert code == 2 and "--size must be 0 (native) or at least 8" in err
    if not torch.cuda.is_available():
        code, _, err = run_cli(folder / "coffee.png", "--out", tmp_path, "--device", "cuda")
        assert code == 2 and "CUDA is not available" in err
    assert not (tmp_path / "coffee").exists()


@pytest.mark.parametrize("outputs,files", [
    (None, {"level0_labels.png", "level4_labels.png", "contours.png", "hierarchy.json"}),
    ("labels,json", {"level0_labels.png", "level4_labels.png", "hierarchy.json"}),
])
def test_outputs_selects_the_files_and_the_json_lists_only_those(photos, tmp_path, outputs, files):
    folder, _ = photos
    extra = [] if outputs is None else ["--outputs", outputs]
    code, _, err = run_cli(folder / "coffee.png", "--out", tmp_path, "--no-viewer", "-q", *extra, *FAST)
    assert code == 0, err
    written = {p.name for p in (tmp_path / "coffee").iterdir()}
    assert files <= written and not any(n.endswith("_overlay.png") or n.endswith(".npz") for n in written)
    doc = json.loads((tmp_path / "coffee" / "hierarchy.json").read_text())
    listed = set(doc["files"].values()) | {v for lvl in doc["levels"] for k, v in lvl.items()
                                            if k in ("labels", "overlay")}
    assert listed <= written


def test_unknown_outputs_are_refused(photos, tmp_path):
    folder, _ = photos
    with pytest.raises(SystemExit):
        run_cli(folder / "coffee.png", "--out", tmp_path, "--outputs", "labels,pdf")


def test_a_semantic_model_also_writes_its_class_map(photos, tmp_path):
    import torch

    import castvit
    from castvit.inference import HierarchyPredictor

    folder, sizes = photos
    enc = "{img_size: 64, embed_dim: 48, num_heads: 4, pool_num_heads: 4, depth: [1,1,1,1], num_clusters: [16,8,4,2]}"
    code, _, err = run_cli(folder / "coffee.png", "--out", tmp_path, "--no-viewer", "-q", "--model",
                           "segmenter_cast_small", "--model-arg", "num_classes=7", "--model-arg",
                           f"encoder_kwargs={enc}", "--size", "128")
    assert code == 0, err
    with Image.open(tmp_path / "coffee" / "classes.png") as im:
        assert im.mode == "P" and im.size == sizes["coffee"][::-1]
        classes = np.asarray(im)
    assert classes.max() < 7
    doc = json.loads((tmp_path / "coffee" / "hierarchy.json").read_text())
    assert doc["files"]["classes"] == "classes.png"
    # the same map, computed independently: logits at the working size, resized, argmax
    torch.manual_seed(0)
    model = castvit.create_model("segmenter_cast_small", num_classes=7,
                                 encoder_kwargs=dict(img_size=64, embed_dim=48, num_heads=4, pool_num_heads=4,
                                                     depth=[1, 1, 1, 1], num_clusters=[16, 8, 4, 2])).eval()
    image = np.asarray(Image.open(folder / "coffee.png").convert("RGB"))
    prep = HierarchyPredictor(model, size=128).prepare(image)
    with torch.no_grad():
        logits = model(castvit.ops.normalize_images(prep.work_image), torch.from_numpy(prep.work_sp)[None])
        full = torch.nn.functional.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
    assert (full[0].argmax(0).numpy() == classes).mean() > 0.999

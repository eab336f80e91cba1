"""PartImageNet: COCO loader (polygons, RLE), per-image Jaccard, CLIP labelling,
the protocol end to end, and the command without the optional extra."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import castvit
from castvit.data.partimagenet import (
    AnnotationError, PartImageNet, counts_to_rle_string, decode_rle, encode_rle, rle_string_to_counts,
)
from castvit.data.synthetic import SceneConfig, generate_scene
from castvit.data.synthetic_layouts import write_partimagenet_layout
from castvit.eval.partimagenet import (
    HierarchyMasks, ImageFailed, center_view, evaluate_partimagenet, image_jaccard, label_image, paint_largest_first,
)

# The real PartImageNet vocabulary: 40 parts of 11 supercategories.
PARTS = {"Quadruped": ["Head", "Body", "Foot", "Tail"], "Biped": ["Head", "Body", "Hand", "Foot", "Tail"],
         "Fish": ["Head", "Body", "Fin", "Tail"], "Bird": ["Head", "Body", "Wing", "Foot", "Tail"],
         "Snake": ["Head", "Body"], "Reptile": ["Head", "Body", "Foot", "Tail"],
         "Car": ["Body", "Tier", "Side Mirror"], "Bicycle": ["Body", "Head", "Seat", "Tier"],
         "Boat": ["Body", "Sail"], "Aeroplane": ["Head", "Body", "Engine", "Wing", "Tail"],
         "Bottle": ["Mouth", "Body"]}
SCENE = dict(image_size=64, num_classes=3)


def _categories():
    cats = [{"id": i, "name": f"{s} {p}", "supercategory": s}
            for i, (s, p) in enumerate((s, p) for s, ps in PARTS.items() for p in ps)]
    return cats[::-1]  # listed out of order: indices follow the ids


# ------------------------------------------------------------------ independent painting


def _inside(poly, h, w):
    """Winding number of every pixel centre (a different rule from the loader's
    scanline even-odd; they agree on simple polygons)."""
    pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    wn = np.zeros((h, w), dtype=np.int64)
    for (x0, y0), (x1, y1) in zip(pts, np.roll(pts, -1, axis=0)):
        cross = (x1 - x0) * (yy - y0) - (xx - x0) * (y1 - y0)
        up = (y0 <= yy) & (y1 > yy) & (cross > 0)
        down = (y0 > yy) & (y1 <= yy) & (cross < 0)
        wn += up.astype(np.int64) - down.astype(np.int64)
    return wn != 0


def _rle_decode(rle):
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, str):  # COCO's string format, decoded one character at a time
        vals, i = [], 0
        while i < len(counts):
            x, shift = 0, 0
            while True:
                c = ord(counts[i]) - 48
                i += 1
                x += (c & 31) << shift
                shift += 5
                if not c & 32:
                    if c & 16:
                        x -= 1 << shift
                    break
            if len(vals) > 2:
                x += vals[-2]
            vals.append(x)
        counts = vals
    flat, v = [], 0
    for c in counts:
        flat += [v] * c
        v = 1 - v
    return np.array(flat, dtype=bool).reshape(w, h).T


def _paint(data, image_id, h, w):
    cats = sorted(data["categories"], key=lambda c: c["id"])
    supers = []
    for c in cats:
        if c["supercategory"] not in supers:
            supers.append(c["supercategory"])
    fine = np.full((h, w), len(cats))
    coarse = np.full((h, w), len(supers))
    for ann in data["annotations"]:
        if ann["image_id"] != image_id:
            continue
        seg = ann["segmentation"]
        if isinstance(seg, dict):
            m = _rle_decode(seg)
        else:
            m = np.zeros((h, w), dtype=bool)
            for poly in seg:
                m |= _inside(poly, h, w)
        cat = next(i for i, c in enumerate(cats) if c["id"] == ann["category_id"])
        fine[m] = cat
        coarse[m] = supers.index(cats[cat]["supercategory"])
    return fine, coarse


def _hand_dataset(root):
    from PIL import Image

    (root / "images" / "val" / "n01440764").mkdir(parents=True)
    (root / "images" / "val" / "n02085620").mkdir(parents=True)
    (root / "annotations" / "val").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = [{"id": 7, "file_name": "n01440764_1.JPEG", "height": 20, "width": 30},
              {"id": 3, "file_name": "n02085620_2.JPEG", "height": 25, "width": 18}]
    for im in images:
        Image.fromarray(rng.integers(0, 255, (im["height"], im["width"], 3), dtype=np.uint8)).save(
            root / "images" / "val" / im["file_name"].split("_")[0] / im["file_name"], format="JPEG")
    body = np.zeros((20, 30), dtype=bool)
    body[4:15, 6:22] = True
    body[8:12, 10:14] = False  # a hole
    tail = np.zeros((25, 18), dtype=bool)
    tail[3:9, 2:5] = tail[20:25, 10:18] = True
    anns = [
        {"id": 1, "image_id": 7, "category_id": 1, "segmentation": encode_rle(body, compressed=True)},
        # overlaps the body: later annotations win
        {"id": 2, "image_id": 7, "category_id": 0, "segmentation": [[3.3, 2.2, 17.7, 5.1, 9.4, 13.8]]},
        {"id": 3, "image_id": 7, "category_id": 39,
         "segmentation": [[20.2, 10.1, 28.6, 10.3, 28.9, 18.7, 20.4, 18.2], [0.2, 0.3, 4.6, 0.1, 2.1, 6.7]]},
        {"id": 4, "image_id": 3, "category_id": 12, "segmentation": encode_rle(tail, compressed=False)},
        {"id": 5, "image_id": 3, "category_id": 25, "segmentation": [[1.1, 1.2, 16.3, 2.4, 15.2, 22.9, 3.3, 18.6]]},
        {"id": 6, "image_id": 3, "category_id": 12, "segmentation": [[5.5, 5.1, 12.2, 7.7, 6.1, 11.3]]},
    ]
    data = {"images": images, "annotations": anns, "categories": _categories()}
    (root / "annotations" / "val" / "val.json").write_text(json.dumps(data))
    return data


def test_rle_decoding_hand_made():
    # h=2, w=3, column-major runs: 1 zero, 3 ones, 2 zeros
    assert decode_rle({"size": [2, 3], "counts": [1, 3, 2]}).tolist() == [[False, True, False], [True, True, False]]
    assert decode_rle({"size": [2, 3], "counts": "132"}).tolist() == [[False, True, False], [True, True, False]]
    assert rle_string_to_counts("032") == [0, 3, 2]
    rng = np.random.default_rng(1)
    for _ in range(20):
        m = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.random()
        for compressed in (True, False):
            rle = encode_rle(m, compressed=compressed)
            assert np.array_equal(decode_rle(rle), m)
            assert np.array_equal(_rle_decode(rle), m)
    counts = [0, 5, 130, 2, 7000, 1, 40, 40, 3]
    assert rle_string_to_counts(counts_to_rle_string(counts)) == counts
    with pytest.raises(AnnotationError, match="cover"):
        decode_rle({"size": [2, 3], "counts": [1, 2]})


def test_loader_reproduces_independent_painting(tmp_path):
    data = _hand_dataset(tmp_path)
    ds = PartImageNet(tmp_path, "val")
    assert ds.vocab.fine_background == 40 and ds.vocab.coarse_background == 11
    assert ds.vocab.supercategories[:3] == ("Quadruped", "Biped", "Fish")
    assert len(ds) == 2 and [im["id"] for im in ds.images] == [3, 7]
    for i in range(len(ds)):
        item = ds[i]
        im = ds.images[i]
        fine, coarse = _paint(data, im["id"], im["height"], im["width"])
        assert np.array_equal(item["fine"], fine)
        assert np.array_equal(item["coarse"], coarse)
        assert item["image"].shape == (im["height"], im["width"], 3)
        assert {40, 11} & (set(np.unique(item["fine"])) | set(np.unique(item["coarse"])))
    # overlap: the triangle (Quadruped Head, id 0) painted over the body (id 1)
    item = ds[1]
    assert (item["fine"] == 0).sum() > 0 and (item["fine"] == 1).sum() > 0
    # errors name the file and the annotation
    data["annotations"][0]["segmentation"] = {"size": [20, 30], "counts": [5]}
    (tmp_path / "annotations" / "val" / "val.json").write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=r"annotation id 1 .*n01440764_1\.JPEG"):
        PartImageNet(tmp_path, "val")[1]
    with pytest.raises(FileNotFoundError, match="annotations=PATH"):
        PartImageNet(tmp_path, "test")


def test_synthetic_layout_round_trips_scene_masks(tmp_path):
    write_partimagenet_layout(tmp_path, num_images=6, scene=SCENE)
    data = json.loads((tmp_path / "annotations" / "val" / "val.json").read_text())
    kinds = {("poly" if isinstance(a["segmentation"], list) else type(a["segmentation"]["counts"]).__name__)
             for a in data["annotations"]}
    assert kinds == {"poly", "str", "list"}
    ds = PartImageNet(tmp_path)
    for i in range(len(ds)):
        sc = generate_scene(i, SceneConfig(**SCENE), 0)
        item = ds[i]
        role = {1: 0, 3: 0, 2: 1, 4: 2}  # disc/triangle head, rectangle body, ellipse foot
        want = np.full(sc.part_mask.shape, 9)
        for pid in range(1, sc.part_mask.max() + 1):
            want[sc.part_mask == pid] = 3 * sc.label + role[int(sc.part_class[pid])]
        assert np.array_equal(item["fine"], want)
        assert np.array_equal(item["coarse"], np.where(want == 9, 3, want // 3))
        fine, _ = _paint(data, ds.images[i]["id"], 64, 64)
        assert np.array_equal(item["fine"], fine)


def test_image_jaccard_hand_made():
    t = np.array([[0, 0, 1], [1, 2, 2]])
    p = np.array([[0, 1, 1], [1, 2, 0]])
    # class 0: I=1, U=3; class 1: I=2, U=3; class 2: I=1, U=2; class 3 absent from both: left out
    assert image_jaccard(p, t, 4) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    # a class only predicted counts 0; a class only in the ground truth counts 0
    p2 = np.array([[3, 0, 1], [1, 2, 2]])
    assert image_jaccard(p2, t, 4) == pytest.approx((1 / 2 + 2 / 2 + 2 / 2 + 0) / 4)
    assert image_jaccard(t, t, 41) == 1.0
    with pytest.raises(ValueError, match="0..3"):
        image_jaccard(p + 5, t, 4)


def test_center_view_short_side_and_nearest():
    lab = np.arange(30 * 40).reshape(30, 40)
    v = center_view(lab, 15, nearest=True)
    assert v.shape == (15, 15)
    rows = (np.arange(15) * 30 / 15).astype(int)
    cols = (np.arange(20) * 40 / 20).astype(int)
    assert np.array_equal(v, lab[rows][:, cols][:, 2:17])  # (20-15)/2 = 2.5 -> round -> 2
    assert center_view(np.zeros((50, 30, 3), np.uint8), 24).shape == (24, 24, 3)


class FakeLabeller:
    """Names each mask by the ground truth under its first pixel (an oracle), recording calls."""

    def __init__(self, coarse_gt, fine_gt, vocab):
        self.coarse_gt, self.fine_gt, self.vocab = coarse_gt, fine_gt, vocab
        self.calls = []

    def label(self, image, masks, names):
        self.calls.append(list(names))
        out = []
        for m in masks:
            f = np.flatnonzero(m)[0]
            if names[-1] == "Background":
                out.append(int(self.coarse_gt.flat[f]))
            else:
                want = self.vocab.part_names[int(self.fine_gt.flat[f])] if self.fine_gt.flat[f] < 40 else names[0]
                out.append(names.index(want) if want in names else 0)
        return out


def test_label_image_rules(tmp_path):
    _hand_dataset(tmp_path)
    ds = PartImageNet(tmp_path)
    vocab = ds.vocab
    coarse_gt = np.full((4, 6), 11)
    coarse_gt[:, 3:] = 6  # Car on the right
    fine_gt = np.full((4, 6), 40)
    fine_gt[:, 3:] = 24  # Car Body (Car parts are 24, 25, 26)
    fine_gt[0, 5] = 26
    obj = [np.ones((4, 6), bool), np.zeros((4, 6), bool)]
    obj[1][:, 3:] = True  # smaller, painted after the whole-image mask
    part = [np.zeros((4, 6), bool) for _ in range(3)]
    part[0][:, :3] = True  # on background -> 40 without asking
    part[1][1:, 3:] = True
    part[2][0, 3:] = True  # first pixel (0, 3) is Car Body in the ground truth
    lab = FakeLabeller(coarse_gt, fine_gt, vocab)
    coarse, fine = label_image(np.zeros((4, 6, 3), np.uint8), obj, part, lab, vocab)
    assert np.array_equal(coarse, coarse_gt)
    want = np.full((4, 6), 40)
    want[:, 3:] = 24
    assert np.array_equal(fine, want)
    assert lab.calls[0][-1] == "Background" and len(lab.calls[0]) == 12
    assert lab.calls[1] == ["Car Body", "Car Tier", "Car Side Mirror"]
    assert len(lab.calls) == 2  # background part never sent to the labeller
    # largest first: a small mask listed first still wins over a big one
    m_small, m_big = np.zeros((3, 3), bool), np.ones((3, 3), bool)
    m_small[1, 1] = True
    out = paint_largest_first([m_small, m_big], [5, 2], (3, 3), 9)
    assert out[1, 1] == 5 and (out == 2).sum() == 8


def _tiny_cast(tmp_path):
    torch.manual_seed(0)
    m = castvit.create_model("cast_small", img_size=64, embed_dim=48, depth=[1, 1, 1, 1], num_heads=4,
                             num_clusters=[16, 8, 4, 2], num_classes=0)
    castvit.models._builder.save_pretrained(m, tmp_path / "tiny.safetensors")
    return m


class ConstantLabeller:
    def label(self, image, masks, names):
        return [0] * len(masks)


def test_protocol_end_to_end_and_skip_errors(tmp_path):
    root = tmp_path / "pin"
    write_partimagenet_layout(root, num_images=3, scene=SCENE)
    ds = PartImageNet(root)
    masks = HierarchyMasks(_tiny_cast(tmp_path), n_segments=100)
    res = evaluate_partimagenet(ds, masks, ConstantLabeller(), size=64)
    assert res["count"] == 3 and not res["failed"]
    # with every object named "Totem" (0) and every part its first part, check each image by hand
    for i, rec in enumerate(res["per_image"]):
        item = ds[i]
        got = masks(item["image"], item)
        assert len(got["object"]) <= 2 and len(got["part"]) <= 4
        coarse = np.zeros((64, 64), np.int64)  # every object mask -> class 0, they cover the image
        assert rec["object"] == pytest.approx(image_jaccard(coarse, item["coarse"], 4))
        assert rec["part"] == pytest.approx(image_jaccard(np.zeros((64, 64), np.int64), item["fine"], 10))
    assert res["object_miou"] == pytest.approx(np.mean([r["object"] for r in res["per_image"]]))
    # a broken image stops the run with its name, unless skipped (then counted and listed)
    bad = ds.image_path(1)
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ImageFailed, match=bad.name):
        evaluate_partimagenet(ds, masks, ConstantLabeller(), size=64)
    res = evaluate_partimagenet(ds, masks, ConstantLabeller(), size=64, skip_errors=True)
    assert res["count"] == 2 and res["num_images"] == 3
    assert len(res["failed"]) == 1 and res["failed"][0]["path"] == str(bad)


# ------------------------------------------------------------------ CLIP (optional extra)


def _tiny_clip(folder):
    transformers = pytest.importorskip("transformers")
    chars = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 26 + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": 52, "<|endoftext|>": 53})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=40, bos_token_id=52, eos_token_id=53,
                         pad_token_id=53),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8), projection_dim=8)
    torch.manual_seed(0)
    model = transformers.CLIPModel(cfg)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def test_clip_labeller_tiny_random(tmp_path):
    from castvit.eval.partimagenet import CLIP_MEAN, CLIP_STD, CLIPLabeller, _features

    folder = _tiny_clip(tmp_path / "clip")
    lab = CLIPLabeller.from_pretrained(folder)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    masks = [np.zeros((48, 64), bool) for _ in range(3)]
    masks[0][:20] = True
    masks[1][10:40, 20:50] = True
    masks[2][:, :] = True
    x = lab.preprocess(image, masks)
    assert x.shape == (3, 3, 32, 32)
    # outside each mask exactly 0.5; inside the normalised resized crop
    full = lab.preprocess(image, [masks[2]])[0]
    small = torch.nn.functional.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
                                            size=(32, 43), mode="bicubic", align_corners=False,
                                            antialias=True).clamp(0, 1)[0, :, :, 5:37]
    ref = (small - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    assert torch.allclose(full, ref, atol=1e-5)
    m0 = torch.nn.functional.interpolate(torch.from_numpy(masks[0]).float()[None, None], size=(32, 43),
                                         mode="nearest")[0, 0, :, 5:37] > 0.5
    assert torch.all(x[0][:, ~m0] == 0.5) and torch.equal(x[0][:, m0], ref[:, m0])
    names = ["Quadruped", "Fish", "Background"]
    got = lab.label(image, masks, names)
    with torch.no_grad():
        enc = lab.tokenizer([f"a photo of a {n}" for n in names], padding=True, return_tensors="pt")
        t = torch.nn.functional.normalize(_features(lab.model.get_text_features(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])), dim=-1)
        v = torch.nn.functional.normalize(_features(lab.model.get_image_features(pixel_values=x)), dim=-1)
    assert got == (v @ t.T).argmax(1).tolist()


def test_partimagenet_command_end_to_end(tmp_path, capsys):
    from castvit.cli import main

    clip = _tiny_clip(tmp_path / "clip")
    root = tmp_path / "pin"
    write_partimagenet_layout(root, num_images=2, scene=SCENE)
    _tiny_cast(tmp_path)
    out = tmp_path / "out"
    code = main(["eval", "partimagenet", "--root", str(root), "--checkpoint", str(tmp_path / "tiny.safetensors"),
                 "--clip", str(clip), "--superpixels", "100", "--out", str(out), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "object" in text and "part" in text
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["images"] == 2 and rec["size"] == 64 and rec["failed"] == []
    assert rec["object_miou"] == pytest.approx(np.mean([r["object"] for r in rec["per_image"]]))


def test_command_without_transformers_says_what_to_install(tmp_path, monkeypatch, capsys):
    from castvit.cli import main

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    root = tmp_path / "pin"
    write_partimagenet_layout(root, num_images=1, scene=SCENE)
    assert main(["eval", "partimagenet", "--root", str(root), "--model", "cast_small", "--no-progress",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "transformers" in err and "pip install 'castvit[clip]'" in err
    # the rest of castvit imports and works without it: fresh copies of the modules load
    import importlib.util

    mods = {}
    for name in ("castvit.eval.partimagenet", "castvit.eval.retrieval", "castvit.cli.eval_partimagenet",
                 "castvit.data.partimagenet", "castvit.data.synthetic_layouts"):
        spec = importlib.util.spec_from_file_location(f"_copy_{name}", importlib.util.find_spec(name).origin)
        mods[name] = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, mods[name])
        spec.loader.exec_module(mods[name])
    pin = mods["castvit.eval.partimagenet"]
    with pytest.raises(ImportError, match=r"castvit\[clip\]"):
        pin.CLIPLabeller.from_pretrained(tmp_path)
    assert pin.image_jaccard(np.zeros((2, 2), int), np.zeros((2, 2), int), 3) == 1.0
    assert castvit.create_model("cast_small", **dict(img_size=64, embed_dim=48, depth=[1, 1, 1, 1], num_heads=4,
                                                      num_clusters=[16, 8, 4, 2])) is not None


def test_mask_folder_sam_style_with_oracle_labeller(tmp_path):
    """Precomputed masks (the SAM interface) named by an oracle give Jaccard 1; a wrong
    mask size or a missing file is an error naming the file."""
    from castvit.eval.partimagenet import MaskFolder

    root = tmp_path / "pin"
    write_partimagenet_layout(root, num_images=2, scene=SCENE)
    ds = PartImageNet(root)
    masks_dir = tmp_path / "masks"
    masks_dir.mkdir()
    for i in range(len(ds)):
        item = ds[i]
        obj = np.stack([item["coarse"] != 3, np.ones((64, 64), bool)])  # object, and the whole image
        parts = np.stack([item["fine"] == f for f in np.unique(item["fine"]) if f != 9])
        stem = ds.image_path(i).stem
        np.savez(masks_dir / f"{stem}.npz", object=obj, part=parts)

    class Oracle:
        def __init__(self):
            self.item = None

        def label(self, image, masks, names):
            out = []
            for m in masks:
                if names[-1] == "Background":
                    # the whole-image mask is painted first (largest) and named background
                    out.append(len(names) - 1 if m.all() else int(self.item["coarse"][m][0]))
                else:
                    want = ds.vocab.part_names[int(self.item["fine"][m][0])]
                    out.append(names.index(want))
            return out

    oracle = Oracle()
    folder = MaskFolder(masks_dir)

    def source(view, item):
        oracle.item = item
        return folder(view, item)

    res = evaluate_partimagenet(ds, source, oracle, size=64)
    assert res["count"] == 2 and res["object_miou"] == 1.0 and res["part_miou"] == 1.0
    np.savez(masks_dir / f"{ds.image_path(0).stem}.npz", masks=np.ones((1, 32, 32), bool))
    with pytest.raises(ImageFailed, match="does not match"):
        evaluate_partimagenet(ds, source, oracle, size=64)
    (masks_dir / f"{ds.image_path(0).stem}.npz").unlink()
    with pytest.raises(ImageFailed, match="no masks"):
        evaluate_partimagenet(ds, source, oracle, size=64)

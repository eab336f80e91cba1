"""``castvit segment`` on bad input: every case gives a clear message, the other
images are still processed, and the exit code says whether anything failed.

Policy under test (castvit.viz.images): grayscale, 1-bit, RGBA, palette, 16-bit,
float, CMYK and animated images are converted with a note; unreadable, empty,
truncated, too-small and decompression-bomb images are refused with a message;
huge images are downscaled to --max-side; a checkpoint that does not fit stops
the run with exit code 2 before any image.
"""

import contextlib
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import castvit
from castvit.cli import main
from castvit.viz.export import read_label_png
from castvit.viz.images import ImageReadError, read_image

FAST_OVERRIDES = dict(embed_dim=48, num_heads=4, pool_num_heads=4, depth=[1, 1, 1, 1])
FAST = [a for k, v in FAST_OVERRIDES.items() for a in ("--model-arg", f"{k}={v}".replace(" ", ""))]


def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["segment", *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


def photo(h: int = 96, w: int = 128) -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[40:40 + 3 * h:3, 100:100 + 3 * w:3])


def png_with_declared_size(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width×height`` (only the header is valid)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)))


def make_inputs(folder: Path) -> dict[str, Path]:
    rgb = photo()
    files = {}

    def save(name, im, **kw):
        files[Path(name).stem] = folder / name
        im.save(folder / name, **kw)

    save("good.png", Image.fromarray(rgb))
    save("gray.png", Image.fromarray(rgb).convert("L"))
    save("bilevel.png", Image.fromarray(rgb).convert("1"))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:, :40, 3] = 0  # a transparent band on the left
    save("rgba.png", Image.fromarray(rgba, "RGBA"))
    gray16 = (rgb[..., 0].astype(np.uint16) * 257)
    gray16[0, 0] = 65535
    save("gray16.png", Image.fromarray(gray16))
    save("float.tif", Image.fromarray(rgb[..., 1].astype(np.float32) / 7.0))
    save("palette.png", Image.fromarray(rgb).quantize(64))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=95)
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    files["animated"] = folder / "animated.gif"
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90° clockwise
    save("rotated.jpg", Image.fromarray(rgb), exif=exif, quality=95)
    save("tiny.png", Image.fromarray(rgb[:40, :40]))
    save("panorama.png", Image.fromarray(np.ascontiguousarray(np.tile(rgb[:24], (1, 12, 1)))))  # 24×1536
    files["notimage"] = folder / "notimage.jpg"
    files["notimage"].write_text("this is not a picture\n")
    files["empty"] = folder / "empty.png"
    files["empty"].write_bytes(b"")
    Image.fromarray(rgb).save(folder / "full.jpg", quality=95)
    files["truncated_jpg"] = folder / "truncated_jpg.jpg"
    files["truncated_jpg"].write_bytes((folder / "full.jpg").read_bytes()[:1500])
    (folder / "full.jpg").unlink()
    Image.fromarray(rgb).save(folder / "full.png")
    files["truncated_png"] = folder / "truncated_png.png"
    files["truncated_png"].write_bytes((folder / "full.png").read_bytes()[:5000])
    (folder / "full.png").unlink()
    files["bomb"] = folder / "bomb.png"
    png_with_declared_size(files["bomb"], 20000, 10000)
    return files


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    files = make_inputs(folder)
    out = tmp_path_factory.mktemp("bad-out")
    code, stdout, stderr = run_cli(folder, folder / "missing.png", "--out", out, "--outputs", "all", *FAST)
    index = json.loads((out / "index.json").read_text())
    status = {Path(i["source"]).stem: i for i in index["images"]}
    return {"code": code, "stdout": stdout, "stderr": stderr, "out": out, "files": files, "status": status}


def failed_with(batch, stem: str, *fragments: str) -> str:
    entry = batch["status"][stem]
    assert entry["status"] == "failed", entry
    for frag in fragments:
        assert frag in entry["error"], entry["error"]
        assert frag in batch["stderr"]
    assert not (batch["out"] / stem).exists()
    return entry["error"]


def converted_with(batch, stem: str, note: str) -> dict:
    entry = batch["status"][stem]
    assert entry["status"] == "ok", entry
    assert any(note in n for n in entry["notes"]), entry["notes"]
    assert note in batch["stdout"]
    doc = json.loads((batch["out"] / entry["name"] / "hierarchy.json").read_text())
    assert any(note in n for n in doc["notes"])
    return doc


# ------------------------------------------------------------------ one run, many cases
def test_other_images_are_still_processed_and_the_exit_code_is_1(batch):
    assert batch["code"] == 1
    assert batch["status"]["good"]["status"] == "ok"
    assert (batch["out"] / "good" / "level4_labels.png").is_file()
    ok = sum(e["status"] == "ok" for e in batch["status"].values())
    failed = sum(e["status"] == "failed" for e in batch["status"].values())
    assert failed >= 5 and ok >= 10
    summary = [line for line in batch["stderr"].splitlines() if "image(s) segmented" in line]
    assert summary == [f"castvit segment: {ok} image(s) segmented, {failed} failed"]


def test_a_file_that_is_not_an_image_is_reported(batch):
    failed_with(batch, "notimage", "cannot read image", "not an image file")


def test_an_empty_file_is_reported(batch):
    failed_with(batch, "empty", "cannot read image: empty file (0 bytes)")


def test_a_truncated_jpeg_is_refused(batch):
    failed_with(batch, "truncated_jpg", "truncated or corrupt")


def test_a_truncated_png_is_refused(batch):
    failed_with(batch, "truncated_png", "truncated or corrupt")


def test_a_missing_path_is_reported(batch):
    assert "missing.png: no such file or folder" in batch["stderr"]
    assert batch["status"]["missing"]["status"] == "failed"


def test_an_image_too_small_for_the_model_names_the_minimum(batch):
    failed_with(batch, "tiny", "40×40", "at least 4096 pixels (e.g. 64×64)")


def test_a_decompression_bomb_is_refused(batch):
    failed_with(batch, "bomb", "decompression bomb", "downscale it first")


def test_grayscale_is_converted_to_rgb_with_a_note(batch):
    converted_with(batch, "gray", "grayscale: channels replicated to RGB")


def test_a_one_bit_image_is_converted_with_a_note(batch):
    converted_with(batch, "bilevel", "1-bit: converted to RGB")


def test_rgba_is_composited_on_white_with_a_note(batch):
    converted_with(batch, "rgba", "alpha channel: composited on white")
    image = castvit.Hierarchy.load_npz(batch["out"] / "rgba" / "hierarchy.npz").image
    assert (image[:, :40] == 255).all()


def test_sixteen_bit_grayscale_is_scaled_with_a_note(batch):
    converted_with(batch, "gray16", "16-bit grayscale: scaled to 8 bits")
    image = castvit.Hierarchy.load_npz(batch["out"] / "gray16" / "hierarchy.npz").image
    src = photo()[..., 0]
    assert image[0, 0, 0] == 255
    assert np.array_equal(image[1:, 1:, 0], src[1:, 1:]) and np.array_equal(image[..., 0], image[..., 2])


def test_a_float_image_is_stretched_with_a_note(batch):
    converted_with(batch, "float", "floating-point grayscale: stretched")


def test_a_palette_image_is_expanded_with_a_note(batch):
    converted_with(batch, "palette", "palette image: expanded to RGB")


def test_cmyk_is_converted_with_a_note(batch):
    converted_with(batch, "cmyk", "CMYK: converted to RGB")


def test_an_animated_gif_uses_its_first_frame(batch):
    converted_with(batch, "animated", "2 frames/pages: using the first")


def test_exif_orientation_is_applied(batch):
    doc = converted_with(batch, "rotated", "EXIF orientation 6 applied")
    h, w = photo().shape[:2]
    assert doc["size"] == [w, h] == doc["original_size"]
    assert read_label_png(batch["out"] / "rotated" / "level1_labels.png").shape == (w, h)


def test_an_extreme_aspect_ratio_is_segmented_at_full_size(batch):
    entry = batch["status"]["panorama"]
    assert entry["status"] == "ok", entry
    assert read_label_png(batch["out"] / "panorama" / "level4_labels.png").shape == (24, 1536)


# ------------------------------------------------------------------ separate runs
def test_a_huge_image_is_downscaled_to_max_side(tmp_path):
    big = np.ascontiguousarray(data.astronaut()[:, :480])  # 512×480
    Image.fromarray(big).save(tmp_path / "big.png")
    code, stdout, err = run_cli(tmp_path / "big.png", "--out", tmp_path / "out", "--max-side", "256",
                                "--no-viewer", *FAST)
    assert code == 0, err
    assert "downscaled from 480×512 to 240×256 (--max-side 256)" in stdout
    doc = json.loads((tmp_path / "out" / "big" / "hierarchy.json").read_text())
    assert doc["original_size"] == [512, 480] and doc["size"] == [256, 240]
    assert read_label_png(tmp_path / "out" / "big" / "level0_labels.png").shape == (256, 240)


def test_read_image_decodes_huge_jpegs_at_reduced_scale(tmp_path):
    big = np.ascontiguousarray(np.tile(data.astronaut(), (4, 4, 1)))  # 2048×2048
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=90)
    img = read_image(tmp_path / "big.jpg", max_side=300)
    assert img.original_size == (2048, 2048) and img.size == (300, 300)


def good_image(tmp_path: Path) -> Path:
    Image.fromarray(photo()).save(tmp_path / "good.png")
    return tmp_path / "good.png"


def test_a_checkpoint_that_does_not_fit_stops_with_a_clear_message(tmp_path):
    small = castvit.create_model("cast_small", **FAST_OVERRIDES)
    torch.save({"model": small.state_dict()}, tmp_path / "small.pth")
    code, _, err = run_cli(good_image(tmp_path), "--out", tmp_path / "out", "--checkpoint", tmp_path / "small.pth")
    assert code == 2
    assert "does not fit model 'cast_small'" in err
    assert "mis-shaped" in err and "checkpoint (48,) vs model (384,)" in err
    assert not (tmp_path / "out" / "good").exists()


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    code, _, err = run_cli(good_image(tmp_path), "--out", tmp_path / "out", "--checkpoint", tmp_path / "nope.pth")
    assert code == 2 and "nope.pth' does not exist" in err


def test_a_castvit_checkpoint_brings_its_model_and_silences_the_warning(tmp_path):
    model = castvit.create_model("cast_small", **FAST_OVERRIDES)
    castvit.save_pretrained(model, tmp_path / "w.safetensors")
    code, _, err = run_cli(good_image(tmp_path), "--out", tmp_path / "out", "--checkpoint", tmp_path / "w.safetensors")
    assert code == 0, err
    assert "RANDOM" not in err
    doc = json.loads((tmp_path / "out" / "good" / "hierarchy.json").read_text())
    assert doc["model"]["random_weights"] is False
    assert doc["model"]["checkpoint"] == str((tmp_path / "w.safetensors").resolve())


def test_a_castvit_checkpoint_of_another_model_is_refused(tmp_path):
    model = castvit.create_model("cast_small", **FAST_OVERRIDES)
    castvit.save_pretrained(model, tmp_path / "w.safetensors")
    code, _, err = run_cli(good_image(tmp_path), "--out", tmp_path / "out", "--checkpoint",
                           tmp_path / "w.safetensors", "--model", "cast_base")
    assert code == 2 and "holds a 'cast_small' model, not 'cast_base'" in err


def test_a_model_without_a_hierarchy_is_refused(tmp_path):
    code, _, err = run_cli(good_image(tmp_path), "--out", tmp_path / "out", "--model", "vit_conv_small_patch16")
    assert code == 2 and "has no segmentation hierarchy" in err


def test_an_unknown_model_suggests_names(tmp_path):
    code, _, err = run_cli(good_image(tmp_path), "--out", tmp_path / "out", "--model", "cast_smal")
    assert code == 2 and "did you mean cast_small" in err


def test_a_bad_model_arg_is_reported(tmp_path):
    code, _, err = run_cli(good_image(tmp_path), "--out", tmp_path / "out", "--model-arg", "embed_dim")
    assert code == 2 and "KEY=VALUE" in err


def test_no_images_exits_2(tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(tmp_path / "empty", "--out", tmp_path / "out")
    assert code == 2
    assert "folder holds no images" in err and "no images to segment" in err


def test_read_image_raises_image_read_error_for_a_folder(tmp_path):
    with pytest.raises(ImageReadError, match="not a file"):
        read_image(tmp_path)


def test_a_48_bit_png_is_reduced_with_a_note(tmp_path):
    import cv2

    from castvit.viz.images import read_image

    deep = (np.random.default_rng(0).random((70, 90, 3)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)  # BGR order on disk
    loaded = read_image(tmp_path / "deep.png")
    assert loaded.rgb.dtype == np.uint8
    assert any("48-bit RGB" in n for n in loaded.notes)
    assert np.abs(loaded.rgb.astype(int) - (deep[..., ::-1] >> 8)).max() <= 1


@pytest.mark.parametrize("name,content", [("w.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage"),
                                          ("w.pth", b"PK\x03\x04 not really a zip")])
def test_a_corrupt_checkpoint_is_one_line_with_exit_code_2(tmp_path, name, content):
    from PIL import Image

    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(tmp_path / "x.png")
    (tmp_path / name).write_bytes(content)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["segment", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), "--checkpoint",
                     str(tmp_path / name)])
    assert code == 2
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert len(lines) == 1 and name in lines[0] and "Traceback" not in err.getvalue()
    assert "weights_only" not in lines[0]


def test_a_model_error_fails_its_batch_loudly_and_is_not_rerun_image_by_image(tmp_path, monkeypatch):
    from castvit.inference import HierarchyPredictor

    for i in range(3):
        Image.fromarray(np.full((80, 80, 3), 40 * i, np.uint8)).save(tmp_path / f"img{i}.png")
    calls = []

    def broken(self, items):
        calls.append(len(items))
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(HierarchyPredictor, "run_prepared", broken)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["segment", *(str(tmp_path / f"img{i}.png") for i in range(3)), "--out", str(tmp_path / "o"),
                     "--batch-size", "4", "--no-viewer", *FAST])
    assert code == 1
    assert calls == [3], "the batch is not retried image by image"
    index = json.loads((tmp_path / "o" / "index.json").read_text())
    assert [r["status"] for r in index["images"]] == ["failed"] * 3
    assert all("out of memory (simulated)" in r["error"] for r in index["images"])
    assert "0 image(s) segmented, 3 failed" in err.getvalue()

"""Train → segment round trip from the command line: a checkpoint written by
``castvit train`` segments images with ``castvit segment --checkpoint`` and no model
arguments, with the architecture and superpixel settings it was trained with."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
from PIL import Image

from castvit.checkpoint import read_checkpoint
from castvit.cli import main
from castvit.viz.export import read_label_png


def test_castvit_train_then_segment_with_its_checkpoint_and_no_model_arguments(tmp_path):
    run = tmp_path / "run"
    overrides = ["model.name=cast_small", "model.kwargs={img_size: 64, embed_dim: 48, depth: [1,1,1,1], num_heads: 4, "
                 "pool_num_heads: 4, num_clusters: [16,8,4,2]}", "data.train_size=16", "data.val_size=8",
                 "data.image_size=64", "train.epochs=1", "train.batch_size=8", "train.num_workers=0",
                 f"output_dir={run}", "--no-progress"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["train", "configs/supervised_synthetic_cpu.yaml", *overrides]) == 0
    record = read_checkpoint(run / "last.pth.tar")["castvit_model"]
    trained_sp = record["pretrained_cfg"]["superpixels"]

    photo = np.asarray(Image.open(io.BytesIO(_png())))
    Image.fromarray(photo).save(tmp_path / "photo.png")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["segment", str(tmp_path / "photo.png"), "--out", str(tmp_path / "segs"), "--checkpoint",
                     str(run / "last.pth.tar"), "--no-viewer"])
    assert code == 0, err.getvalue()
    assert "RANDOM WEIGHTS" not in err.getvalue()
    doc = json.loads((tmp_path / "segs" / "photo" / "hierarchy.json").read_text())
    assert doc["model"]["name"] == "cast_small"
    h, w = doc["hierarchy"]["working_size"]  # about the trained input area (64²), not 224²
    assert h % 8 == 0 and w % 8 == 0 and abs(h * w - 64 * 64) < 0.15 * 64 * 64
    # the trained count, scaled by area to the working size
    assert doc["superpixels"]["n_segments"] == round(trained_sp["n_segments"] * h * w / (64 * 64))
    maps = [read_label_png(tmp_path / "segs" / "photo" / f"level{s}_labels.png") for s in range(5)]
    for fine, coarse in zip(maps, maps[1:]):  # strictly nested: each fine segment in one coarse segment
        pairs = np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1)
        assert np.unique(pairs[0]).size == pairs.shape[1]


def _png() -> bytes:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(data.coffee()[::3, ::3])).save(buf, format="PNG")
    return buf.getvalue()

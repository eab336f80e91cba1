"""Documented behaviours that hand mutation testing found unpinned (issue 16): each test
here fails on the mutant named in its docstring (``tools/mutants/``; rerun them with
``python tools/mutate.py``). Expected values are written out, never computed by the
function under test."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import castvit
from conftest import TINY, close, load_fixture

try:  # sample_labels moves from castvit.hierarchy to castvit.inference
    from castvit.inference import sample_labels
except ImportError:  # pragma: no cover - older layout
    from castvit.hierarchy import sample_labels

TESTS = Path(__file__).resolve().parent


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ hierarchy


def test_a_superpixel_without_a_token_joins_the_token_holding_most_of_its_pixels_ties_to_the_lowest_id():
    """Mutants: vanished_fewest (joins the smallest share), vanished_tie_highest."""
    from castvit.hierarchy import Hierarchy

    # 16×24 working image = 2×3 cells of 8×8; cell k's top-left pixel (what the model
    # reads) is superpixel k, so ids 0..5 own a token each. Ids 6 and 7 own none.
    sp = np.zeros((16, 24), dtype=np.int64)
    for k in range(6):
        r, c = divmod(k, 3)
        sp[8 * r:8 * r + 8, 8 * c:8 * c + 8] = k
    sp[1, 1:6] = 6     # 5 pixels of id 6 in cell 0 ...
    sp[2, 9:16] = 6    # ... 7 in cell 1 ...
    sp[3, 17:20] = 6   # ... and 3 in cell 2: it joins cell 1's token
    sp[9, 1:7] = 7     # 6 pixels of id 7 in cell 3 and
    sp[10, 17:23] = 7  # 6 in cell 5: a tie, to the lower token id, 3
    n_tokens = 8
    logit1 = torch.eye(n_tokens)[None] * 5.0  # token i → level-1 segment i, so parents name owners
    hier = Hierarchy.from_outputs({"logit1": logit1}, torch.from_numpy(sp)[None], vanished="inherit")[0]
    assert hier.parents[0][6] == 1
    assert hier.parents[0][7] == 3
    assert hier.parents[0][:6].tolist() == [0, 1, 2, 3, 4, 5]


def test_sample_labels_reads_pixel_centres_not_top_left_corners():
    """Mutants: sample_rows_corner, sample_cols_corner."""
    labels = np.arange(16).reshape(4, 4)
    # centres of a 2×2 grid over 4×4 pixels: rows/cols ⌊(i + ½)·4/2⌋ = 1, 3
    assert sample_labels(labels, 2, 2).tolist() == [[5, 7], [13, 15]]
    labels = np.arange(35).reshape(5, 7)
    # rows ⌊(i + ½)·5/2⌋ = 1, 3; cols ⌊(j + ½)·7/3⌋ = 1, 3, 5
    assert sample_labels(labels, 2, 3).tolist() == [[8, 10, 12], [22, 24, 26]]


# ------------------------------------------------------------------ metrics


def test_majority_label_miou_gives_ties_to_the_smaller_class_id():
    """Mutant: majority_tie_larger."""
    from castvit.eval.metrics import majority_label_miou

    pred = np.zeros((2, 4), dtype=np.int64)  # one segment
    gt = np.array([[7, 7, 3, 3], [7, 7, 3, 3]])  # 4 pixels of class 7, 4 of class 3: a tie
    out = majority_label_miou(pred, gt)
    # the segment takes class 3: IoU(3) = 4 / 8, IoU(7) = 0 / 4
    assert out["per_class_iou"] == {3: 0.5, 7: 0.0}
    assert out["miou"] == pytest.approx(0.25)


def test_ois_picks_each_images_level_with_the_best_f_not_the_best_precision():
    """Mutant: ois_by_precision."""
    from castvit.eval.metrics import ods_ois

    def counts(mp, np_, mg, ng):
        return {"matched_pred": mp, "num_pred": np_, "matched_gt": mg, "num_gt": ng}

    image = [counts(9, 10, 1, 10),   # P 0.9, R 0.1, F 0.18
             counts(6, 10, 6, 10)]   # P 0.6, R 0.6, F 0.6
    out = ods_ois([image, image])
    assert out["ois_levels"] == [1, 1]
    assert out["ois_f"] == pytest.approx(0.6)
    assert out["ods_level"] == 1


# ------------------------------------------------------------------ training


def test_the_knn_monitor_weights_votes_by_exp_of_similarity_over_temperature():
    """Mutant: knn_linear_votes."""
    from castvit.train.knn import knn_accuracy, knn_predict

    query = torch.tensor([[1.0, 0.0, 0.0]])
    train = torch.tensor([[0.9, math.sqrt(1 - 0.81), 0.0],   # class 0, cosine 0.9
                          [0.5, math.sqrt(0.75), 0.0],        # class 1, cosine 0.5
                          [0.5, 0.0, math.sqrt(0.75)]])       # class 1, cosine 0.5
    labels = torch.tensor([0, 1, 1])
    scores = knn_predict(train, labels, query, k=3, temperature=0.07, num_classes=2)
    assert float(scores[0, 0]) == pytest.approx(math.exp(0.9 / 0.07), rel=1e-4)
    assert float(scores[0, 1]) == pytest.approx(2 * math.exp(0.5 / 0.07), rel=1e-4)
    # linear votes would give class 1 (0.5 + 0.5 > 0.9); exp(sim/T) gives class 0
    assert knn_accuracy(train, labels, query, torch.tensor([0]), k=3, temperature=0.07) == 1.0


def _draws() -> tuple:
    return random.random(), float(np.random.random_sample()), float(torch.rand(()))


def test_rng_state_round_trips_python_numpy_and_torch_through_a_safe_load(tmp_path):
    """Mutants: rng_python_not_restored, rng_numpy_not_restored, rng_torch_not_restored."""
    from castvit.train.engine import rng_state, set_rng_state

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = _draws()
    random.seed(10)
    np.random.seed(20)
    torch.manual_seed(30)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = _draws()
    assert got[0] == expected[0], "python's random"
    assert got[1] == expected[1], "numpy"
    assert got[2] == expected[2], "torch"


def test_a_resumed_rank_restores_its_own_generator_states(tmp_path, monkeypatch):
    """Mutant: rng_rank_zero (every rank takes rank 0's states)."""
    from castvit.train import engine

    states = []
    for seed in (100, 101):  # rank 0, rank 1
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        states.append(engine.rng_state())
    rank1 = _draws()  # the generators hold rank 1's states now
    torch.manual_seed(0)
    ckpt = {"castvit": {"format": engine.CHECKPOINT_FORMAT, "epoch": 1, "step": 0, "global_step": 4, "best": None,
                        "history": [], "rng": states, "meters": {}}}
    torch.save(ckpt, tmp_path / "last.pth.tar")

    class Stub(engine.Recipe):
        def load_container(self, ckpt):
            return None

    class Loader:
        batch_size = 2

    monkeypatch.setattr(engine.D, "get_rank", lambda: 1)
    monkeypatch.setattr(engine.D, "get_world_size", lambda: 2)
    loop = engine._Loop(Stub(), Loader(), engine.LoopConfig(), None, False, {})
    loop.restore(tmp_path / "last.pth.tar")
    assert _draws() == rank1


@pytest.mark.filterwarnings("ignore:the moco checkpoint's head")
def test_moco_container_parity_with_a_momentum_encoder_unlike_the_base_encoder(tmp_path):
    """Mutant: moco_loads_momentum_encoder (the loader takes module.momentum_encoder.*)."""
    fx = load_fixture("cast_small_cls_tiny.pt")
    enc = {k: v for k, v in fx["state_dict"].items() if not k.startswith("head.")}
    gen = torch.Generator().manual_seed(0)
    momentum = {k: (v + 0.5 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v)
                for k, v in enc.items()}
    container = {"epoch": 100, "arch": "cast_small", "optimizer": {"state": {}, "param_groups": []},
                 "scaler": {"scale": 1024.0},
                 "state_dict": {**{f"module.base_encoder.{k}": v for k, v in enc.items()},
                                "module.base_encoder.head.0.weight": torch.randn(64, 48, generator=gen),
                                **{f"module.momentum_encoder.{k}": v for k, v in momentum.items()},
                                "module.momentum_encoder.head.0.weight": torch.randn(64, 48, generator=gen),
                                "module.predictor.0.weight": torch.randn(64, 16, generator=gen)}}
    torch.save(container, tmp_path / "moco.pth")
    model = castvit.create_model("cast_small", mask_padded_tokens=False, **TINY).eval()
    assert castvit.load_checkpoint(model, tmp_path / "moco.pth").container == "moco"
    with torch.no_grad():
        feats = model.forward_features(fx["inputs"]["image"], fx["inputs"]["superpixel"])
    for key in ("out4", "logit1", "logit4"):
        close(feats[key], fx["outputs"]["intermediates"][key])


def test_the_moco_tests_read_the_fixtures_named_by_castvit_fixtures(tmp_path):
    """Mutant: moco_test_hardcoded_fixtures (``../shared/fixtures/official`` again)."""
    shapes = {"cast_models.cast.cast_small": {"cls_token": [1, 1, 12345]}}  # a shape no model has
    (tmp_path / "official_state_dict_shapes.json").write_text(json.dumps(shapes))
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import test_train_moco as t
        try:
            t.test_base_encoder_keys_match_the_official_cast_small_keys()
        except AssertionError:
            print("READ THE FILE CASTVIT_FIXTURES NAMES")
    """)
    env = {**os.environ, "CASTVIT_FIXTURES": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "READ THE FILE CASTVIT_FIXTURES NAMES" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]

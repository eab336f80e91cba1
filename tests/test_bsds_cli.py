"""``castvit eval bsds``: inputs, JSON keys, the table, errors that name the file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from castvit.cli import main

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "bsds500"
BENCH = DATA / "bench"
IDS = ["2018", "3063", "5096", "6046", "8068"]

pytestmark = pytest.mark.skipif(not BENCH.is_dir(), reason=f"BSDS500 data not found at {DATA}")


def run_cli(*args: str) -> int:
    return main(["eval", "bsds", "--quiet", *args])


def test_segs_input_writes_the_issue_json_keys_and_a_table(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert run_cli("--root", str(BENCH), "--segs", str(BENCH / "segs"), "--out", str(out), "--workers", "2") == 0
    r = json.loads(out.read_text())
    assert set(r["boundary"]["ods"]) == {"threshold", "recall", "precision", "f"}
    assert set(r["boundary"]["ois"]) == {"recall", "precision", "f"}
    assert 0 < r["boundary"]["ap"] < 1
    assert {"ods", "ois", "best"} <= set(r["covering"])
    assert {"ods", "ois"} <= set(r["pri"]) and {"ods", "ois"} <= set(r["vi"])
    assert sorted(r["images"]) == IDS
    img = r["images"]["2018"]
    assert len(img["boundary"]["f"]) == len(img["covering"]["values"]) == len(img["pri"]) == 5
    assert r["boundary"]["ods"]["f"] == pytest.approx(0.704614, abs=0.005)  # MATLAB test_4
    table = capsys.readouterr().out
    assert "boundary F" in table and "covering" in table and "VI (bits)" in table


def test_boundary_maps_give_boundary_figures_only(tmp_path):
    out = tmp_path / "r.json"
    assert run_cli("--root", str(BENCH), "--boundaries", str(BENCH / "png"), "--nthresh", "5", "--out", str(out),
                   "--workers", "1", "--limit", "2") == 0
    r = json.loads(out.read_text())
    assert r["nthresh"] == 5 and len(r["thresholds"]) == 5 and r["num_images"] == 2
    assert "covering" not in r and "pri" not in r


def test_superpixels_input_reports_quality_against_the_count_produced(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert run_cli("--root", str(BENCH), "--superpixels", "slic", "--n-segments", "100", "--out", str(out),
                   "--workers", "2") == 0
    r = json.loads(out.read_text())
    sp = r["superpixels"]
    assert set(sp) >= {"count", "boundary_recall", "undersegmentation_error", "asa", "compactness"}
    assert sp["requested"] == 100 and sp["count"] != 100  # the count produced, not the count requested
    assert 0 < sp["boundary_recall"] <= 1 and 0 <= sp["undersegmentation_error"] < 1 and 0 < sp["asa"] <= 1
    assert r["images"]["2018"]["superpixels"]["count"] == r["images"]["2018"]["num_segments"][0]
    assert "produced per image" in capsys.readouterr().out


def test_castvit_hierarchy_is_scored_level_by_level(tmp_path):
    out = tmp_path / "r.json"
    assert run_cli("--root", str(BENCH), "--model", "cast_small", "--limit", "1", "--out", str(out),
                   "--workers", "1") == 0
    r = json.loads(out.read_text())
    assert r["thresholds"] == [1.0, 2.0, 3.0, 4.0, 5.0]  # superpixels, then the four pooling levels
    assert r["input"]["random_weights"] is True
    segs = r["images"]["2018"]["num_segments"]
    assert segs == sorted(segs, reverse=True)
    assert all(n <= k for n, k in zip(segs[1:], (64, 32, 16, 8)))  # at most cast_small's clusters per level


def test_colour_grouping_baseline_scores_its_levels(tmp_path):
    out = tmp_path / "r.json"
    assert run_cli("--root", str(BENCH), "--superpixels", "seeds", "--baseline", "colour_grouping", "--limit", "1",
                   "--out", str(out), "--workers", "1") == 0
    r = json.loads(out.read_text())
    assert r["images"]["2018"]["num_segments"][1:] == [64, 32, 16, 8]
    assert "superpixels" not in r


@pytest.fixture()
def bench_copy(tmp_path):
    root = tmp_path / "bench"
    for sub in ("images", "groundTruth", "segs"):
        shutil.copytree(BENCH / sub, root / sub)
    return root


def test_a_missing_ground_truth_file_is_named(bench_copy, capsys, tmp_path):
    (bench_copy / "groundTruth" / "5096.mat").unlink()
    assert run_cli("--root", str(bench_copy), "--segs", str(bench_copy / "segs"), "--out", str(tmp_path / "x")) == 2
    err = capsys.readouterr().err
    assert "5096.mat" in err and "does not exist" in err
    assert not (tmp_path / "x").exists()


def test_a_missing_prediction_file_is_named(bench_copy, capsys, tmp_path):
    (bench_copy / "segs" / "6046.mat").unlink()
    assert run_cli("--root", str(bench_copy), "--segs", str(bench_copy / "segs"), "--out", str(tmp_path / "x")) == 2
    assert "segs/6046.mat" in capsys.readouterr().err


def test_a_prediction_of_the_wrong_size_is_named(bench_copy, capsys, tmp_path):
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = np.ones((320, 480), np.uint16)
    savemat(bench_copy / "segs" / "3063.mat", {"segs": cell})
    assert run_cli("--root", str(bench_copy), "--segs", str(bench_copy / "segs"), "--out", str(tmp_path / "x"),
                   "--workers", "2") == 2
    err = capsys.readouterr().err
    assert "3063.mat" in err and "320×480" in err


def test_a_mat_without_the_expected_variable_is_named(bench_copy, capsys, tmp_path):
    savemat(bench_copy / "segs" / "8068.mat", {"ucm2": np.zeros((3, 3))})
    assert run_cli("--root", str(bench_copy), "--segs", str(bench_copy / "segs"), "--out", str(tmp_path / "x"),
                   "--workers", "1") == 2
    err = capsys.readouterr().err
    assert "8068.mat" in err and "no variable 'segs'" in err


def test_exactly_one_input_is_required(capsys, tmp_path):
    assert run_cli("--root", str(BENCH), "--out", str(tmp_path / "x")) == 2
    assert "exactly one input" in capsys.readouterr().err
    assert run_cli("--root", str(BENCH), "--segs", "a", "--boundaries", "b", "--out", str(tmp_path / "x")) == 2


@pytest.mark.skipif(not (DATA / "images" / "test").is_dir(), reason="BSDS500 test split not found")
def test_the_issue_command_runs_from_the_repository_and_writes_its_json(tmp_path):
    # castvit eval bsds --split test --superpixels seeds --n-segments 196 (first 3 images here)
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "castvit.cli", "eval", "bsds", "--split", "test", "--superpixels",
                           "seeds", "--n-segments", "196", "--limit", "3", "--out", str(out), "--quiet"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["split"] == "test" and r["num_images"] == 3
    assert 150 <= r["superpixels"]["count"] <= 196

"""``castvit demo``: the report it writes, and numbers that can be recomputed from its
saved predictions."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import castvit
from castvit import demo
from castvit.eval.baselines import colour_grouping
from castvit.eval.compare import MethodScores
from castvit.cli import demo as cli_demo
from castvit.eval import evaluate_hierarchy, is_nested, ods_ois, prf_from_counts


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> Path:
    from castvit.cli import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--no-progress", "--out", str(out)]) == 0
    return out


def family_predictions(saved, family: str) -> dict:
    return {k.split(".", 1)[1]: saved[k] for k in saved.files if k.startswith(family + ".")}


def test_quick_demo_writes_json_figures_and_a_page_that_shows_them(quick_report):
    metrics = json.loads((quick_report / "metrics.json").read_text())
    assert set(metrics["families"]) == {"colour", "camouflage"}
    methods = {"trained", "trained_l4", "tome", "vit_kmeans", "untrained", "superpixels", "colour_grouping"}
    assert set(metrics["methods"]) == methods
    for family, fam in metrics["families"].items():
        assert set(fam["segmentation"]) == methods
        assert fam["verdict"].startswith("[CAST, authors' classifier")
        assert "Training every level" in fam["verdict"]
        assert metrics["verdicts"][family] == fam["verdict"]
    figures = [f for f in metrics["files"] if f.endswith(".png")]
    for family in ("colour", "camouflage"):
        assert f"{family}_training_curve.png" in figures and f"{family}_levels.png" in figures
        assert any(f.startswith(f"{family}_examples_") for f in figures)
    page = (quick_report / "index.html").read_text()
    for name in figures:
        assert (quick_report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'href="{name}"' in page
    assert page.count("data:image/png;base64,") == len(figures)  # the page stands alone
    for verdict in metrics["verdicts"].values():
        assert verdict in page.replace("&#x27;", "'")
    assert not re.search(r"""(src|href)=["']https?://""", page)


def test_the_summary_has_a_row_for_every_family_and_method(quick_report):
    metrics = json.loads((quick_report / "metrics.json").read_text())
    summary = demo.summary_table(metrics).splitlines()
    for family, fam in metrics["families"].items():
        for method in metrics["methods"]:
            rows = [r for r in summary if r.split()[0] == family and demo.METHOD_NAMES[method] in r]
            assert len(rows) == 1, (family, method)
            cov = fam["segmentation"][method]["levels"][-1]["object"]["covering"]
            if method != "superpixels":
                assert f"{cov:5.3f}" in rows[0]  # level-4 object covering
    page = (quick_report / "index.html").read_text()
    assert page.count('<tr><td class="name">colour</td>') == len(metrics["methods"])
    assert page.count('<tr><td class="name">camouflage</td>') == len(metrics["methods"])


def test_saved_checkpoints_reproduce_the_reported_predictions(quick_report):
    """Every trained model is saved as a castvit checkpoint that rebuilds itself by path
    (no architecture retyped) and gives the report's classes and hierarchies again."""
    from castvit.hierarchy import Hierarchy
    from castvit.ops import normalize_images

    metrics = json.loads((quick_report / "metrics.json").read_text())
    saved = np.load(quick_report / "predictions.npz")
    for family, fam in metrics["families"].items():
        assert set(fam["checkpoints"]) == {"trained", "trained_l4", "tome", "vit_kmeans"}
        preds = family_predictions(saved, family)
        images = normalize_images(torch.from_numpy(preds["image"]))
        sp = torch.from_numpy(preds["superpixels"].astype(np.int64))
        for name in ("trained", "trained_l4"):
            rel = fam["checkpoints"][name]
            assert rel in metrics["files"] and (quick_report / rel).is_file()
            model = castvit.create_model(pretrained=quick_report / rel).eval()
            assert model.pretrained_cfg["input_size"] == [metrics["config"]["image_size"]] * 2
            assert model.pretrained_cfg["superpixels"]["n_segments"] == metrics["config"]["n_segments"]
            with torch.no_grad():
                feats = model.forward_features(images, sp)
            levels = np.stack([np.stack(h.label_maps()) for h in Hierarchy.from_outputs(feats, sp)])
            np.testing.assert_array_equal(levels, preds[f"levels_{name}"])
            if name == "trained":  # trained_l4's level-4 head is not part of the encoder file
                np.testing.assert_array_equal(model.forward_head(feats).argmax(-1).numpy(), preds["pred_label_trained"])


def test_demo_checkpoint_is_the_encoder_of_the_synthetic_segmentation_recipe(quick_report):
    """README "Semantic segmentation": model.pretrained=<demo checkpoint> starts the
    Segmenter's block-fusion encoder from the demo's classifier, every stage included."""
    from castvit.train.config import apply_overrides, read_yaml
    from castvit.train.segmentation import build_segmentation_model

    metrics = json.loads((quick_report / "metrics.json").read_text())
    c = metrics["config"]
    path = quick_report / metrics["families"]["colour"]["checkpoints"]["trained_l4"]
    recipe = Path(__file__).resolve().parents[1] / "configs" / "segmenter_synthetic_cpu.yaml"
    cfg = apply_overrides(read_yaml(recipe), [f"model.pretrained={path}",
                                              f"model.kwargs.encoder_kwargs.embed_dim={c['embed_dim']}"])
    model = build_segmentation_model(cfg)
    enc = model.encoder.state_dict()
    demo_cast = castvit.create_model(pretrained=path).state_dict()
    for stage in range(4):
        assert torch.equal(enc[f"blocks{stage + 1}.0.attn.qkv.weight"], demo_cast[f"blocks.{stage}.attn.qkv.weight"])
    key = "pool3.pool_block.centroid_fc.attn.qkv.weight"
    assert torch.equal(enc[key], demo_cast[key])


def test_report_numbers_are_recomputed_from_the_saved_predictions(quick_report):
    metrics = json.loads((quick_report / "metrics.json").read_text())
    saved = np.load(quick_report / "predictions.npz")
    size = metrics["config"]["image_size"]
    tolerance = metrics["config"]["tolerance_px"] / np.hypot(size, size)
    assert metrics["tolerance"] == pytest.approx(tolerance)

    for family, fam in metrics["families"].items():
        preds = family_predictions(saved, family)
        for name, record in fam["classification"].items():
            if name != "chance":
                accuracy = float(np.mean(preds[f"pred_label_{name}"] == preds["label"]))
                assert record["acc"] == pytest.approx(accuracy)

        for method, summary in fam["segmentation"].items():
            levels = preds[f"levels_{method}"]
            assert levels.shape[1] == summary["num_levels"]
            results = [evaluate_hierarchy(list(levels[i]), preds["object_mask"][i], preds["part_mask"][i],
                                          tolerance=tolerance) for i in range(len(levels))]
            for lvl, record in enumerate(summary["levels"]):
                per_level = [r["levels"][lvl] for r in results]
                assert record["num_segments"] == pytest.approx(np.mean([p["num_segments"] for p in per_level]))
                for gt in ("object", "parts"):
                    prf = prf_from_counts([p[gt]["boundary"] for p in per_level])
                    assert record[gt]["boundary_f"] == pytest.approx(prf["f"])
                    assert record[gt]["boundary_precision"] == pytest.approx(prf["precision"])
                    assert record[gt]["boundary_recall"] == pytest.approx(prf["recall"])
                    for key in ("covering", "vi", "pri", "miou"):
                        assert record[gt][key] == pytest.approx(np.mean([p[gt][key] for p in per_level])), \
                            (family, method, key)
            for gt in ("object", "parts"):
                chosen = summary["ods_ois_levels"]
                oo = ods_ois([[r["levels"][lvl][gt]["boundary"] for lvl in chosen] for r in results])
                assert summary["ods_ois"][gt]["ods_f"] == pytest.approx(oo["ods_f"])
                assert summary["ods_ois"][gt]["ois_f"] == pytest.approx(oo["ois_f"])
            assert summary["hierarchy_consistency"] == pytest.approx(
                np.mean([r["hierarchy_consistency"] for r in results]))


def test_saved_hierarchies_share_the_superpixels_and_are_nested(quick_report):
    saved = np.load(quick_report / "predictions.npz")
    for family in ("colour", "camouflage"):
        preds = family_predictions(saved, family)
        for method in ("trained", "trained_l4", "tome", "vit_kmeans", "untrained", "colour_grouping"):
            levels = preds[f"levels_{method}"]
            assert np.array_equal(levels[:, 0], preds["superpixels"]), (family, method)
            for maps in levels:
                assert all(is_nested(fine, coarse) for fine, coarse in zip(maps, maps[1:])), (family, method)


def test_the_families_are_the_two_scene_kinds(quick_report):
    from castvit.data.synthetic import SceneConfig, generate_scene

    saved = np.load(quick_report / "predictions.npz")
    cfg = json.loads((quick_report / "metrics.json").read_text())["config"]
    for family in ("colour", "camouflage"):
        scene = generate_scene(0, SceneConfig(image_size=cfg["image_size"], num_classes=cfg["num_classes"],
                                              clutter=cfg["clutter"], scale_range=cfg["object_scale"], family=family),
                               seed=cfg["seed"] + 1)
        assert np.array_equal(saved[f"{family}.image"][0], scene.image)


def test_verdict_rows_agree_with_their_counts(quick_report):
    families = json.loads((quick_report / "metrics.json").read_text())["families"]
    for fam in families.values():
        for comparison in fam["comparisons"].values():
            for baseline, rows in comparison["pairs"].items():
                for row in rows:
                    expected = "win" if row["low"] > 0 else "loss" if row["high"] < 0 else "tie"
                    assert row["outcome"] == expected
                counts = {o: sum(r["outcome"] == o for r in rows) for o in ("win", "loss", "tie")}
                assert comparison["counts"][baseline] == counts
                assert comparison["beats"][baseline] == (counts["win"] > counts["loss"] + counts["tie"])
        assert set(fam["comparisons"]["trained_l4"]["pairs"]) >= {"trained", "colour_grouping"}


def test_level4_head_trains_the_last_pooling():
    cfg = demo.DemoConfig.quick()
    authors, every_level = demo.build_model(cfg, "trained"), demo.build_model(cfg, "trained_l4")
    assert not any(p.requires_grad for p in authors.pool4.parameters())
    assert all(p.requires_grad for p in every_level.cast.pool4.parameters())
    side = torch.arange(64) // 8
    sp = (side[:, None] * 8 + side[None]).expand(2, -1, -1).clone()
    every_level(torch.randn(2, 3, 64, 64), sp).sum().backward()
    grad = every_level.cast.pool4.pool_block.centroid_fc.attn.qkv.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert every_level.cast.head.weight.grad is None  # the CAST's own head is not read


def test_colour_grouping_is_nested_and_cut_at_the_requested_counts():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
    superpixels = (np.arange(32)[:, None] // 4) * 8 + np.arange(32)[None, :] // 4  # 64 squares
    levels = colour_grouping(image, superpixels, (16, 8, 4, 2))
    assert np.array_equal(levels[0], superpixels)
    assert [np.unique(m).size for m in levels] == [64, 16, 8, 4, 2]
    assert all(is_nested(f, c) for f, c in zip(levels, levels[1:]))


def test_colour_grouping_separates_two_flat_colours():
    image = np.zeros((16, 16, 3), np.uint8)
    image[:, 8:] = (200, 30, 30)
    superpixels = (np.arange(16)[:, None] // 4) * 4 + np.arange(16)[None, :] // 4
    coarse = colour_grouping(image, superpixels, (2,))[1]
    assert np.unique(coarse[:, :8]).size == 1 and np.unique(coarse[:, 8:]).size == 1
    assert coarse[0, 0] != coarse[0, 15]


def _scores(per_image_value: float, n: int = 30, levels: int = 3, noise: float = 0.01, seed: int = 0):
    rng = np.random.default_rng(seed)
    table = {}
    for gt in ("object", "parts"):
        values = {k: per_image_value + noise * rng.standard_normal((n, levels)) for k in ("covering", "vi", "pri",
                                                                                            "miou")}
        matched = np.round(100 * per_image_value + rng.integers(0, 3, (n, levels)))
        values.update(matched_pred=matched, num_pred=np.full((n, levels), 100.0), matched_gt=matched,
                      num_gt=np.full((n, levels), 100.0))
        table[gt] = values
    return MethodScores({"num_levels": levels}, table)


def test_verdict_says_not_when_the_trained_model_is_worse():
    scores = {"trained": _scores(0.3), "untrained": _scores(0.5, seed=1), "colour_grouping": _scores(0.7, seed=2),
              "superpixels": _scores(0.2, levels=1, seed=3)}
    comparison = demo.compare_methods(scores, num_resamples=200)
    assert comparison["beats"] == {"untrained": False, "colour_grouping": False, "superpixels": True}
    assert "does NOT beat the untrained model or the colour grouping" in comparison["verdict"]


def test_flags_override_the_defaults_and_quick_shrinks_the_run():
    parser = argparse.ArgumentParser()
    cli_demo.add_arguments(parser)
    cfg = cli_demo.config_from_args(parser.parse_args(["--epochs", "3", "--clusters", "8,4,2,2", "--image-size", "96"]))
    assert (cfg.epochs, cfg.num_clusters, cfg.image_size) == (3, (8, 4, 2, 2), 96)
    assert cfg.num_train == demo.DemoConfig().num_train
    quick = cli_demo.config_from_args(parser.parse_args(["--quick", "--epochs", "2"]))
    assert quick.epochs == 2 and quick.num_train < cfg.num_train
    assert cfg.families == ("colour", "camouflage") and cfg.baselines == () and cfg.level4
    picked = cli_demo.config_from_args(parser.parse_args(["--families", "camouflage", "--baselines", "tome",
                                                          "--no-level4"]))
    assert (picked.families, picked.baselines, picked.level4) == (("camouflage",), ("tome",), False)
    assert picked.methods() == ("trained", "tome", "untrained", "colour_grouping", "superpixels")
    with pytest.raises(SystemExit):
        parser.parse_args(["--baselines", "sam"])


@pytest.mark.slow
def test_default_demo_finishes_within_ten_minutes(tmp_path):
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "castvit.cli", "demo", "--no-progress", "--out", str(tmp_path)],
                   check=True, timeout=900)
    elapsed = time.perf_counter() - start
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (tmp_path / "index.html").exists()
    assert set(metrics["families"]) == {"colour", "camouflage"}
    assert elapsed < 600, f"the default demo took {elapsed:.0f} s (timing: {metrics['timing']})"

"""YAML recipes, overrides and the ``castvit train`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from castvit.cli import main
from castvit.train.config import RECIPES, ConfigError, apply_overrides, load_config, read_yaml


pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_resolves(path):
    cfg = load_config(path)
    assert cfg["recipe"] in RECIPES and cfg["model"]["name"]


@pytest.mark.parametrize("name, epochs, warmup", [("moco_imagenet1k", 100, 10), ("moco_imagenet100", 200, 20),
                                                  ("moco_coco", 400, 40)])
def test_moco_recipes_carry_the_published_hyper_parameters(name, epochs, warmup):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    t = cfg["train"]
    assert (t["epochs"], t["warmup_epochs"]) == (epochs, warmup)
    assert (t["batch_size"], t["lr"], t["lr_scale_batch"], t["weight_decay"]) == (256, 1.5e-4, 256, 0.1)
    assert (t["temperature"], t["momentum"], t["momentum_cosine"], t["dim"], t["mlp_dim"]) == (0.2, 0.99, True,
                                                                                                256, 4096)
    assert t["sync_bn"] is True
    assert cfg["data"]["superpixels"] == {"method": "seeds", "n_segments": 196, "histogram_bins": 15,
                                          "num_iterations": 20}
    view = cfg["data"]["train_view"]
    assert view["scale"] == [0.08, 1.0] and view["jitter"] == [0.4, 0.4, 0.2, 0.1]
    assert (view["jitter_prob"], view["grayscale_prob"]) == (0.8, 0.2)
    assert view["blur_prob"] == [1.0, 0.1] and view["solarize_prob"] == [0.0, 0.2]


def test_the_coco_recipe_reads_unlabelled_images():
    cfg = load_config(CONFIGS / "moco_coco.yaml")
    assert cfg["data"]["kind"] == "images" and cfg["data"]["val"] is None


def test_linear_probe_recipes_carry_the_published_hyper_parameters():
    in1k = load_config(CONFIGS / "linear_probe_imagenet1k.yaml")["train"]
    in100 = load_config(CONFIGS / "linear_probe_imagenet100.yaml")["train"]
    assert (in1k["lr"], in1k["batch_size"], in1k["epochs"]) == (30.0, 1024, 90)
    assert (in100["lr"], in100["batch_size"], in100["lr_scale_batch"]) == (0.8, 256, 256)
    assert in1k["momentum"] == 0.9 and in1k["weight_decay"] == 0.0


def test_deit_recipe_carries_the_published_hyper_parameters():
    cfg = load_config(CONFIGS / "supervised_imagenet1k.yaml")
    t = cfg["train"]
    assert (t["epochs"], t["batch_size"], t["lr"], t["weight_decay"]) == (300, 1024, 1e-3, 0.05)
    assert (t["warmup_epochs"], t["min_lr"], t["drop_path"], t["label_smoothing"]) == (5, 1e-5, 0.1, 0.1)
    assert (t["mixup_alpha"], t["cutmix_alpha"], t["ema_decay"]) == (0.8, 1.0, 0.99996)
    assert cfg["data"]["train_view"]["rand_augment"] and cfg["data"]["train_view"]["erase_prob"] == 0.25
    assert cfg["data"]["superpixels"]["histogram_bins"] == 5 and cfg["data"]["superpixels"]["num_iterations"] == 15


def test_overrides_parse_yaml_values_and_create_nested_keys():
    cfg = apply_overrides({"train": {"epochs": 5}}, ["train.epochs=2", "train.grad_clip=null",
                                                     "model.kwargs.depth=[1,1,1,1]", "data.train=/x y"])
    assert cfg == {"train": {"epochs": 2, "grad_clip": None}, "model": {"kwargs": {"depth": [1, 1, 1, 1]}},
                   "data": {"train": "/x y"}}
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.epochs"])


def test_unknown_keys_are_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        load_config(CONFIGS / "moco_synthetic_cpu.yaml", ["train.epoch=3"])
    with pytest.raises(ConfigError, match="recipe must be one of"):
        load_config(CONFIGS / "moco_synthetic_cpu.yaml", ["recipe=byol"])


def test_base_files_are_merged_under_the_child(tmp_path):
    (tmp_path / "base.yaml").write_text("recipe: moco\ntrain: {epochs: 100, lr: 0.1}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ntrain: {epochs: 7}\n")
    assert read_yaml(tmp_path / "child.yaml") == {"recipe": "moco", "train": {"epochs": 7, "lr": 0.1}}


def test_cli_prints_the_resolved_config_and_reports_bad_keys(capsys):
    assert main(["train", str(CONFIGS / "moco_imagenet1k.yaml"), "train.epochs=3", "--print-config"]) == 0
    assert "epochs: 3" in capsys.readouterr().out
    # flags may come before, between or after the overrides
    assert main(["train", str(CONFIGS / "moco_imagenet1k.yaml"), "--print-config", "train.epochs=4", "--resume",
                 "train.seed=5"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 4" in out and "seed: 5" in out
    assert main(["train", str(CONFIGS / "moco_imagenet1k.yaml"), "train.bogus=1"]) == 2
    assert "unknown key train.bogus" in capsys.readouterr().err


TINY_CPU = ["data.train_size=8", "data.val_size=4", "data.image_size=32", "data.scene.image_size=32",
            "data.superpixels={method: grid, n_segments: 16}",
            "model.kwargs={img_size: 32, embed_dim: 48, depth: [1,1,1,1], num_heads: 4, num_clusters: [8,4,4,2]}",
            "train.epochs=1", "train.batch_size=4", "train.num_workers=0", "train.checkpoint_every_steps=0"]


@pytest.mark.parametrize("recipe", ["supervised", "moco"])
def test_cli_runs_a_cpu_recipe_end_to_end(tmp_path, recipe):
    extra = ["train.mlp_dim=32", "train.dim=16"] if recipe == "moco" else []
    code = main(["train", str(CONFIGS / f"{recipe}_synthetic_cpu.yaml"), *TINY_CPU, *extra,
                 f"output_dir={tmp_path}", "--no-progress"])
    assert code == 0
    assert {"last.pth.tar", "best.pth.tar", "config.yaml", "metrics.jsonl"} <= {p.name for p in tmp_path.iterdir()}
    epoch = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert epoch["kind"] == "epoch" and epoch["epoch"] == 0
    # resume of a finished run is a no-op that still succeeds
    assert main(["train", str(CONFIGS / f"{recipe}_synthetic_cpu.yaml"), *TINY_CPU, *extra,
                 f"output_dir={tmp_path}", "--no-progress", "--resume"]) == 0


def test_cli_linear_probe_from_the_moco_checkpoint(tmp_path):
    moco_dir, probe_dir = tmp_path / "moco", tmp_path / "probe"
    assert main(["train", str(CONFIGS / "moco_synthetic_cpu.yaml"), *TINY_CPU, "train.mlp_dim=32", "train.dim=16",
                 f"output_dir={moco_dir}", "--no-progress"]) == 0
    assert main(["train", str(CONFIGS / "linear_probe_synthetic_cpu.yaml"), *TINY_CPU, f"output_dir={probe_dir}",
                 f"model.pretrained={moco_dir / 'last.pth.tar'}", "--no-progress"]) == 0
    epoch = json.loads((probe_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= epoch["val_acc"] <= 1.0


def test_exponent_floats_without_a_dot_are_floats():
    # YAML 1.1 (PyYAML's default) reads 2e-3 as the string "2e-3"; a learning rate written
    # that way must not reach the optimiser as text
    cfg = apply_overrides({}, ["train.lr=2e-3", "train.wd=5E-2", "train.epochs=3", "name=run1e5x"])
    assert cfg == {"train": {"lr": 0.002, "wd": 0.05, "epochs": 3}, "name": "run1e5x"}
    assert isinstance(cfg["train"]["lr"], float)

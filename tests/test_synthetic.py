"""Specification of the synthetic part-based scenes (castvit.data.synthetic)."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest
import torch

from castvit.data import synthetic
from castvit.data.synthetic import (
    MAX_CLASSES,
    PART_TYPES,
    PARTS_PER_OBJECT,
    SceneConfig,
    SyntheticScenes,
    class_names,
    generate_scene,
    generate_split,
)


@pytest.fixture(scope="module")
def all_classes_train() -> dict[str, np.ndarray]:
    return generate_split(400, SceneConfig(num_classes=MAX_CLASSES), seed=1)


@pytest.fixture(scope="module")
def all_classes_test() -> dict[str, np.ndarray]:
    return generate_split(400, SceneConfig(num_classes=MAX_CLASSES), seed=2)


def nearest_centroid_accuracy(train_x, train_y, test_x, test_y) -> float:
    classes = np.unique(train_y)
    centroids = np.stack([train_x[train_y == k].mean(0) for k in classes])
    distances = ((test_x[:, None, :] - centroids[None]) ** 2).sum(-1)
    return float((classes[distances.argmin(1)] == test_y).mean())


def colour_histograms(images: np.ndarray, bins: int = 4) -> np.ndarray:
    """``N×bins³`` joint RGB histograms, normalised."""
    quantised = images.astype(np.int64) * bins // 256
    codes = (quantised[..., 0] * bins + quantised[..., 1]) * bins + quantised[..., 2]
    return np.stack([np.bincount(c.ravel(), minlength=bins**3) / c.size for c in codes])


def part_layouts(split: dict[str, np.ndarray], grid: int = 8) -> np.ndarray:
    """One-hot part-type maps of the first object, cropped to its box, ``grid×grid``."""
    features = []
    for object_mask, part_mask, part_class in zip(split["object_mask"], split["part_mask"], split["part_class"]):
        ys, xs = np.nonzero(object_mask == 1)
        types = part_class[part_mask][ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        rows = np.linspace(0, types.shape[0] - 1, grid).round().astype(int)
        cols = np.linspace(0, types.shape[1] - 1, grid).round().astype(int)
        small = types[np.ix_(rows, cols)]
        features.append((small[None] == np.arange(1, len(PART_TYPES))[:, None, None]).ravel())
    return np.asarray(features, np.float64)


def background_std(config: SceneConfig, n: int = 30) -> float:
    stds = []
    for index in range(n):
        scene = generate_scene(index, config, seed=0)
        stds.append(scene.image[scene.object_mask == 0].astype(np.float64).std(0).mean())
    return float(np.mean(stds))


# --------------------------------------------------------------------- determinism


def test_same_index_and_seed_give_identical_scenes():
    a, b = generate_scene(7, SceneConfig(), seed=3), generate_scene(7, SceneConfig(), seed=3)
    assert a.label == b.label
    for field in ("image", "object_mask", "part_mask", "part_class"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_scene_does_not_depend_on_generation_order():
    config = SceneConfig(num_classes=MAX_CLASSES, clutter=1.0)
    in_order = generate_split(6, config, seed=5)
    alone = generate_scene(4, config, seed=5)
    np.testing.assert_array_equal(in_order["image"][4], alone.image)
    np.testing.assert_array_equal(in_order["part_mask"][4], alone.part_mask)


def test_different_seeds_give_different_images():
    a, b = generate_scene(0, SceneConfig(), seed=0), generate_scene(0, SceneConfig(), seed=1)
    assert not np.array_equal(a.image, b.image)


def test_different_indices_give_different_images():
    assert not np.array_equal(generate_scene(0).image, generate_scene(1).image)


# ------------------------------------------------------------------ shapes, masks


@pytest.mark.parametrize("size", [32, 64, 224])
def test_scene_has_requested_size_and_dtypes(size):
    scene = generate_scene(0, SceneConfig(image_size=size))
    assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.uint8
    assert scene.object_mask.shape == (size, size) and scene.object_mask.dtype == np.int64
    assert scene.part_mask.shape == (size, size) and scene.part_mask.dtype == np.int64
    assert isinstance(scene.label, int)


@pytest.mark.parametrize("size", [32, 64, 224])
def test_single_object_shows_all_its_parts_at_every_size(size):
    config = SceneConfig(image_size=size, num_classes=MAX_CLASSES, clutter=1.0)
    for index in range(20):
        scene = generate_scene(index, config)
        assert scene.object_mask.max() == 1
        assert scene.part_mask.max() == PARTS_PER_OBJECT, f"scene {index}"


def test_part_mask_refines_object_mask():
    config = SceneConfig(objects_per_image=3, clutter=1.0, scale_range=(0.7, 1.0))
    for index in range(20):
        scene = generate_scene(index, config)
        assert np.array_equal(scene.part_mask > 0, scene.object_mask > 0)
        for part_id in range(1, scene.part_mask.max() + 1):
            owners = np.unique(scene.object_mask[scene.part_mask == part_id])
            assert len(owners) == 1, f"scene {index}: part {part_id} spans objects {owners}"


def test_ids_are_contiguous_and_every_id_is_visible():
    config = SceneConfig(objects_per_image=4, scale_range=(0.8, 1.0))
    for index in range(20):
        scene = generate_scene(index, config)
        for mask in (scene.object_mask, scene.part_mask):
            assert np.array_equal(np.unique(mask), np.arange(mask.max() + 1))


def test_part_class_names_the_type_of_every_part():
    scene = generate_scene(0, SceneConfig(num_classes=MAX_CLASSES))
    assert len(scene.part_class) == scene.part_mask.max() + 1
    assert scene.part_class[0] == 0
    assert sorted(scene.part_class[1:]) in ([1, 2, 4], [2, 3, 4])  # head, body, foot


@pytest.mark.parametrize("family", synthetic.FAMILIES)
def test_masks_are_exactly_the_drawn_pixels(family):
    # Flat colours, no jitter, plain background: each part is one colour, so a wrong
    # occlusion order or a misaligned mask shows up as an off-colour pixel.
    config = SceneConfig(num_classes=MAX_CLASSES, clutter=0.0, texture_strength=0.0, color_jitter=0.0, family=family)
    for index in range(20):
        scene = generate_scene(index, config)
        for part_id in range(1, scene.part_mask.max() + 1):
            pixels = scene.image[scene.part_mask == part_id].astype(np.int64)
            deviation = np.abs(pixels - np.median(pixels, axis=0)).max()
            assert deviation <= 16, f"scene {index}, part {part_id}: deviation {deviation}"


def test_objects_stay_inside_the_image():
    for index in range(20):
        mask = generate_scene(index, SceneConfig()).object_mask > 0
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


# ---------------------------------------------------------------------- the task


def test_labels_cover_all_classes_roughly_uniformly(all_classes_train):
    counts = np.bincount(all_classes_train["label"], minlength=MAX_CLASSES)
    assert len(counts) == MAX_CLASSES
    expected = len(all_classes_train["label"]) / MAX_CLASSES
    assert np.all(np.abs(counts - expected) < 0.4 * expected), counts


def test_class_is_not_decodable_from_mean_colour(all_classes_train, all_classes_test):
    def mean_rgb(split):
        return split["image"].reshape(len(split["image"]), -1, 3).mean(1)

    accuracy = nearest_centroid_accuracy(
        mean_rgb(all_classes_train), all_classes_train["label"], mean_rgb(all_classes_test), all_classes_test["label"]
    )
    assert accuracy < 1 / MAX_CLASSES + 0.1, accuracy


def test_class_is_not_decodable_from_colour_histogram(all_classes_train, all_classes_test):
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(max_iter=1000)
    classifier.fit(colour_histograms(all_classes_train["image"]), all_classes_train["label"])
    accuracy = classifier.score(colour_histograms(all_classes_test["image"]), all_classes_test["label"])
    assert accuracy < 1 / MAX_CLASSES + 0.1, accuracy


def test_class_is_decodable_from_part_layout(all_classes_train, all_classes_test):
    accuracy = nearest_centroid_accuracy(
        part_layouts(all_classes_train),
        all_classes_train["label"],
        part_layouts(all_classes_test),
        all_classes_test["label"],
    )
    assert accuracy > 0.9, accuracy


def test_every_head_shape_is_shared_by_several_classes():
    heads = [layout.head for layout in synthetic._LAYOUTS]
    assert all(heads.count(head) >= 2 for head in heads)


# --------------------------------------------------------------------- the knobs


def test_clutter_increases_background_variation():
    assert background_std(SceneConfig(clutter=1.0)) > 2 * background_std(SceneConfig(clutter=0.0))


def test_texture_strength_adds_variation_inside_parts():
    def part_std(config):
        stds = []
        for index in range(20):
            scene = generate_scene(index, config)
            for part_id in range(1, scene.part_mask.max() + 1):
                stds.append(scene.image[scene.part_mask == part_id].astype(np.float64).std(0).mean())
        return np.mean(stds)

    flat = SceneConfig(clutter=0.0, texture_strength=0.0)
    textured = SceneConfig(clutter=0.0, texture_strength=1.0)
    assert part_std(textured) > 3 * part_std(flat)


def test_color_jitter_zero_keeps_palette_colours():
    config = SceneConfig(clutter=0.0, texture_strength=0.0, color_jitter=0.0)
    scene = generate_scene(0, config)
    for part_id in range(1, scene.part_mask.max() + 1):
        colour = np.median(scene.image[scene.part_mask == part_id], axis=0) / 255.0
        assert np.abs(synthetic._PALETTE - colour).max(1).min() < 0.03


def test_scale_range_sets_object_size():
    def mean_area(scale_range):
        config = SceneConfig(scale_range=scale_range)
        return np.mean([(generate_scene(i, config).object_mask > 0).mean() for i in range(20)])

    assert mean_area((0.8, 0.9)) > 2 * mean_area((0.4, 0.45))


def test_objects_per_image_draws_that_many_objects_of_the_label_class():
    config = SceneConfig(objects_per_image=3)
    counts = [generate_scene(i, config).object_mask.max() for i in range(20)]
    assert np.mean(np.equal(counts, 3)) >= 0.9, counts


def test_zero_rotation_keeps_bodies_axis_aligned():
    # Totem bodies are upright rectangles: with no rotation each row of the body is a
    # run of constant width.
    config = SceneConfig(max_rotation_deg=0.0, num_classes=2)
    for index in range(10):
        scene = generate_scene(index, config)
        body = scene.part_class[scene.part_mask] == synthetic.RECTANGLE
        widths = body.sum(1)[body.any(1)]
        assert np.median(np.abs(widths - np.median(widths))) == 0


@pytest.mark.parametrize(
    "bad",
    [
        dict(image_size=16),
        dict(num_classes=1),
        dict(num_classes=MAX_CLASSES + 1),
        dict(objects_per_image=0),
        dict(scale_range=(0.6, 0.3)),
        dict(max_rotation_deg=45.0),
        dict(clutter=1.5),
        dict(texture_strength=-0.1),
        dict(family="camo"),
    ],
)
def test_invalid_config_is_rejected(bad):
    with pytest.raises(ValueError):
        SceneConfig(**bad)


def test_class_names_follow_num_classes():
    assert class_names(SceneConfig(num_classes=3)) == ["totem", "rocket", "rattle"]
    assert len(set(class_names(SceneConfig(num_classes=MAX_CLASSES)))) == MAX_CLASSES


# ------------------------------------------------------------------- torch access


def test_dataset_item_matches_generate_scene():
    config = SceneConfig(image_size=32)
    item = SyntheticScenes(5, config, seed=4)[3]
    scene = generate_scene(3, config, seed=4)
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 32, 32)
    assert torch.equal(item["image"], torch.from_numpy(scene.image).permute(2, 0, 1))
    assert item["object_mask"].dtype == torch.int64 and torch.equal(item["object_mask"], torch.from_numpy(scene.object_mask))
    assert item["part_mask"].dtype == torch.int64 and torch.equal(item["part_mask"], torch.from_numpy(scene.part_mask))
    assert item["label"] == scene.label and item["index"] == 3


def test_dataset_applies_transform_to_the_item_dict():
    def add_flag(item):
        return {**item, "flag": True}

    item = SyntheticScenes(2, SceneConfig(image_size=32), transform=add_flag)[0]
    assert item["flag"] is True and "image" in item


def test_dataset_rejects_out_of_range_index():
    dataset = SyntheticScenes(2, SceneConfig(image_size=32))
    assert len(dataset) == 2
    with pytest.raises(IndexError):
        dataset[2]


def test_dataset_batches_with_the_default_collate():
    config = SceneConfig(image_size=32, objects_per_image=2)
    batch = next(iter(torch.utils.data.DataLoader(SyntheticScenes(8, config), batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32)
    assert batch["part_class"].shape == (4, config.max_parts + 1)
    assert batch["label"].dtype == torch.int64


def test_split_part_class_is_padded_with_minus_one():
    split = generate_split(10, SceneConfig(objects_per_image=2))
    for part_mask, part_class in zip(split["part_mask"], split["part_class"]):
        num_parts = part_mask.max()
        assert np.all(part_class[1 : num_parts + 1] > 0) and np.all(part_class[num_parts + 1 :] == -1)


def test_data_module_imports_no_model_code():
    tree = ast.parse(inspect.getsource(synthetic))
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    forbidden = ("castvit.models", "castvit.train", "castvit.eval", "castvit.viz", "torchvision")
    assert not [name for name in imported if name and name.startswith(forbidden)]


# ------------------------------------------------------------- camouflage family


def test_default_family_is_the_colour_coded_one():
    assert SceneConfig().family == "colour"


def test_camouflage_parts_wear_colours_of_the_background():
    config = SceneConfig(family="camouflage", clutter=0.0, texture_strength=0.0, color_jitter=0.0)
    for index in range(20):
        scene = generate_scene(index, config)
        background = scene.image[scene.object_mask == 0].astype(np.int64)
        for part_id in range(1, scene.part_mask.max() + 1):
            colour = np.median(scene.image[scene.part_mask == part_id], axis=0)
            # the illumination ramp shifts the background by up to ~15 %
            close = (np.abs(background - colour).max(1) <= 40).mean()
            assert close > 0.01, f"scene {index}, part {part_id}: colour {colour} is not in the background"


def test_camouflage_keeps_the_classes_and_their_layouts():
    train = generate_split(200, SceneConfig(num_classes=MAX_CLASSES, family="camouflage"), seed=1)
    test = generate_split(200, SceneConfig(num_classes=MAX_CLASSES, family="camouflage"), seed=2)
    accuracy = nearest_centroid_accuracy(part_layouts(train), train["label"], part_layouts(test), test["label"])
    assert accuracy > 0.9, accuracy


def test_colour_grouping_finds_objects_far_worse_in_camouflage():
    from castvit.eval.baselines import colour_grouping

    side = np.arange(64) // 4
    squares = side[:, None] * 16 + side[None]  # 256 superpixels of 4×4 px

    def best_object_iou(family: str) -> float:
        ious = []
        for index in range(25):
            scene = generate_scene(index, SceneConfig(family=family), seed=3)
            coarse = colour_grouping(scene.image, squares, (4,))[1]
            obj = scene.object_mask > 0
            ious.append(max((obj & (coarse == s)).sum() / (obj | (coarse == s)).sum() for s in np.unique(coarse)))
        return float(np.mean(ious))

    colour, camouflage = best_object_iou("colour"), best_object_iou("camouflage")
    assert camouflage < colour - 0.1, (colour, camouflage)

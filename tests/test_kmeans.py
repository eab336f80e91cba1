"""ViT + hierarchical spherical k-means (issue 14): deterministic for a seed, nested,
and in agreement with brute force on small cases."""

import itertools

import numpy as np
import pytest
import torch

import castvit
from castvit.eval.compare import score_method
from castvit.eval.kmeans import kmeans_parents, label_maps, spherical_kmeans, vit_kmeans_hierarchies

TINY = dict(img_size=64, embed_dim=48, num_heads=4, num_classes=3)


def blobs(centres: np.ndarray, per: int, spread: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([c + spread * rng.standard_normal((per, centres.shape[1])) for c in centres])


def test_same_seed_same_clusters():
    x = np.random.default_rng(1).standard_normal((60, 16))
    a = kmeans_parents(x, (16, 8, 4, 2), seed=3)
    b = kmeans_parents(x, (16, 8, 4, 2), seed=3)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))


def test_labels_are_the_nearest_final_prototype_by_brute_force():
    x = np.random.default_rng(2).standard_normal((30, 5))
    labels, proto = spherical_kmeans(x, 6, seed=0)
    assert np.allclose(np.linalg.norm(proto, axis=1), 1.0)
    for i, row in enumerate(x):
        cosines = [float(row @ p) / float(np.linalg.norm(row)) for p in proto]
        assert labels[i] == max(range(len(proto)), key=lambda k: (cosines[k], -k))


def test_the_soft_iteration_matches_a_hand_written_one():
    x = np.random.default_rng(3).standard_normal((12, 4))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    labels0, start = spherical_kmeans(x, 3, iterations=0, seed=5)
    _, after_one = spherical_kmeans(x, 3, iterations=1, seed=5)
    expected = np.zeros_like(start)
    for k in range(3):
        weights = [np.exp(5 * unit[i] @ start[k]) / sum(np.exp(5 * unit[i] @ start[j]) for j in range(3))
                   for i in range(12)]
        moved = sum(w * u for w, u in zip(weights, unit))
        expected[k] = moved / np.linalg.norm(moved)
    assert np.allclose(after_one, expected)
    assert sorted(set(labels0)) == [0, 1, 2]  # k-means++ starts from three data points


def test_two_tight_groups_give_the_brute_force_best_partition():
    x = blobs(np.array([[1.0, 0.0, 0.2], [0.0, 1.0, 0.2]]), 4, 0.05)  # 8 directions, two groups
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    best, best_value = None, -np.inf
    for bits in itertools.product((0, 1), repeat=len(x)):  # every 2-partition
        g = np.array(bits)
        if g.min() == g.max():
            continue
        value = sum(np.linalg.norm(unit[g == c].sum(0)) for c in (0, 1))  # Σ_i cos(x_i, its centroid)
        if value > best_value:
            best, best_value = g, value
    labels, _ = spherical_kmeans(x, 2, seed=0)
    assert np.array_equal(labels, best) or np.array_equal(labels, 1 - best)


def test_levels_cluster_the_prototypes_of_the_level_below():
    x = np.random.default_rng(4).standard_normal((50, 8)) + 3.0  # a common direction, as ViT tokens have
    parents = kmeans_parents(x, (16, 8, 4, 2), seed=0)
    assert [len(p) for p in parents] == [50, 16, 8, 4]
    assert [p.max() < k for p, k in zip(parents, (16, 8, 4, 2))] == [True] * 4
    # each level clusters the mean-centred prototypes of the level below
    labels16, proto16 = spherical_kmeans(x - x.mean(0), 16, seed=0)
    assert np.array_equal(parents[0], labels16)
    assert np.array_equal(parents[1], spherical_kmeans(proto16 - proto16.mean(0), 8, seed=1)[0])
    plain = kmeans_parents(x, (16, 8), seed=0, center=False)
    _, raw16 = spherical_kmeans(x, 16, seed=0)
    assert np.array_equal(plain[1], spherical_kmeans(raw16, 8, seed=1)[0])


def test_centring_keeps_clusters_that_share_a_common_direction_apart():
    x = blobs(np.array([[5.0, 0.3, 0.0], [5.0, -0.3, 0.0], [5.0, 0.0, 0.3], [5.0, 0.0, -0.3]]), 10, 0.02)
    assert len(set(kmeans_parents(x, (4,), seed=0)[0])) == 4
    assert len(set(kmeans_parents(x, (4,), seed=0, center=False)[0])) < 4  # κ = 5 is too soft for them


def test_more_clusters_than_points_keeps_every_point():
    labels, proto = spherical_kmeans(np.eye(3), 5)
    assert labels.tolist() == [0, 1, 2] and np.allclose(proto, np.eye(3))


def test_a_zero_feature_is_an_error():
    with pytest.raises(ValueError, match="all-zero row"):
        spherical_kmeans(np.zeros((3, 2)), 2)


def test_superpixel_vit_gives_nested_hierarchies_over_the_superpixels():
    torch.manual_seed(0)
    model = castvit.create_model("vit_suppix_small", **TINY, depth=2)
    side = torch.arange(64) // 8
    sp = (side[:, None] * 8 + side[None]).expand(2, -1, -1).clone()
    sp[1][sp[1] == 9] = 10  # image 1 lacks id 9
    sp[0, :2] = 63  # thin rows: some ids own no 8-px cell's top-left pixel
    images = torch.randn(2, 3, 64, 64)
    hierarchies = vit_kmeans_hierarchies(model, images, sp, (16, 8, 4, 2), seed=0)
    again = vit_kmeans_hierarchies(model, images, sp, (16, 8, 4, 2), seed=0)
    maps = label_maps(hierarchies)
    assert np.array_equal(maps, label_maps(again))
    assert maps.shape == (2, 5, 64, 64)
    for h, s in zip(hierarchies, sp):
        assert h.is_nested() and all((m >= 0).all() for m in h.label_maps())
        assert np.array_equal(h.label_map(0), s.numpy())
        assert [h.num_segments(k) <= c for k, c in zip(range(1, 5), (16, 8, 4, 2))] == [True] * 4
    gt = (sp.numpy() % 2).astype(np.int16)
    summary = score_method(maps, gt, gt, 1.5).summary  # what castvit.eval.compare scores
    assert summary["num_levels"] == 5 and summary["hierarchy_consistency"] == pytest.approx(1.0)


def test_patch_vit_gives_hierarchies_over_its_patch_grid():
    torch.manual_seed(0)
    model = castvit.create_model("vit_conv_small_patch16", **TINY, depth=2)
    (h,) = vit_kmeans_hierarchies(model, torch.randn(1, 3, 64, 64), None, (8, 4, 2, 2))
    assert h.meta["level0"] == "patch grid" and h.num_segments(0) == 16 and h.is_nested()
    assert np.array_equal(h.label_map(0)[::16, ::16], np.arange(16).reshape(4, 4))


def test_a_merging_model_is_refused():
    torch.manual_seed(0)
    tome = castvit.create_model("tome_small", **TINY, depth=[2, 1, 1, 1], num_clusters=[16, 8, 4, 2])
    side = torch.arange(64) // 8
    sp = (side[:, None] * 8 + side[None])[None]
    with pytest.raises(ValueError, match="r=0"):
        vit_kmeans_hierarchies(tome, torch.randn(1, 3, 64, 64), sp, (16, 8, 4, 2))

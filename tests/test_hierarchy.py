"""castvit.segment and Hierarchy: nesting, SAM-like records, contour map, pictures,
saving, and the resolution policy for images of any size."""

import numpy as np
import pytest
import torch
from skimage import data

import castvit
from castvit.hierarchy import Hierarchy
from castvit.inference import (HierarchyPredictor, auto_size, check_image_size, min_image_pixels, sample_labels,
                               segment, working_size)
from castvit.viz import overlay, plot_hierarchy
from castvit.ops import label_boundaries

# 16/8/4/2 clusters: images of 64×64 px and up work, and everything runs in a blink.
TINY = dict(img_size=64, embed_dim=48, num_heads=4, pool_num_heads=4, depth=[1, 1, 1, 1],
            num_clusters=[16, 8, 4, 2], num_classes=10)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return castvit.create_model("cast_small", **TINY).eval()


@pytest.fixture(scope="module")
def photo():
    """A real photograph at an awkward size (not a multiple of 8)."""
    return np.ascontiguousarray(data.coffee()[::4, ::4][:99, :147])


@pytest.fixture(scope="module")
def hierarchy(model, photo):
    return segment(model, photo, size=64, n_segments=60)


def test_segment_returns_maps_at_the_image_resolution(hierarchy, photo):
    assert hierarchy.shape == photo.shape[:2]
    assert hierarchy.num_levels == 5
    for lab in hierarchy.label_maps():
        assert lab.shape == photo.shape[:2]


def test_every_pixel_has_a_label_at_every_level(hierarchy):
    for lab in hierarchy.label_maps():
        assert lab.min() >= 0


def test_levels_are_strictly_nested(hierarchy):
    assert hierarchy.is_nested()
    maps = hierarchy.label_maps()
    for fine, coarse in zip(maps, maps[1:]):
        for sid in np.unique(fine):
            assert np.unique(coarse[fine == sid]).size == 1


def test_segment_counts_are_the_clusters_the_model_uses(model, hierarchy):
    # independent count: the clusters that the composed argmax assignments of the
    # tokens actually reach, level by level
    work = torch.from_numpy(sample_labels(hierarchy.superpixels, *hierarchy.meta["working_size"]))[None]
    x = castvit.ops.normalize_images(resize_to(hierarchy.image, *hierarchy.meta["working_size"]))
    with torch.no_grad():
        feats = model.forward_features(x, work)
    owners = np.unique(work[0, ::8, ::8].numpy())
    assign = owners
    for s in range(1, 5):
        assign = feats[f"logit{s}"][0].argmax(-1).numpy()[assign]
        assert hierarchy.num_segments(s) == np.unique(assign).size <= [16, 8, 4, 2][s - 1]
    assert hierarchy.num_segments(0) == np.unique(hierarchy.superpixels).size


def resize_to(image, h, w):
    from castvit.inference import resize_image

    return resize_image(image, h, w)


def test_masks_are_sam_like_records_that_tile_the_image(hierarchy):
    for level in range(hierarchy.num_levels):
        lab = hierarchy.label_map(level)
        records = hierarchy.masks(level)
        assert {"id", "level", "segmentation", "area", "bbox", "parent", "children"} <= set(records[0])
        cover = np.zeros(lab.shape, dtype=int)
        for r in records:
            m = r["segmentation"]
            assert m.dtype == bool and m.shape == lab.shape
            assert np.array_equal(m, lab == r["id"])
            assert r["area"] == m.sum()
            ys, xs = np.nonzero(m)
            assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            cover += m
        assert (cover == 1).all()


def test_mask_parents_and_children_agree_with_the_next_levels(hierarchy):
    top = hierarchy.num_levels - 1
    for level in range(hierarchy.num_levels):
        coarse = hierarchy.label_map(level + 1) if level < top else None
        fine = hierarchy.label_map(level - 1) if level > 0 else None
        for r in hierarchy.masks(level):
            if coarse is None:
                assert r["parent"] is None
            else:
                assert np.unique(coarse[r["segmentation"]]).tolist() == [r["parent"]]
            expected = sorted(np.unique(fine[r["segmentation"]]).tolist()) if fine is not None else []
            assert r["children"] == expected


def test_segments_are_masks_without_pixels(hierarchy):
    for level in range(hierarchy.num_levels):
        with_masks = hierarchy.masks(level)
        for rec in with_masks:
            del rec["segmentation"]
        assert hierarchy.segments(level) == with_masks


def test_ancestors_follow_the_parents(hierarchy):
    lab = hierarchy.label_maps()
    y, x = 10, 20
    assert hierarchy.ancestors(1, lab[1][y, x]) == [int(lab[s][y, x]) for s in range(2, 5)]
    assert hierarchy.ancestors(4, lab[4][y, x]) == []


def test_boundary_map_is_ultrametric(hierarchy):
    ucm = hierarchy.boundary_map()
    assert ucm.dtype == np.int8 and ucm.shape == hierarchy.shape
    assert ucm.min() >= -1 and ucm.max() <= hierarchy.num_levels - 1
    for level, lab in enumerate(hierarchy.label_maps()):
        # thresholding at a level gives exactly that level's boundaries
        assert np.array_equal(ucm >= level, label_boundaries(lab))


def test_overlay_paints_segment_mean_colours_and_white_boundaries(hierarchy, photo):
    level = 2
    lab = hierarchy.label_map(level)
    over = overlay(hierarchy, level)
    assert over.shape == photo.shape and over.dtype == np.uint8
    edge = label_boundaries(lab)
    assert (over[edge] == 255).all()
    sid = np.bincount(lab[~edge]).argmax()
    inside = (lab == sid) & ~edge
    mean = np.round(photo[lab == sid].mean(0)).astype(np.uint8)
    assert (over[inside] == mean).all()


def test_plot_draws_the_image_and_every_level(hierarchy):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plot_hierarchy(hierarchy)
    try:
        titles = [ax.get_title() for ax in fig.axes]
        assert titles[0] == "image"
        assert [t.split(":")[0] for t in titles[1:]] == [f"level {s}" for s in range(5)]
    finally:
        plt.close(fig)


def test_npz_round_trip_keeps_everything(hierarchy, tmp_path):
    path = tmp_path / "h.npz"
    hierarchy.save_npz(path)
    back = Hierarchy.load_npz(path)
    assert np.array_equal(back.superpixels, hierarchy.superpixels)
    assert all(np.array_equal(a, b) for a, b in zip(back.parents, hierarchy.parents))
    assert np.array_equal(back.image, hierarchy.image)
    assert back.meta == hierarchy.meta
    with np.load(path) as z:
        assert np.array_equal(z["labels"], np.stack(hierarchy.label_maps()))
        assert np.array_equal(z["boundary_map"], hierarchy.boundary_map())


def test_load_npz_refuses_other_files(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a castvit hierarchy"):
        Hierarchy.load_npz(tmp_path / "x.npz")


# ------------------------------------------------------------------ resolution policy
@pytest.mark.parametrize("hw,size", [((480, 640), 224), ((300, 451), 224), ((100, 1000), 224), ((512, 512), 224),
                                     ((99, 147), None), ((224, 224), None)])
def test_working_size_is_multiples_of_8_with_the_requested_area(hw, size):
    h, w = working_size(*hw, size)
    assert h % 8 == 0 and w % 8 == 0
    target = hw if size is None else (hw[0] * size / np.sqrt(hw[0] * hw[1]), hw[1] * size / np.sqrt(hw[0] * hw[1]))
    assert abs(h - target[0]) <= 4 and abs(w - target[1]) <= 4


def test_native_size_of_multiples_of_8_runs_the_model_unchanged(model):
    img = np.ascontiguousarray(data.astronaut()[::4, ::4])  # 128×128
    sp = HierarchyPredictor(model, size=None, n_segments=100, superpixel_resolution="full").compute_superpixels(img)
    h = segment(model, img, superpixels=sp, size=None)
    x = castvit.ops.normalize_images(torch.from_numpy(img[None]).permute(0, 3, 1, 2))
    with torch.no_grad():
        feats = model.forward_features(x, torch.from_numpy(sp[None]))
    ref = Hierarchy.from_outputs(feats, torch.from_numpy(sp[None]))[0]
    assert h.meta["working_size"] == [128, 128]
    for s in range(5):
        assert np.array_equal(h.label_map(s), ref.label_map(s))


def test_superpixels_lost_by_resizing_inherit_a_segment(model):
    img = np.ascontiguousarray(data.chelsea()[::2, ::2])  # 150×226
    H, W = img.shape[:2]
    h_w, w_w = working_size(H, W, 64)
    sp = HierarchyPredictor(model, size=None, n_segments=80, superpixel_resolution="full").compute_superpixels(img)
    # a one-pixel superpixel between the pixels the working copy samples
    sampled_rows = set(((np.arange(h_w) + 0.5) * H / h_w).astype(int))
    sampled_cols = set(((np.arange(w_w) + 0.5) * W / w_w).astype(int))
    y = next(r for r in range(H // 2, H) if r not in sampled_rows)
    x = next(c for c in range(W // 2, W) if c not in sampled_cols)
    lost = int(sp.max()) + 1
    sp[y, x] = lost
    h = segment(model, img, superpixels=sp, size=64)
    work = sample_labels(sp, h_w, w_w)
    assert lost not in work
    assert h.parents[0][lost] >= 0
    assert h.label_map(1).min() >= 0 and h.is_nested()
    # it joins the segment of the token owning the working cell it falls in
    owner = work[::8, ::8][(y * h_w // H) // 8, (x * w_w // W) // 8]
    assert h.label_map(1)[y, x] == h.segment_of(1)[owner]


def test_images_of_different_sizes_batch_like_single_calls(model):
    a = np.ascontiguousarray(data.coffee()[::5, ::5])
    b = np.ascontiguousarray(data.rocket()[::5, ::5])
    both = segment(model, [a, b], size=64, n_segments=60)
    for img, h in zip([a, b], both):
        alone = segment(model, img, size=64, n_segments=60)
        assert all(np.array_equal(h.label_map(s), alone.label_map(s)) for s in range(5))


def test_image_too_small_names_the_minimum(model):
    need = min_image_pixels(model)  # 16 clusters -> 1024 px
    assert need == 16 * 64
    with pytest.raises(ValueError, match=r"at least 1024 pixels \(e\.g\. 32×32\)"):
        check_image_size(model, 20, 30)
    with pytest.raises(ValueError, match="sides of at least 16 px"):
        segment(model, np.zeros((8, 400, 3), np.uint8))


def test_superpixels_of_another_size_are_refused(model, photo):
    with pytest.raises(ValueError, match="must match"):
        segment(model, photo, superpixels=np.zeros((64, 64), np.int64))


def test_from_outputs_without_images_gives_random_colour_overlays(model):
    img = np.ascontiguousarray(data.astronaut()[::4, ::4])
    h = segment(model, img, n_segments=100)
    bare = Hierarchy(h.superpixels, h.parents)
    assert overlay(bare, 1).shape == img.shape
    with pytest.raises(ValueError, match="no image"):
        bare.segment_colors(1)


def test_auto_size_is_what_the_model_was_built_for(model, photo):
    assert auto_size(model) == 64
    h = segment(model, photo, size="auto", n_segments=60)
    assert h.meta["working_size"] == list(working_size(*photo.shape[:2], 64))
    with pytest.raises(ValueError, match="size must be None, 'auto'"):
        segment(model, photo, size="big")

"""castvit.ucm: hierarchies ↔ BSDS-style ultrametric contour maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import data

import castvit
from castvit.eval import is_nested
from castvit.eval.bsds import seg2bdry
from castvit.ucm import level_thresholds, levels_to_ucm, ucm_boundaries, ucm_to_levels

TINY = dict(img_size=64, embed_dim=48, num_heads=4, pool_num_heads=4, depth=[1, 1, 1, 1],
            num_clusters=[16, 8, 4, 2], num_classes=10)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when the maps agree up to a renaming of labels."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(pairs[0]) == len(np.unique(a)) == len(np.unique(b))


def connected_pieces(labels: np.ndarray) -> np.ndarray:
    """Each segment split into its 4-connected pieces."""
    out = np.zeros(labels.shape, dtype=np.int64)
    nxt = 0
    for lab in np.unique(labels):
        pieces, n = ndimage.label(labels == lab)
        out[pieces > 0] = pieces[pieces > 0] + nxt
        nxt += n
    return out


def block_hierarchy(seed: int = 0) -> list[np.ndarray]:
    """Nested levels of connected segments on a 24×30 grid: 6×6 blocks merged in strips."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:24, :30]
    fine = (rows // 6) * 5 + cols // 6  # 20 blocks of 6×6
    fine = rng.permutation(20)[fine]
    level1 = (rows // 6) * 3 + np.minimum(cols // 12, 2)  # blocks paired along rows
    level2 = (rows // 12) * 3 + np.minimum(cols // 12, 2)
    level3 = (cols >= 12).astype(np.int64)
    return [fine, level1 * 7 + 100, level2, level3]


def test_values_are_the_level_at_which_each_boundary_disappears():
    levels = [np.array([[0, 1, 2, 3]]), np.array([[0, 0, 2, 2]]), np.array([[5, 5, 5, 6]])]
    ucm = levels_to_ucm(levels)
    assert ucm.shape == (3, 9)
    # edges between pixels sit at row 1, columns 2, 4, 6
    np.testing.assert_allclose(ucm[1, [2, 4, 6]], [1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(ucm[1, 1::2], 0.0)  # pixels
    assert ucm.min() == 0.0 and ucm.max() == 1.0


def test_the_boundaries_of_every_cut_are_seg2bdry_of_its_level():
    levels = block_hierarchy()
    ucm = levels_to_ucm(levels)
    for lvl, t in zip(levels, level_thresholds(len(levels))):
        np.testing.assert_array_equal(ucm_boundaries(ucm, t), seg2bdry(lvl))
        np.testing.assert_array_equal(ucm[2::2, 2::2] >= t, seg2bdry(lvl))


def test_cutting_at_the_level_thresholds_gives_every_level_back():
    levels = block_hierarchy()
    assert all(is_nested(a, b) for a, b in zip(levels, levels[1:]))
    back = ucm_to_levels(levels_to_ucm(levels), thresholds=level_thresholds(len(levels)))
    assert len(back) == len(levels)
    for want, got in zip(levels, back):
        assert got.shape == want.shape and got.dtype == np.int32
        assert same_partition(want, got)
    assert all(same_partition(a, b) for a, b in zip(levels, ucm_to_levels(levels_to_ucm(levels))))


def test_cutting_at_segment_counts_finds_the_level_with_that_many_segments():
    levels = block_hierarchy()
    ucm = levels_to_ucm(levels)
    counts = [len(np.unique(m)) for m in levels]  # 20, 12, 6, 2
    for want, got in zip(levels, ucm_to_levels(ucm, counts=counts)):
        assert same_partition(want, got)
    coarse = ucm_to_levels(ucm, counts=[1, 13, 1000])
    assert [len(np.unique(m)) for m in coarse] == [1, 12, 20]  # nearest count; ties go to the finer cut


@pytest.fixture(scope="module")
def hierarchy():
    torch.manual_seed(0)
    model = castvit.create_model("cast_small", **TINY)
    photo = np.ascontiguousarray(data.coffee()[::4, ::4])  # 100×150
    return castvit.segment(model, photo)


def test_hierarchy_to_ucm_round_trips(hierarchy):
    ucm = hierarchy.to_ucm()
    h, w = hierarchy.shape
    assert ucm.shape == (2 * h + 1, 2 * w + 1)
    assert 0.0 <= ucm.min() and ucm.max() <= 1.0
    back = ucm_to_levels(ucm, thresholds=level_thresholds(hierarchy.num_levels))
    for s, got in enumerate(back):
        # a UCM region is connected, so a segment in pieces comes back as its pieces
        assert same_partition(connected_pieces(hierarchy.label_map(s)), got), s


def test_ucm_of_connected_segments_gives_the_exact_levels_back(hierarchy):
    # make every segment connected first: split each level-0 segment into pieces and
    # let the coarser levels follow, so the hierarchy stays nested
    pieces = connected_pieces(hierarchy.label_map(0))
    levels = [pieces]
    for s in range(1, hierarchy.num_levels):
        lab = hierarchy.label_map(s)
        levels.append(connected_pieces(lab))
    if not all(is_nested(a, b) for a, b in zip(levels, levels[1:])):
        pytest.skip("pieces of this hierarchy are not nested")
    back = ucm_to_levels(levels_to_ucm(levels), thresholds=level_thresholds(len(levels)))
    assert all(same_partition(a, b) for a, b in zip(levels, back))


def test_ucm_input_errors_are_explained():
    with pytest.raises(ValueError, match=r"\(2H\+1\)×\(2W\+1\)"):
        ucm_to_levels(np.zeros((4, 5)))
    with pytest.raises(ValueError, match="not both"):
        ucm_to_levels(np.zeros((5, 5)), thresholds=[0.5], counts=[2])
    with pytest.raises(ValueError, match="one size"):
        levels_to_ucm([np.zeros((3, 3), int), np.zeros((3, 4), int)])
    with pytest.raises(ValueError, match="integer labels"):
        levels_to_ucm([np.zeros((3, 3))])

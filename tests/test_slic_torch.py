"""castvit.slic_torch: batched torch SLIC (labels, determinism, quality, connectivity).

Every behaviour runs on the CPU and, under ``-m cuda`` where a GPU exists, on CUDA.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import skimage.color
import skimage.data
import torch
from scipy import ndimage
from skimage.transform import resize

from castvit.slic_torch import _Cells, rgb_to_lab, slic_torch, slic_torch_grid
from castvit.superpixels import compute_superpixels, compute_superpixels_single

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda,
                                pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]),
]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    """One intra-op thread: on a loaded 2-core machine OpenMP barriers make these
    small-tensor calls 30× slower with two; the labels are the same either way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@lru_cache(maxsize=None)
def _photos(height: int, width: int) -> np.ndarray:
    names = ("astronaut", "coffee", "chelsea", "rocket")
    return np.stack([resize(getattr(skimage.data, n)(), (height, width), preserve_range=True,
                            anti_aliasing=True).astype(np.uint8) for n in names])


def photos(height: int = 64, width: int = 64, device: str = "cpu") -> torch.Tensor:
    """Four real photos as a ``4×3×H×W`` uint8 tensor."""
    return torch.from_numpy(_photos(height, width)).permute(0, 3, 1, 2).contiguous().to(device)


def regions_image(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 96×96 image of 6 flat-coloured regions (rectangles and discs) with mild noise,
    and its region map."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((96, 96), dtype=np.int64)
    gt[:, 40:] = 1
    gt[60:, :] = 2
    yy, xx = np.mgrid[:96, :96]
    gt[(yy - 30) ** 2 + (xx - 70) ** 2 < 15 ** 2] = 3
    gt[(yy - 75) ** 2 + (xx - 25) ** 2 < 12 ** 2] = 4
    gt[10:30, 8:30] = 5
    colours = np.array([[200, 40, 40], [40, 180, 60], [50, 60, 200], [230, 220, 50], [120, 30, 160], [20, 20, 20]])
    image = colours[gt] + rng.normal(0, 4, (96, 96, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), gt


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another label."""
    b = np.zeros(labels.shape, dtype=bool)
    b[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    b[:-1] |= labels[:-1] != labels[1:]
    return b


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize("size, n_segments", [((64, 64), 36), ((50, 70), 24), ((48, 96), 100)])
def test_labels_are_contiguous_int64_and_at_most_k(device, size, n_segments):
    labels = slic_torch(photos(*size, device=device), n_segments)
    assert labels.shape == (4, *size) and labels.dtype == torch.int64 and labels.device.type == device
    for lab in labels.cpu():
        ids = torch.unique(lab)
        assert torch.equal(ids, torch.arange(len(ids))), "ids must be 0..K_b-1 with none unused"
        assert len(ids) <= n_segments


def test_fixed_k_keeps_grid_ids_below_k_and_renumbers_to_the_default(device):
    images = photos(device=device)
    fixed = slic_torch(images, 36, fixed_k=True).cpu()
    default = slic_torch(images, 36).cpu()
    assert int(fixed.max()) < 36 and int(fixed.min()) >= 0
    for f, d in zip(fixed, default):
        _, renumbered = torch.unique(f, return_inverse=True)  # sorted ids → ranks, the grid order kept
        assert torch.equal(renumbered, d)


def test_grid_has_at_most_k_square_ish_cells():
    assert slic_torch_grid(224, 224, 196) == (14, 14)
    assert slic_torch_grid(512, 512, 1024) == (32, 32)
    for h, w, k in [(321, 481, 196), (50, 70, 24), (8, 200, 10), (300, 40, 64)]:
        gh, gw = slic_torch_grid(h, w, k)
        assert 1 <= gh * gw <= k and gh <= h and gw <= w


def test_without_connectivity_every_grid_cell_keeps_its_centre_on_flat_images(device):
    flat = torch.full((2, 3, 64, 64), 128, dtype=torch.uint8, device=device)
    labels = slic_torch(flat, 16, connectivity=False, fixed_k=True).cpu()
    expected = (torch.arange(64) // 16)[:, None] * 4 + (torch.arange(64) // 16)[None, :]
    assert torch.equal(labels[0], expected) and torch.equal(labels[1], expected)


# --------------------------------------------------------------------------- determinism


def test_same_input_gives_same_labels(device):
    images = photos(device=device)
    assert torch.equal(slic_torch(images, 36), slic_torch(images, 36))


def test_labels_do_not_depend_on_the_cpu_thread_count():
    images = photos()
    one = slic_torch(images, 36)
    torch.set_num_threads(2)
    assert torch.equal(slic_torch(images, 36), one)


def test_an_image_gets_the_same_labels_alone_and_in_a_batch(device):
    images = photos(device=device)
    batch = slic_torch(images, 36)
    for b in range(len(images)):
        assert torch.equal(slic_torch(images[b:b + 1], 36)[0], batch[b])


def test_uint8_float_and_channels_last_inputs_agree(device):
    images = photos(device=device)
    reference = slic_torch(images, 36)
    assert torch.equal(slic_torch(images.float() / 255, 36), reference)
    assert torch.equal(slic_torch(images.permute(0, 2, 3, 1), 36), reference)


# --------------------------------------------------------------------------- algorithm pieces


def test_lab_matches_scikit_image(device):
    rgb = torch.from_numpy(_photos(32, 32)[0]).float() / 255
    ours = rgb_to_lab(rgb.permute(2, 0, 1)[None].to(device))[0].permute(1, 2, 0).cpu().numpy()
    reference = skimage.color.rgb2lab(rgb.numpy())  # D65; white point differs from ours in the 5th digit
    assert np.abs(ours - reference).max() < 0.05


def test_each_pixel_takes_the_nearest_of_the_3x3_centres_around_its_cell(device):
    images = photos(40, 56, device=device)  # 4×6 cells of 10×10 (rows padded by none, columns by 4)
    lab = rgb_to_lab(images.float() / 255)
    scale = 20 / 10
    cells = _Cells(lab, 4, 5, scale, stride=1)
    centres = cells.initial_centres() + torch.randn(4, 4, 5, 5, device=device)  # off-grid centres
    slot = cells.assign(centres, cells.full)
    # Brute force: every pixel against the 9 centres, in global coordinates.
    labels = cells.labels(slot).cpu()
    ys, xs = torch.meshgrid(torch.arange(40.0), torch.arange(56.0), indexing="ij")
    pix = torch.cat((lab.cpu(), (ys * scale)[None, None].expand(4, 1, -1, -1),
                     (xs * scale)[None, None].expand(4, 1, -1, -1)), dim=1)
    cell_h, cell_w = cells.cell_h, cells.cell_w
    c = centres.cpu()
    for b in range(4):
        for y in range(0, 40, 3):
            for x in range(0, 56, 5):
                gy, gx = y // cell_h, x // cell_w
                best, best_id = None, None
                for ny in range(max(gy - 1, 0), min(gy + 2, 4)):
                    for nx in range(max(gx - 1, 0), min(gx + 2, 5)):
                        d = float(((pix[b, :, y, x] - c[b, ny, nx]) ** 2).sum())
                        if best is None or d < best - 1e-3:
                            best, best_id = d, ny * 5 + nx
                chosen = int(labels[b, y, x])
                d_chosen = float(((pix[b, :, y, x] - c[b, chosen // 5, chosen % 5]) ** 2).sum())
                assert chosen == best_id or abs(d_chosen - best) < 1e-2 * max(1.0, best)


# --------------------------------------------------------------------------- quality and connectivity


def test_superpixels_follow_known_region_boundaries(device):
    image, gt = regions_image()
    labels = slic_torch(torch.from_numpy(image)[None].to(device), 36)[0].cpu().numpy()
    near = ndimage.binary_dilation(boundaries(labels), structure=np.ones((3, 3), dtype=bool))
    gt_boundary = boundaries(gt)
    recall = (gt_boundary & near).sum() / gt_boundary.sum()
    # ASA: each superpixel counted by its majority region.
    overlap = np.zeros((labels.max() + 1, gt.max() + 1), dtype=np.int64)
    np.add.at(overlap, (labels.ravel(), gt.ravel()), 1)
    asa = overlap.max(1).sum() / gt.size
    assert recall >= 0.95, recall
    assert asa >= 0.98, asa


@pytest.mark.parametrize("compactness", [1.0, 20.0])
def test_connectivity_makes_every_id_one_4_connected_segment(device, compactness):
    for labels in slic_torch(photos(device=device), 36, compactness=compactness).cpu().numpy():
        for i in np.unique(labels):
            assert ndimage.label(labels == i)[1] == 1, f"id {i} is split"


def test_connectivity_only_moves_whole_fragments(device):
    """Without the step SLIC at low compactness leaves split ids; the step reassigns
    whole 4-connected fragments, so each fragment lands in exactly one final id."""
    images = photos(device=device)
    raw = slic_torch(images, 36, compactness=1.0, connectivity=False, fixed_k=True).cpu().numpy()
    fixed = slic_torch(images, 36, compactness=1.0, fixed_k=True).cpu().numpy()
    split = 0
    for r, f in zip(raw, fixed):
        for i in np.unique(r):
            components, n = ndimage.label(r == i)
            split += n > 1
            for c in range(1, n + 1):
                assert len(np.unique(f[components == c])) == 1
    assert split > 0, "the test needs fragmented raw SLIC output"


def test_small_segments_are_merged_with_min_size_factor(device):
    images = photos(device=device)
    cell = 64 * 64 / 36
    sizes = [np.bincount(l.ravel()) for l in slic_torch(images, 36, min_size_factor=0.5).cpu().numpy()]
    assert all(s.min() >= int(0.5 * cell) for s in sizes)


def test_stride_one_is_textbook_slic_and_close_to_stride_two(device):
    images = photos(device=device)
    one, two = slic_torch(images, 36, stride=1), slic_torch(images, 36, stride=2)
    assert (one == two).float().mean() > 0.8


# --------------------------------------------------------------------------- API and errors


def test_compute_superpixels_dispatches_slic_torch(device):
    images = photos(device=device)
    out = compute_superpixels(images, "slic_torch", 36)
    assert torch.equal(out, slic_torch(images, 36))
    single = compute_superpixels_single(images[0].cpu(), "slic_torch", 36)
    assert isinstance(single, np.ndarray) and np.array_equal(single, out[0].cpu().numpy())
    as_list = compute_superpixels(list(images.cpu().permute(0, 2, 3, 1).numpy()), "slic_torch", 36)
    assert torch.equal(as_list, out.cpu())


@pytest.mark.parametrize("images, kwargs, message", [
    (torch.zeros(3, 32, 32, dtype=torch.uint8), {}, "batch axis"),
    (torch.zeros(1, 4, 32, 32, dtype=torch.uint8), {}, "3 RGB channels"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.int32), {}, "uint8"),
    (torch.full((1, 3, 32, 32), 2.0), {}, "before mean/std normalisation"),
    (torch.full((1, 3, 32, 32), float("nan")), {}, "NaN"),
    (torch.zeros(1, 3, 4, 32), {}, "at least 8×8"),
    (torch.zeros(1, 3, 32, 32), {"n_segments": 0}, "n_segments"),
    (torch.zeros(1, 3, 32, 32), {"compactness": -1.0}, "compactness"),
    (torch.zeros(1, 3, 32, 32), {"iterations": 0}, "iterations"),
    (torch.zeros(1, 3, 32, 32), {"stride": 0}, "stride"),
    (torch.zeros(1, 3, 32, 32), {"min_size_factor": 2.0}, "min_size_factor"),
])
def test_bad_input_is_refused_with_a_fix(images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        slic_torch(images, **kwargs)

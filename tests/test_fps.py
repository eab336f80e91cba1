"""Farthest point sampling: the semantics of SPEC §2.5 against a brute-force reference."""

import numpy as np
import pytest
import torch

from castvit.models import farthest_point_sampling


def reference_fps(points: np.ndarray, k: int, start: int = 0) -> list[int]:
    """Textbook FPS, one point at a time, direct squared differences in float64."""
    pts = points.astype(np.float64)
    chosen = [start]
    dist = np.full(len(pts), np.inf)
    for _ in range(k - 1):
        dist = np.minimum(dist, ((pts - pts[chosen[-1]]) ** 2).sum(1))
        chosen.append(int(np.argmax(dist)))  # first maximum: ties to the lowest index
    return chosen


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_reference_on_random_points(seed):
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(3, 50, 7)).astype(np.float32)
    out = farthest_point_sampling(torch.from_numpy(pts), 12)
    for b in range(3):
        assert out[b].tolist() == reference_fps(pts[b], 12)


def test_ties_go_to_the_lowest_index():
    # Four corners of a square around the start point: all four tie at distance 2, so
    # index 1 wins; then the other three tie again at min-distance 2, so index 2 wins.
    pts = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]]])
    assert farthest_point_sampling(pts, 3).tolist() == [[0, 1, 2]]


def test_starts_at_the_given_index():
    pts = torch.randn(2, 10, 3)
    assert (farthest_point_sampling(pts, 4, start_idx=5)[:, 0] == 5).all()


def test_runs_in_float64_whatever_the_input_dtype():
    # Two candidates whose distances differ below float32 resolution.
    base = np.zeros((1, 3, 1))
    base[0, 1, 0] = 1e8
    base[0, 2, 0] = -1e8 - 2.0
    out = farthest_point_sampling(torch.from_numpy(base), 2)
    assert out.tolist() == [[0, 2]]


def test_excluded_points_are_never_picked():
    pts = torch.randn(2, 20, 4)
    exclude = torch.zeros(2, 20, dtype=torch.bool)
    exclude[:, 10:] = True
    out = farthest_point_sampling(pts, 10, exclude=exclude)
    assert (out < 10).all()
    assert all(len(set(row)) == 10 for row in out.tolist())


def test_no_point_is_picked_twice_even_with_duplicates():
    pts = torch.zeros(1, 6, 2)
    pts[0, 1] = 1.0
    out = farthest_point_sampling(pts, 6)[0].tolist()
    assert sorted(out) == list(range(6))


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="B×N×D"):
        farthest_point_sampling(torch.randn(5, 3), 2)
    with pytest.raises(ValueError, match=r"num_samples must be in \[1, 5\]"):
        farthest_point_sampling(torch.randn(1, 5, 3), 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    pts = torch.randn(4, 200, 32)
    assert torch.equal(farthest_point_sampling(pts.cuda(), 65).cpu(), farthest_point_sampling(pts, 65))

import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(os.environ.get("CASTVIT_FIXTURES", Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "official"))

# Tiny configuration of the reference fixtures (shared/fixtures/official/README.md).
TINY = dict(img_size=64, embed_dim=48, depth=[2, 1, 1, 1], num_heads=4, num_clusters=[16, 8, 4, 2], num_classes=10)


def load_fixture(name: str) -> dict:
    path = FIXTURES / name
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"reference fixture {path} is missing (set CASTVIT_FIXTURES)")
        pytest.skip(f"reference fixture {path} not found; set CASTVIT_FIXTURES")
    return torch.load(path, map_location="cpu")


def close(actual: torch.Tensor, ref: torch.Tensor) -> None:
    """The fixture tolerance: floats within 1e-4·max(1, max|ref|); integers and bools exactly."""
    assert actual.shape == ref.shape, f"shape {tuple(actual.shape)} != {tuple(ref.shape)}"
    if ref.dtype in (torch.bool, torch.int64, torch.int32):
        assert torch.equal(actual.to(ref.dtype), ref)
    else:
        tol = 1e-4 * max(1.0, ref.abs().max().item())
        err = (actual.float() - ref.float()).abs().max().item()
        assert err <= tol, f"max error {err:.3e} > {tol:.3e}"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core CPU run fastest, and steadiest, on one thread (two
    threads spin against each other when other work competes for the cores). A test
    module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield

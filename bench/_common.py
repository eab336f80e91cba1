"""Shared pieces of the benchmark scripts: inputs, clocks, machine facts, JSON output.

The scripts are meant to be run from a fresh install, e.g. ``python bench/throughput.py``;
nothing here is imported by castvit itself.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REFERENCE_PEAK_GFLOPS = 170.0  # fp32 2048² matmul peak of the 2-core machine (issue 6)


# ----------------------------------------------------------------------------- inputs


def natural_images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """``batch×size×size×3`` uint8 RGB crops of scikit-image's bundled photographs
    (random square crops, area-resized), so SEEDS sees natural image statistics."""
    import cv2
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(batch):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        side = int(min(h, w) * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = np.ascontiguousarray(src[y:y + side, x:x + side, :3])
        if rng.random() < 0.5:
            crop = np.ascontiguousarray(crop[:, ::-1])
        out.append(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA))
    return np.stack(out)


def model_inputs(batch: int, size: int, n_segments: int = 196, seed: int = 0,
                 device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Normalised images ``B×3×H×W``, SEEDS superpixels ``B×H×W`` (the pre-training
    preset) and facts about them (labels per image, labels kept on the 8-px grid)."""
    from castvit.ops import normalize_images
    from castvit.superpixels import PRETRAIN_SEEDS, compute_superpixels

    rgb = natural_images(batch, size, seed)
    superpixels = compute_superpixels(rgb, "seeds", n_segments, histogram_bins=PRETRAIN_SEEDS.histogram_bins,
                                      num_iterations=PRETRAIN_SEEDS.num_iterations)
    images = normalize_images(torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous())
    grid = superpixels[:, ::8, ::8].reshape(batch, -1)
    info = {
        "labels_per_image": [int(s.max()) + 1 for s in superpixels],
        "labels_on_token_grid": [int(torch.unique(g).numel()) for g in grid],
        "tokens": int(superpixels.max()) + 1,
    }
    return images.to(device), superpixels.to(device), info


# ----------------------------------------------------------------------------- clocks


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


#: The clock of :func:`timed`: wall time, or (``use_thread_clock``) this thread's CPU time.
_clock: Callable[[], float] = time.perf_counter


def use_thread_clock(enabled: bool) -> None:
    """With one CPU thread, time by the thread's CPU clock, which ignores time spent
    descheduled and so survives a busy machine (it would miss other threads' work)."""
    global _clock
    if enabled and torch.get_num_threads() != 1:
        raise ValueError("the thread CPU clock needs torch.set_num_threads(1)")
    _clock = time.thread_time if enabled else time.perf_counter


def now() -> float:
    """The current reading of the clock :func:`timed` uses."""
    return _clock()


def timed(fn: Callable[[], Any], device: str) -> float:
    """Seconds of one call (device work included), by the clock of :func:`use_thread_clock`."""
    synchronize(device)
    start = _clock()
    fn()
    synchronize(device)
    return _clock() - start


class MatmulPeak:
    """Throughput of square ``size``² matmuls in one dtype: the machine's practical
    peak, re-measured next to every model timing so that load on the machine hits
    both alike."""

    def __init__(self, dtype: torch.dtype, device: str, size: int = 2048):
        self.flop = 2.0 * size ** 3
        self.device = device
        gen = torch.Generator(device="cpu").manual_seed(0)
        self.a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
        self.b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
        self.once()

    def once(self) -> float:
        """GFLOP/s of one matmul."""
        return self.flop / timed(lambda: self.a @ self.b, self.device) / 1e9


def interleaved(fns: dict[str, Callable[[], Any]], peaks: dict[str, MatmulPeak], rounds: int, warmup: int,
                device: str) -> dict[str, dict[str, float]]:
    """Time each function ``rounds`` times, round-robin, with one matmul per dtype after
    every call. Returns per function ``min_s``, ``median_s`` and per peak dtype the best
    GFLOP/s seen in the same window (``peak_<dtype>``)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    best = {k: 0.0 for k in peaks}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
            for key, peak in peaks.items():
                best[key] = max(best[key], peak.once())
    out = {}
    for name, ts in times.items():
        out[name] = {"min_s": min(ts), "median_s": float(np.median(ts)), "runs": len(ts)}
        out[name].update({f"peak_{k}_gflops": v for k, v in best.items()})
    return out


# ----------------------------------------------------------------------------- machine


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git_commit": _git_commit(),
    }
    try:
        import castvit

        info["castvit"] = castvit.__version__
    except Exception:  # pragma: no cover - a broken install shows up elsewhere
        pass
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2 ** 30, 1)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                flags = Path("/proc/cpuinfo").read_text()
                extras = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
                return f"{model} ({', '.join(extras) or 'no avx512'})"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{sha}{'+dirty' if dirty else ''}" if sha else None
    except (OSError, subprocess.SubprocessError):
        return None


def write_json(name: str, payload: dict[str, Any], out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(os, "getloadavg"):
        payload.setdefault("machine", {})["load_average_end"] = list(os.getloadavg())
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    """``columns``: (key, header, format spec)."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append(["" if row.get(k) is None else format(row[k], fmt) for k, _, fmt in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def set_threads(threads: int | None, device: str) -> None:
    if threads:
        torch.set_num_threads(threads)
    elif device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)

"""``castvit segment``: segment images into a hierarchy and write pictures, label
maps, JSON, npz and an interactive viewer.

    castvit segment photos/ extra.jpg 'shots/**/*.png' --out segs/ --checkpoint cast_small.pth

Per image (``DIR/<name>/``, see :mod:`castvit.viz.export`): a 16-bit label PNG per
level, ``contours.png`` and ``hierarchy.json`` (overlays and ``hierarchy.npz`` with
``--outputs``).
For the run: ``DIR/viewer.html`` (self-contained; open it in a browser) and
``DIR/index.json`` (every input, with its status).

Resolution policy (documented in :mod:`castvit.hierarchy` and the README):
images are read at their own size (downscaled first only when the longer side
exceeds ``--max-side``); superpixels are computed and every output is written at
that size; the model sees a resized copy of about ``--size``² pixels of area, each
side a multiple of 8, without padding.

Exit code: 0 when every input was segmented, 1 when any failed (the others are
still processed), 2 when nothing could be tried (no inputs, bad model or checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MODEL = "cast_small"
ALL_OUTPUTS = ("labels", "json", "contours", "overlays", "npz")
DEFAULT_OUTPUTS = ("labels", "json", "contours")


# ------------------------------------------------------------------ arguments
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


def _outputs(text: str) -> tuple[str, ...]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if items == ["all"]:
        return ALL_OUTPUTS
    bad = [t for t in items if t not in ALL_OUTPUTS]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"unknown output(s) {', '.join(bad) or '(none)'}; choose from "
                                         f"{', '.join(ALL_OUTPUTS)} or 'all'")
    return tuple(items)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (parser.description or "") + (
        ". Writes, per image, a 16-bit label PNG per level, contours.png and hierarchy.json into OUT/<name>/ "
        "(overlays and npz with --outputs all), and OUT/viewer.html, a self-contained interactive viewer.")
    parser.epilog = ("Exit code: 0 if every image was segmented, 1 if any failed (the others are still "
                     "processed), 2 if nothing could be tried.")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="image files, folders (their images) or glob patterns such as 'shots/**/*.jpg'")
    parser.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--model", default=None, metavar="NAME",
                        help=f"registered CAST model (default: the one stored in a castvit checkpoint, "
                             f"else {DEFAULT_MODEL}); see 'castvit models cast_*'")
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="weights: a castvit .safetensors file or any published CAST checkpoint "
                             "(MoCo, linear probe, DeiT, Segmenter, SPML). Without one the weights are random")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="constructor override, repeatable, value in YAML syntax (e.g. embed_dim=192, "
                             "depth=[1,1,1,1])")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random initialisation, so runs without a checkpoint are reproducible "
                             "(default: 0)")
    parser.add_argument("--superpixels", choices=("seeds", "slic"), default=None,
                        help="superpixel algorithm (default: the model's, seeds as in training)")
    parser.add_argument("--n-segments", type=_positive_int, default=None, metavar="N",
                        help="superpixels per image (default: the count the model was trained with at the "
                             "working size: 196 at 224², one per 256 px otherwise)")
    parser.add_argument("--size", type=_non_negative_int, default=None, metavar="N",
                        help="the model sees each image resized to about N×N pixels of area, aspect ratio kept, "
                             "sides rounded to multiples of 8 (default: the model's img_size, i.e. 224; 512 for "
                             "segmentation models; 0 = the image's own resolution). Outputs stay at full size")
    parser.add_argument("--max-side", type=_non_negative_int, default=4096, metavar="PX",
                        help="images whose longer side exceeds PX are downscaled to PX first, and all their "
                             "outputs are at that size (default: 4096; 0 = never)")
    parser.add_argument("--batch-size", type=_positive_int, default=4, metavar="N",
                        help="images per forward pass (default: 4)")
    parser.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                        help="threads for reading, superpixels and writing (default: min(4, usable CPUs))")
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="torch threads of each forward pass on a CPU, where two batches run at once "
                             "(default: half the CPUs, at least 1)")
    parser.add_argument("--device", default="auto", help="torch device: auto (cuda if available), cpu, cuda, cuda:1 …")
    parser.add_argument("--recursive", "-r", action="store_true", help="also take images in sub-folders")
    parser.add_argument("--outputs", type=_outputs, default=DEFAULT_OUTPUTS, metavar="LIST",
                        help="what to write per image, comma-separated from "
                             f"{','.join(ALL_OUTPUTS)} or 'all' (default: {','.join(DEFAULT_OUTPUTS)}); "
                             "overlays can be redrawn from labels, npz repeats the labels in one file")
    parser.add_argument("--no-viewer", action="store_true", help="do not write OUT/viewer.html")
    parser.add_argument("--viewer-max-side", type=_positive_int, default=1024, metavar="PX",
                        help="pictures in the viewer are at most PX on their longer side (default: 1024)")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only warnings and errors")


# ------------------------------------------------------------------ model
class SetupError(Exception):
    """Nothing can be segmented (model, checkpoint, device or arguments)."""


def parse_model_args(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SetupError(f"--model-arg expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise SetupError(f"--model-arg {item!r}: value is not valid YAML ({exc})") from exc
    return out


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise SetupError(f"--device {name!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SetupError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return device


def build_model(args: argparse.Namespace, say) -> tuple[Any, dict[str, Any]]:
    """The model, and what to record about it. A castvit checkpoint (``castvit train``
    output or ``.safetensors``) brings its own architecture and preprocessing; a
    published container needs ``--model`` (default cast_small)."""
    import warnings

    import torch

    from castvit.checkpoint import CheckpointError
    from castvit.models import create_model, read_pretrained_config

    overrides = parse_model_args(args.model_arg)
    torch.manual_seed(args.seed)  # random weights (no checkpoint, or a reset head) are reproducible
    name = args.model or DEFAULT_MODEL
    try:
        if args.checkpoint:
            path = Path(args.checkpoint)
            if not path.is_file():
                raise SetupError(f"checkpoint {args.checkpoint!r} does not exist")
            record = read_pretrained_config(path)
            if record is not None:
                if args.model is not None and record["name"] != args.model:
                    raise SetupError(f"checkpoint {args.checkpoint!r} holds a {record['name']!r} model, not "
                                     f"{args.model!r}; drop --model or pass the matching checkpoint")
                name = record["name"]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model = create_model(None if record is not None else name, pretrained=str(path), **overrides)
            for w in caught:
                say(f"checkpoint: {w.message}")
        else:
            model = create_model(name, **overrides)
    except CheckpointError as exc:
        raise SetupError(f"checkpoint {args.checkpoint!r}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise SetupError(f"cannot build model {name!r}: {exc}") from None
    if not hasattr(model, "min_superpixels") or not hasattr(model, "forward_features"):
        raise SetupError(f"model {name!r} has no segmentation hierarchy (it is not a CAST model); "
                         "choose one of 'castvit models cast_*'")
    return model.eval(), {"name": name, "checkpoint": str(Path(args.checkpoint).resolve()) if args.checkpoint else None,
                          "random_weights": not args.checkpoint and getattr(model, "pretrained_tag", None) is None,
                          "seed": args.seed, "overrides": overrides}


def random_weights_warning(name: str) -> str:
    bar = "!" * 78
    return (f"{bar}\n!! WARNING: no --checkpoint given, so {name} has RANDOM WEIGHTS.\n"
            "!! The hierarchy below comes from an untrained network: it is nested and covers every\n"
            "!! pixel, but its segments mean nothing about your images. Pass --checkpoint PATH (a castvit\n"
            "!! .safetensors file or a published CAST checkpoint) for real segmentations.\n"
            f"{bar}")


# ------------------------------------------------------------------ per image
@dataclass
class Job:
    index: int
    path: Path
    name: str
    loaded: Any = None  # LoadedImage
    superpixels: np.ndarray | None = None
    prepared: Any = None
    n_segments: int | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # segments per level
    seconds: float = 0.0


def unique_names(paths: list[Path]) -> list[str]:
    """Output folder names: the file stems, made safe and unique (``a``, ``a-2``, …)."""
    used: set[str] = set()
    names = []
    for p in paths:
        stem = re.sub(r"[^\w.-]+", "_", p.stem).strip("._") or "image"
        name, k = stem, 2
        while name.lower() in used or name.lower() in ("viewer", "index"):
            name, k = f"{stem}-{k}", k + 1
        used.add(name.lower())
        names.append(name)
    return names


def prepare(job: Job, *, predictor, args) -> Job:
    """Read the image and compute its superpixels (runs in a worker thread)."""
    from castvit.viz.images import ImageReadError, read_image

    t0 = time.perf_counter()
    try:
        job.loaded = read_image(job.path, max_side=args.max_side or None)
        job.notes = list(job.loaded.notes)
        job.prepared = predictor.prepare(job.loaded.rgb)
        job.superpixels = job.prepared.full_sp
        job.n_segments = job.prepared.n_requested
    except ImageReadError as exc:
        job.error = f"cannot read image: {exc}"
    except ValueError as exc:
        job.error = str(exc)
    except Exception as exc:  # noqa: BLE001 — one bad image must not stop the others; it is counted and listed
        job.error = f"{type(exc).__name__}: {exc}"
    job.seconds += time.perf_counter() - t0
    return job


def segment_jobs(jobs: list[Job], *, predictor) -> list:
    """Hierarchies for the prepared jobs, in one batched forward pass. Every input was
    checked when it was prepared, so a failure here is the model's, not one image's: it
    is not retried image by image; every image of the batch is marked failed with the
    error (counted and listed) and the run goes on."""
    t0 = time.perf_counter()
    try:
        hs = predictor.run_prepared([j.prepared for j in jobs])
    except Exception as exc:  # noqa: BLE001 — reported for every image of the batch, never swallowed
        for j in jobs:
            j.error = f"the model failed on this image's batch of {len(jobs)}: {type(exc).__name__}: {exc}"
        return [None] * len(jobs)
    for j in jobs:
        j.seconds += (time.perf_counter() - t0) / len(jobs)
    return hs


# ------------------------------------------------------------------ main
def usable_cpus() -> int:
    """CPUs this process may run on (``taskset``, container limits), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def model_threads(cpus: int) -> int:
    """Default torch threads per forward pass on a CPU: half the cores, as two batches
    run at once (:func:`model_streams`). Torch's threads wait for each other at every
    operation, so a pass spread over all the cores stalls whenever a worker (SEEDS, a
    writer) holds one of them; on a busy 2-core machine the model alone ran 8× slower
    with 2 threads than with 1."""
    return max(1, cpus // 2)


def model_streams(predictor) -> int:
    """Batches in the model at once: 2 on a CPU, 1 on a GPU. On a CPU each forward pass
    then runs on its own share of the cores with few torch threads, and the operating
    system gives the cores to whatever is ready (a forward pass, SEEDS, a writer),
    instead of one pass's threads waiting for cores taken by the workers."""
    param = next(predictor.model.parameters(), None)
    return 2 if param is None or param.device.type == "cpu" else 1


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from castvit.inference import HierarchyPredictor
    from castvit.viz.images import find_images

    def say(msg: str) -> None:
        if not args.quiet:
            tqdm.write(msg, file=sys.stdout)

    def warn(msg: str) -> None:
        tqdm.write(f"castvit segment: {msg}", file=sys.stderr)

    if args.n_segments is not None and args.n_segments > 65535:
        warn("error: --n-segments must be at most 65535 (label maps are 16-bit PNGs)")
        return 2
    if args.size is not None and 0 < args.size < 8:
        warn(f"error: --size must be 0 (native) or at least 8, got {args.size}")
        return 2
    paths, problems = find_images(args.inputs, recursive=args.recursive)
    for p in problems:
        warn(f"error: {p}")
    if not paths:
        warn("error: no images to segment")
        return 2
    try:
        device = resolve_device(args.device)
        model, model_info = build_model(args, say)
        model.to(device)
    except SetupError as exc:
        warn(f"error: {exc}")
        return 2
    if model_info["random_weights"]:
        tqdm.write(random_weights_warning(model_info["name"]), file=sys.stderr)
    predictor = HierarchyPredictor(model, size="auto" if args.size is None else (args.size or None),
                                   method=args.superpixels, n_segments=args.n_segments, batch_size=args.batch_size,
                                   num_workers=0)
    size = predictor.size
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        warn(f"error: cannot create output folder {str(out_dir)!r}: {exc}")
        return 2
    say(f"segmenting {len(paths)} image(s) with {model_info['name']} on {device}; the model sees about "
        f"{f'{size}×{size} px' if size else 'the full resolution'}, superpixels: {predictor.method}; "
        f"outputs in {out_dir}/")

    jobs = [Job(i, p, n) for i, (p, n) in enumerate(zip(paths, unique_names(paths)))]
    viewer = None
    if not args.no_viewer:
        from castvit.viz.viewer import ViewerWriter

        viewer = ViewerWriter(out_dir / "viewer.html", title=f"castvit · {len(paths)} image(s)",
                              max_side=args.viewer_max_side)
    statuses: list[dict[str, Any]] = []
    bar = tqdm(total=len(jobs), unit="img", disable=True if args.quiet else None, file=sys.stderr,
               dynamic_ncols=True)
    torch_threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(args.threads or model_threads(usable_cpus()))
    try:
        _process(jobs, predictor=predictor, args=args, out_dir=out_dir, model_info=model_info,
                 viewer=viewer, statuses=statuses, bar=bar, say=say, warn=warn)
    except BaseException:  # Ctrl-C included: leave no half-written viewer behind
        if viewer is not None:
            viewer.discard()
        raise
    finally:
        bar.close()
        torch.set_num_threads(torch_threads)
    for p in problems:
        statuses.append({"source": p.split(": ")[0], "status": "failed", "error": p})
    failed = sum(s["status"] == "failed" for s in statuses)
    if viewer is not None:
        try:
            n = viewer.close(random_weights=model_info["random_weights"])
            if n:
                say(f"viewer: {out_dir / 'viewer.html'} ({n} image(s); open it in a browser)")
        except OSError as exc:
            failed += 1
            warn(f"error: cannot write the viewer: {exc}")
    index = {"format": "castvit-segment-index/1", "model": model_info, "images": statuses}
    (out_dir / "index.json").write_text(json.dumps(index, indent=2))
    ok = sum(s["status"] == "ok" for s in statuses)
    summary = f"{ok} image(s) segmented, {failed} failed"
    if failed:
        warn(summary)
    else:
        say(summary)
    if model_info["random_weights"]:
        warn("reminder: the weights were RANDOM (no --checkpoint); the segments are not meaningful")
    return 1 if failed else 0


def _process(jobs: list[Job], *, predictor, args, out_dir: Path, model_info: dict[str, Any],
             viewer, statuses: list[dict[str, Any]], bar, say, warn) -> None:
    """A pipeline that keeps every core busy: worker threads read images and compute
    superpixels ahead of the model; on a CPU two batches run through the model at once,
    each in its own thread with half the cores' torch threads (:func:`model_streams`);
    other threads write the outputs (and encode the viewer's pictures) meanwhile.
    Results are reported as they finish; the index lists them in input order."""
    import torch

    from castvit.viz.export import write_outputs

    outputs = set(args.outputs)
    workers = args.workers or min(4, usable_cpus())
    streams = model_streams(predictor)
    window = args.batch_size * (streams + 2)
    todo = iter(jobs)
    reading: deque = deque()
    writing: deque = deque()

    def fill(pool) -> None:
        while len(reading) < window:
            job = next(todo, None)
            if job is None:
                return
            reading.append(pool.submit(prepare, job, predictor=predictor, args=args))

    def write(job: Job, h, info: dict[str, Any]):
        # one pass over the pixels gives every level's segment records, shared by
        # hierarchy.json and the viewer
        tables = h.segment_tables(colors=True)
        job.counts = [len(t) for t in tables]
        write_outputs(h, out_dir / job.name, info=info, outputs=outputs, tables=tables)
        return viewer.entry(h, name=job.name, info=info, tables=tables) if viewer is not None else None

    def report(job: Job, h=None) -> None:
        bar.update(1)
        if job.error is not None:
            warn(f"error: {job.path}: {job.error}")
            statuses.append({"index": job.index, "source": str(job.path), "status": "failed", "error": job.error})
        else:
            levels = "/".join(map(str, job.counts))
            hh, ww = job.loaded.size
            say(f"{job.path} -> {out_dir / job.name}/  {ww}×{hh}, segments per level {levels}")
            for note in job.notes:
                say(f"    note: {note}")
            statuses.append({"index": job.index, "source": str(job.path), "status": "ok", "name": job.name,
                             "notes": job.notes})
        job.loaded = job.superpixels = job.prepared = None  # free the arrays

    def finish_writes(keep: int) -> None:
        while len(writing) > keep or (writing and writing[0][2].done()):
            job, h, fut = writing.popleft()
            try:
                entry = fut.result()
                if entry is not None:
                    viewer.add_entry(entry)
            except Exception as exc:  # noqa: BLE001 — a full disk must not hide the other images; counted and listed
                job.error = f"cannot write outputs: {type(exc).__name__}: {exc}"
            report(job, h)

    def forward(good: list[Job]) -> list:
        with torch.inference_mode():  # thread-local: entered in the thread that runs the model
            return segment_jobs(good, predictor=predictor)

    def queue_writes(good: list[Job], hs: list) -> None:
        for j, h in zip(good, hs):
            if h is None:
                report(j)
                continue
            info = {"name": j.name, "source": str(j.path.resolve()), "original_size": list(j.loaded.original_size),
                    "notes": j.notes, "model": model_info,
                    "superpixels": {"method": predictor.method, "n_segments": j.n_segments,
                                    "count": j.prepared.n_superpixels}}
            writing.append((j, h, write_pool.submit(write, j, h, info)))

    running: deque = deque()  # (jobs, future of their hierarchies), in input order
    with ThreadPoolExecutor(max_workers=workers) as read_pool, \
            ThreadPoolExecutor(max_workers=max(1, workers // 2)) as write_pool, \
            ThreadPoolExecutor(max_workers=streams) as model_pool:
        fill(read_pool)
        while reading or running:
            while reading and len(running) < streams:
                batch = []
                while reading and len(batch) < args.batch_size:
                    batch.append(reading.popleft().result())
                fill(read_pool)
                for j in batch:
                    if j.error is not None:
                        report(j)
                good = [j for j in batch if j.error is None]
                if good:
                    running.append((good, model_pool.submit(forward, good)))
            if running:
                good, fut = running.popleft()
                queue_writes(good, fut.result())
            finish_writes(keep=2 * args.batch_size)
        finish_writes(keep=0)
    statuses.sort(key=lambda r: r["index"])
    for r in statuses:
        del r["index"]

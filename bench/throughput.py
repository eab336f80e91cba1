"""Model throughput: forward and train step, fp32 and bf16 autocast, against the
machine's matmul peak measured in the same run.

    python bench/throughput.py                       # CPU, 2 threads, all four models
    python bench/throughput.py --models cast_small --quick
    python bench/throughput.py --device cuda         # GPU: adds peak memory per batch size

For every model: images/s of the forward (eval, no_grad) and of a train step (forward,
cross-entropy backward, AdamW step), FLOPs per image (``torch.utils.flop_counter``),
the achieved GFLOP/s as a fraction of the fp32 / bf16 2048² matmul peak re-measured
between the model calls, the bf16-vs-fp32 output agreement, and for CAST the share of
the forward spent in farthest point sampling. Writes
``bench/results/throughput_<device>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import _common as C
import castvit
from castvit.models import fast_cpu, graph_pool

MODELS = ["cast_small", "cast_base", "vit_conv_small_patch16", "vit_conv_small_patch8"]
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
# bf16 keeps 8 significant bits (unit roundoff 2^-8 ≈ 0.4 %); after ~15 residual blocks
# errors of a few unit roundoffs are expected, so the bf16 forward agrees with fp32 when
# the relative error of the outputs is under 5 % and their cosine similarity over 0.99.
BF16_REL_TOL = 5e-2
BF16_MIN_COSINE = 0.99

# Issue 6 §3, on the reference machine whose fp32 matmul peak is 170 GFLOP/s.
TARGETS = {"fp32_forward_img_s": 25.0, "fp32_train_img_s": 9.0, "bf16_over_fp32_forward": 2.0,
           "fps_share_max": 0.03}


def autocast(device: str, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.split(":")[0], dtype=dtype)


def make_optimizer(model: torch.nn.Module, device: str) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    try:  # the fused kernel is 3× faster than the default one on CPU (torch >= 2.4)
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)


def forward_fn(model, images, superpixels, device, dtype):
    def run():
        with torch.no_grad(), autocast(device, dtype):
            return model(images, superpixels)
    return run


def train_fn(model, images, superpixels, device, dtype, optimizer):
    target = torch.arange(images.shape[0], device=images.device) % 10

    def run():
        with autocast(device, dtype):
            loss = F.cross_entropy(model(images, superpixels).float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return run


# ----------------------------------------------------------------------------- FLOPs


def count_flops(name: str, images: torch.Tensor, superpixels: torch.Tensor, train: bool) -> tuple[float, str]:
    """FLOPs per image of one forward (or forward + backward) at fp32.

    ViTs are counted on the meta device. CAST's token count is the largest superpixel
    id (a value, which meta tensors do not have), so it is counted on the real batch on
    CPU with the math attention backend, because the flop counter does not register
    the CPU flash-attention kernel. Both give the same count for the same shapes.
    """
    b = images.shape[0]
    try:
        with torch.device("meta"):
            model = castvit.create_model(name)
        x = torch.empty(images.shape, device="meta")
        y = torch.empty(superpixels.shape, dtype=torch.long, device="meta")
        flops = _flops(model, x, y, train)
        return flops / b, "meta"
    except (RuntimeError, NotImplementedError, ValueError):
        pass
    model = castvit.create_model(name)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        flops = _flops(model, images.cpu(), superpixels.cpu(), train)
    return flops / b, "cpu (real batch, math attention)"


def _flops(model, x, y, train: bool) -> int:
    model.train(train)
    # The flop counter does not see the oneDNN linear kernel of no-grad CPU inference.
    with FlopCounterMode(display=False) as counter, _reverted(fast_cpu, "ONEDNN_LINEAR", False):
        if train:
            model(x, y).sum().backward()
        else:
            with torch.no_grad():
                model(x, y)
    return counter.get_total_flops()


@contextlib.contextmanager
def _reverted(owner, attr, value):
    saved = getattr(owner, attr)
    setattr(owner, attr, value)
    try:
        yield
    finally:
        setattr(owner, attr, saved)


# ----------------------------------------------------------------------------- FPS share


class SamplingClock:
    """Accumulates the wall time spent in farthest point sampling (the sampler itself)
    and in centroid sampling as a whole (building the points + the sampler)."""

    def __init__(self, device: str):
        self.device, self.fps, self.sampling = device, 0.0, 0.0

    @contextlib.contextmanager
    def installed(self):
        fps, sample = graph_pool.farthest_point_sampling, graph_pool.GraphPool.sample_centroids
        clock = self

        def timed_fps(*args, **kwargs):
            C.synchronize(clock.device)
            start = C.now()
            out = fps(*args, **kwargs)
            C.synchronize(clock.device)
            clock.fps += C.now() - start
            return out

        def timed_sample(pool_self, *args, **kwargs):
            C.synchronize(clock.device)
            start = C.now()
            out = sample(pool_self, *args, **kwargs)
            C.synchronize(clock.device)
            clock.sampling += C.now() - start
            return out

        graph_pool.farthest_point_sampling = timed_fps
        graph_pool.GraphPool.sample_centroids = timed_sample
        try:
            yield self
        finally:
            graph_pool.farthest_point_sampling = fps
            graph_pool.GraphPool.sample_centroids = sample


def fps_share(model, images, superpixels, device: str, rounds: int) -> dict[str, float]:
    """FPS time / forward time, summed over ``rounds`` fp32 forwards (after the timed
    runs, so the caches are warm): for ``model()`` (the classification forward, which
    skips the last pooling) and for ``forward_features`` (all four poolings, what
    ``castvit.segment`` runs)."""
    out: dict[str, float] = {}
    for suffix, call in (("", model), ("_all_levels", model.forward_features)):
        def run():
            with torch.no_grad():
                return call(images, superpixels)

        run()
        clock = SamplingClock(device)
        total = 0.0
        with clock.installed():
            for _ in range(rounds):
                total += C.timed(run, device)
        out.update({f"fps_share{suffix}": clock.fps / total,
                    f"centroid_sampling_share{suffix}": clock.sampling / total,
                    f"fps_ms_per_batch{suffix}": 1e3 * clock.fps / rounds})
    return out


# ----------------------------------------------------------------------------- bf16 check


def bf16_agreement(model, images, superpixels, device: str) -> dict[str, Any]:
    """Compare the bf16-autocast forward with fp32: relative error and cosine of the
    head output and of ``out4``-like features, and (CAST) how many FPS picks agree."""
    with torch.no_grad():
        ref = model.forward_features(images, superpixels)
        with autocast(device, torch.bfloat16):
            low = model.forward_features(images, superpixels)
        ref_logits, low_logits = model.forward_head(ref).float(), model.forward_head(low).float()
    out: dict[str, Any] = {}
    for key, a, b in [("logits", ref_logits, low_logits), ("out4", ref["out4"].float(), low["out4"].float())]:
        rel = ((b - a).norm() / a.norm()).item()
        cos = F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1).min().item()
        out[f"{key}_rel_err"], out[f"{key}_min_cosine"] = rel, cos
    picks = [k for k in ref if k.startswith("sampled_inds")]
    if picks:
        same = sum((ref[k] == low[k]).sum().item() for k in picks)
        out["fps_picks_equal"] = same / sum(ref[k].numel() for k in picks)
    out["within_tolerance"] = all(out[f"{k}_rel_err"] <= BF16_REL_TOL and out[f"{k}_min_cosine"] >= BF16_MIN_COSINE
                                  for k in ("logits", "out4"))
    return out


# ----------------------------------------------------------------------------- GPU memory


def peak_memory(name: str, images, superpixels, device: str, batches: list[int]) -> list[dict[str, Any]]:
    rows = []
    model = castvit.create_model(name).to(device)
    optimizer = make_optimizer(model, device)
    for b in batches:
        reps = -(-b // images.shape[0])
        x = images.repeat(reps, 1, 1, 1)[:b]
        y = superpixels.repeat(reps, 1, 1)[:b]
        row: dict[str, Any] = {"model": name, "batch": b}
        for mode in ("forward", "train"):
            for dname, dtype in DTYPES.items():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                model.train(mode == "train")
                try:
                    if mode == "forward":
                        forward_fn(model, x, y, device, dtype)()
                    else:
                        train_fn(model, x, y, device, dtype, optimizer)()
                    torch.cuda.synchronize()
                    row[f"{mode}_{dname}_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
                except torch.cuda.OutOfMemoryError:
                    row[f"{mode}_{dname}_gib"] = None
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated registered names")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--fast-cpu", action=argparse.BooleanOptionalAction, default=True,
                   help="time models with castvit.models.fast_cpu enabled (default; --no-fast-cpu: plain PyTorch)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads); 0 = all cores")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--superpixels", type=int, default=196, help="SEEDS n_segments")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--modes", default="forward,train")
    p.add_argument("--rounds", type=int, default=7, help="timed calls per model, dtype and mode (best counts)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="2 rounds, 1 warm-up: a smoke run, not a measurement")
    p.add_argument("--memory-batches", default="8,16,32,64,128", help="GPU only: batch sizes for peak memory")
    p.add_argument("--thread-clock", action="store_true",
                   help="with --threads 1: time by the thread's CPU clock (robust on a busy machine)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/throughput_<device>.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup = 2, 1
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    C.set_threads(args.threads if device == "cpu" else None, device)
    C.use_thread_clock(args.thread_clock)
    dtypes = {k: DTYPES[k] for k in args.dtypes.split(",")}
    modes = args.modes.split(",")

    images, superpixels, input_info = C.model_inputs(args.batch, args.img_size, args.superpixels, device=device)
    peaks = {k: C.MatmulPeak(torch.float32 if v is None else v, device) for k, v in dtypes.items()}
    machine = C.machine_info(device)
    print(f"# {machine['cpu'] if device == 'cpu' else machine.get('gpu')} · torch {machine['torch']} · "
          f"{machine['threads']} threads · batch {args.batch} · {args.img_size} px · "
          f"{input_info['tokens']} tokens (SEEDS n={args.superpixels})", flush=True)

    rows: list[dict[str, Any]] = []
    extras: dict[str, Any] = {}
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = castvit.create_model(name).to(device)
        if args.fast_cpu:
            fast_cpu.enable(model)
        is_cast = name.startswith("cast")
        for mode in modes:
            flops, counted_on = count_flops(name, images, superpixels, train=(mode == "train"))
            if mode == "forward":
                model.eval()
                fns = {d: forward_fn(model, images, superpixels, device, dt) for d, dt in dtypes.items()}
            else:
                model.train()
                optimizer = make_optimizer(model, device)
                fns = {d: train_fn(model, images, superpixels, device, dt, optimizer) for d, dt in dtypes.items()}
            timing = C.interleaved(fns, peaks, args.rounds, args.warmup, device)
            for dname, t in timing.items():
                img_s = args.batch / t["min_s"]
                peak = t[f"peak_{dname}_gflops"]
                row = {"model": name, "mode": mode, "dtype": dname, "img_s": img_s,
                       "img_s_median": args.batch / t["median_s"], "ms_per_batch": 1e3 * t["min_s"],
                       "gflop_per_img": flops / 1e9, "flops_counted_on": counted_on,
                       "achieved_gflops": img_s * flops / 1e9, "peak_gflops": peak,
                       "fraction_of_peak": img_s * flops / 1e9 / peak,
                       "peak_fp32_gflops": t.get("peak_fp32_gflops"),
                       "img_s_at_reference_peak": (img_s * C.REFERENCE_PEAK_GFLOPS / t["peak_fp32_gflops"]
                                                   if "peak_fp32_gflops" in t else None),
                       "runs": t["runs"]}
                rows.append(row)
                print(f"{name:24s} {mode:7s} {dname}: {img_s:7.2f} img/s  ({100 * row['fraction_of_peak']:.0f}% of "
                      f"{dname} peak {peak:.0f} GFLOP/s)", flush=True)
            if mode == "forward" and "fp32" in dtypes and "bf16" in dtypes:
                fp32, bf16 = (next(r for r in rows if r["model"] == name and r["mode"] == mode and r["dtype"] == d)
                              for d in ("fp32", "bf16"))
                bf16["speedup_over_fp32"] = bf16["img_s"] / fp32["img_s"]
                extras.setdefault(name, {})["bf16_agreement"] = bf16_agreement(model.eval(), images, superpixels,
                                                                               device)
            if mode == "forward" and is_cast and "fp32" in dtypes:
                share = fps_share(model.eval(), images, superpixels, device, max(2, args.rounds // 2))
                extras.setdefault(name, {}).update(share)
        if device.startswith("cuda"):
            extras.setdefault(name, {})["peak_memory"] = peak_memory(
                name, images, superpixels, device, [int(b) for b in args.memory_batches.split(",")])
        del model

    print()
    C.print_table(rows, [("model", "model", "s"), ("mode", "mode", "s"), ("dtype", "dtype", "s"),
                         ("img_s", "img/s", ".2f"), ("ms_per_batch", "ms/batch", ".0f"),
                         ("gflop_per_img", "GFLOP/img", ".2f"), ("achieved_gflops", "GFLOP/s", ".0f"),
                         ("peak_gflops", "peak", ".0f"), ("fraction_of_peak", "of peak", ".2f"),
                         ("img_s_at_reference_peak", "img/s @170", ".1f")])
    targets = target_report(rows, extras) if "cast_small" in args.models.split(",") and device == "cpu" else None
    if targets:
        print("\nissue 6 targets (cast_small; img/s scaled to a 170 GFLOP/s fp32 peak measured in the same run):")
        for t in targets:
            print(f"  {t['target']:40s} {t['measured']:8.3f}  (need {t['need']})  {'MET' if t['met'] else 'not met'}")
    for name, e in extras.items():
        if "fps_share" in e:
            print(f"{name}: FPS {100 * e['fps_share']:.2f}% of the forward "
                  f"(centroid sampling incl. point prep {100 * e['centroid_sampling_share']:.2f}%); "
                  f"all four levels (forward_features): FPS {100 * e['fps_share_all_levels']:.2f}%")
        if "bf16_agreement" in e:
            a = e["bf16_agreement"]
            print(f"{name}: bf16 vs fp32 logits rel err {a['logits_rel_err']:.3g}, min cosine {a['logits_min_cosine']:.4f}"
                  + (f", FPS picks equal {100 * a['fps_picks_equal']:.1f}%" if "fps_picks_equal" in a else "")
                  + f" → {'within' if a['within_tolerance'] else 'OUTSIDE'} tolerance")
        for r in e.get("peak_memory", []):
            print(f"{name} batch {r['batch']}: " + ", ".join(f"{k[:-4]} {v:.2f} GiB" for k, v in r.items()
                                                             if k.endswith("_gib") and v is not None))
    payload = {"benchmark": "throughput", "command": " ".join([sys.executable.split('/')[-1]] + sys.argv),
               "machine": machine, "inputs": {"batch": args.batch, "img_size": args.img_size,
                                              "seeds_n_segments": args.superpixels, **input_info},
               "settings": {"fast_cpu": args.fast_cpu, "rounds": args.rounds, "warmup": args.warmup, "statistic": "best of rounds",
                            "clock": "thread CPU time" if args.thread_clock else "wall",
                            "bf16_rel_tol": BF16_REL_TOL, "bf16_min_cosine": BF16_MIN_COSINE},
               "rows": rows, "per_model": extras, "targets": targets}
    path = C.write_json(f"throughput_{device.split(':')[0]}", payload, args.out)
    print(f"\nwrote {path}")
    return 0


def target_report(rows: list[dict[str, Any]], extras: dict[str, Any]) -> list[dict[str, Any]]:
    def get(mode, dtype):
        return next((r for r in rows if r["model"] == "cast_small" and r["mode"] == mode and r["dtype"] == dtype), None)

    def rate_target(label: str, row: dict[str, Any], key: str) -> dict[str, Any]:
        need = TARGETS[key]
        return {"target": f"{label} img/s @170 GFLOP/s", "measured": row["img_s_at_reference_peak"],
                "need": f">= {need}", "met": row["img_s_at_reference_peak"] >= need,
                "as_fraction_of_peak": row["fraction_of_peak"],
                "needed_fraction_of_peak": need * row["gflop_per_img"] / C.REFERENCE_PEAK_GFLOPS}

    out = []
    fwd, train, bf16 = get("forward", "fp32"), get("train", "fp32"), get("forward", "bf16")
    if fwd:
        out.append(rate_target("fp32 forward", fwd, "fp32_forward_img_s"))
    if train:
        out.append(rate_target("fp32 train step", train, "fp32_train_img_s"))
    if fwd and bf16:
        agree = extras.get("cast_small", {}).get("bf16_agreement", {})
        ok = bf16["speedup_over_fp32"] >= TARGETS["bf16_over_fp32_forward"] and agree.get("within_tolerance", False)
        out.append({"target": "bf16 forward / fp32 forward", "measured": bf16["speedup_over_fp32"],
                    "need": f">= {TARGETS['bf16_over_fp32_forward']} and outputs within tolerance", "met": ok,
                    "bf16_over_fp32_matmul_peak": bf16["peak_gflops"] / fwd["peak_gflops"],
                    "outputs_within_tolerance": agree.get("within_tolerance")})
    e = extras.get("cast_small", {})
    if "fps_share" in e:
        # The stricter of the two: forward_features runs all four samplers.
        share = max(e["fps_share"], e["fps_share_all_levels"])
        out.append({"target": "FPS share of the fp32 forward", "measured": share,
                    "need": f"<= {TARGETS['fps_share_max']}", "met": share <= TARGETS["fps_share_max"]})
    return out


if __name__ == "__main__":
    sys.exit(main())

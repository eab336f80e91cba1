"""Where the forward time goes, per operator, fp32 and bf16 autocast: the input to the
arithmetic of bench/RESULTS.md (what share is matmul-class work, how much each class
gains from bf16).

    python bench/breakdown.py                 # cast_small, batch 8, 224 px, 1 thread

By default runs on one thread and times every aten operator with that thread's CPU
clock (a dispatch mode around each call), so the figures hold on a busy machine; with
``--threads 2`` it uses wall time (needs an idle machine). The per-call Python overhead
of the mode is left out of the per-op times. Writes ``bench/results/breakdown_<n>t.json``.
"""

from __future__ import annotations

import argparse
import collections
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import _common as C
import castvit

# Operator classes. The bf16 gain of the first is bounded by the bf16/fp32 matmul peak
# ratio; attention (and the graph-pooling bmms) is matmul-class work too, but at head
# dim 32 far from any peak; casts exist only under autocast.
CLASSES = {
    "linear_conv": {"addmm", "mm", "_linear_pointwise", "convolution"},
    "attention_bmm": {"_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                      "bmm", "baddbmm", "_softmax"},
    "casts": {"_to_copy"},
}


def op_class(name: str) -> str:
    return next((c for c, ops in CLASSES.items() if name in ops), "rest")


class OpClock(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seconds: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = C.now()
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.seconds[name] += C.now() - start
        self.calls[name] += 1
        return out


def profile(model, images, superpixels, dtype, rounds: int) -> tuple[float, OpClock]:
    def run():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            model(images, superpixels)

    run()
    best = min(C.timed(run, "cpu") for _ in range(rounds))
    clock = OpClock()
    with clock:
        run()
    return best, clock


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cast_small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    C.use_thread_clock(args.threads == 1)
    machine = C.machine_info("cpu")
    images, superpixels, info = C.model_inputs(args.batch, args.img_size)
    model = castvit.create_model(args.model).eval()
    peaks = {d: max(C.MatmulPeak(t, "cpu").once() for _ in range(3)) for d, t in
             (("fp32", torch.float32), ("bf16", torch.bfloat16))}

    result = {}
    for dtype in ("fp32", "bf16"):
        total, clock = profile(model, images, superpixels, dtype, args.rounds)
        ops_total = sum(clock.seconds.values())
        classes = collections.Counter()
        for name, sec in clock.seconds.items():
            classes[op_class(name)] += 1e3 * sec
        result[dtype] = {"forward_ms": 1e3 * total, "ops_ms": 1e3 * ops_total, "classes_ms": dict(classes),
                         "ops": {k: {"ms": 1e3 * v, "calls": clock.calls[k]} for k, v in clock.seconds.most_common()}}
        print(f"\n{args.model} forward {dtype}: {1e3 * total:.0f} ms (ops {1e3 * ops_total:.0f} ms: "
              + ", ".join(f"{c} {classes[c]:.0f}" for c in (*CLASSES, "rest")) + ")")
        for name, sec in clock.seconds.most_common(args.top):
            print(f"  {1e3 * sec:8.1f} ms  {clock.calls[name]:5d}×  {name}")

    fp32, bf16 = result["fp32"]["classes_ms"], result["bf16"]["classes_ms"]
    peak_ratio = peaks["bf16"] / peaks["fp32"]
    t32 = result["fp32"]["ops_ms"]
    lc, att = fp32["linear_conv"], fp32["attention_bmm"]
    summary = {
        "bf16_over_fp32_matmul_peak": peak_ratio,
        "bf16_over_fp32_measured": t32 / result["bf16"]["ops_ms"],
        "gain_per_class": {c: fp32[c] / bf16[c] for c in bf16 if fp32.get(c, 0.0) > 1.0},
        # Upper bounds on the bf16/fp32 forward ratio (Amdahl):
        # linear/conv at the full peak ratio, everything else as fast as in fp32.
        "bound_linear_conv_at_peak": t32 / (lc / peak_ratio + t32 - lc),
        # ... and attention/bmm at the full peak ratio too, and no autocast casts.
        "bound_all_matmuls_at_peak": t32 / ((lc + att) / peak_ratio + t32 - lc - att),
        "peaks_gflops": peaks,
    }
    print(f"\nbf16/fp32 matmul peak {peak_ratio:.2f}×; measured forward {summary['bf16_over_fp32_measured']:.2f}×; "
          "gain per class " + ", ".join(f"{c} {g:.2f}×" for c, g in summary["gain_per_class"].items()))
    print(f"upper bound with linear/conv at {peak_ratio:.2f}× and the rest as in fp32: "
          f"{summary['bound_linear_conv_at_peak']:.2f}×; with attention/bmm at {peak_ratio:.2f}× too: "
          f"{summary['bound_all_matmuls_at_peak']:.2f}×")
    payload = {"benchmark": "breakdown", "command": " ".join(["python"] + sys.argv), "machine": machine,
               "inputs": {"model": args.model, "batch": args.batch, "img_size": args.img_size, **info},
               "settings": {"threads": args.threads, "clock": "thread CPU time" if args.threads == 1 else "wall"}, "result": result, "summary": summary}
    print(f"\nwrote {C.write_json(f'breakdown_{args.threads}t', payload, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

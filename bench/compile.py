"""Compiled vs eager: forward and train step img/s of the static-shape model (issue 12 §3).

    python bench/compile.py                                  # cast_small, 2 threads, batch 8, 224 px
    python bench/compile.py --threads 1 --thread-clock       # robust on a busy machine
    python bench/compile.py --models cast_small,cast_small_seg_pretrain --quick

Four variants of each model, timed round-robin in one process on the same SEEDS batch:

* ``eager``: the dynamic-shape model as ``create_model`` builds it (plain PyTorch);
* ``eager_fast_cpu``: the same with :mod:`castvit.models.fast_cpu` enabled;
* ``eager_static``: the static-shape mode (``max_tokens``, always masked) in eager;
* ``compiled``: :func:`castvit.models.cast.compile_model` (``torch.compile``,
  ``fullgraph=True``, static shapes) of the static-shape model.

A forward is eval + no_grad; a train step is forward, cross-entropy, backward and a
fused AdamW step, as in ``bench/throughput.py``. The compile time (first call) is
reported separately and excluded from the rates. Writes ``bench/results/compile_<device>.json``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from typing import Any

import torch

import _common as C
import castvit
from castvit.models import fast_cpu
from castvit.models.cast import compile_model
from throughput import forward_fn, make_optimizer, train_fn

TARGET_TRAIN_SPEEDUP = 1.1  # issue 12: compiled fp32 train step >= 1.1x eager on this CPU


def build_variants(name: str, max_tokens: int, device: str) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    eager = castvit.create_model(name).to(device)
    fast = fast_cpu.enable(copy.deepcopy(eager))
    static = copy.deepcopy(eager)
    static.max_tokens = max_tokens
    compiled_base = copy.deepcopy(eager)
    compiled = compile_model(compiled_base, max_tokens=max_tokens)
    return {"eager": eager, "eager_fast_cpu": fast, "eager_static": static, "compiled": compiled}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="cast_small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--superpixels", type=int, default=196, help="SEEDS n_segments; also max_tokens")
    p.add_argument("--modes", default="forward,train")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="2 rounds, 1 warm-up: a smoke run")
    p.add_argument("--thread-clock", action="store_true", help="with --threads 1: time by the thread's CPU clock")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup = 2, 1
    device = args.device
    C.set_threads(args.threads if device == "cpu" else None, device)
    C.use_thread_clock(args.thread_clock)
    images, superpixels, info = C.model_inputs(args.batch, args.img_size, args.superpixels, device=device)
    max_tokens = args.superpixels
    if info["tokens"] > max_tokens:
        p.error(f"SEEDS returned ids up to {info['tokens'] - 1}; raise --superpixels")
    machine = C.machine_info(device)
    print(f"# {machine['cpu'] if device == 'cpu' else machine.get('gpu')} · torch {machine['torch']} · "
          f"{machine['threads']} threads · batch {args.batch} · {args.img_size} px · max_tokens {max_tokens} "
          f"(batch uses {info['tokens']}) · clock {'thread' if args.thread_clock else 'wall'}", flush=True)
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        variants = build_variants(name, max_tokens, device)
        for mode in args.modes.split(","):
            fns = {}
            compile_s = None
            for vname, model in variants.items():
                model.train(mode == "train")
                if mode == "forward":
                    fns[vname] = forward_fn(model, images, superpixels, device, None)
                else:
                    fns[vname] = train_fn(model, images, superpixels, device, None, make_optimizer(model, device))
            start = time.perf_counter()
            fns["compiled"]()  # compiles (a recompile for the train graph)
            C.synchronize(device)
            compile_s = time.perf_counter() - start
            timing = C.interleaved(fns, {}, args.rounds, args.warmup, device)
            base = args.batch / timing["eager"]["min_s"]
            for vname, t in timing.items():
                img_s = args.batch / t["min_s"]
                rows.append({"model": name, "mode": mode, "variant": vname, "img_s": img_s,
                             "img_s_median": args.batch / t["median_s"], "ms_per_batch": 1e3 * t["min_s"],
                             "over_eager": img_s / base, "compile_s": compile_s if vname == "compiled" else None,
                             "runs": t["runs"]})
                print(f"{name:24s} {mode:7s} {vname:15s} {img_s:7.2f} img/s  ×{img_s / base:.3f} vs eager",
                      flush=True)
    print()
    C.print_table(rows, [("model", "model", "s"), ("mode", "mode", "s"), ("variant", "variant", "s"),
                         ("img_s", "img/s", ".2f"), ("ms_per_batch", "ms/batch", ".0f"),
                         ("over_eager", "× eager", ".3f")])
    targets = []
    for r in rows:
        if r["variant"] == "compiled" and r["mode"] == "train":
            targets.append({"target": f"{r['model']} compiled fp32 train step / eager", "measured": r["over_eager"],
                            "need": f">= {TARGET_TRAIN_SPEEDUP}", "met": r["over_eager"] >= TARGET_TRAIN_SPEEDUP})
            fast = next(x for x in rows if x["model"] == r["model"] and x["mode"] == "train"
                        and x["variant"] == "eager_fast_cpu")
            targets[-1]["over_eager_fast_cpu"] = r["img_s"] / fast["img_s"]
    for t in targets:
        print(f"  {t['target']:48s} {t['measured']:.3f} (need {t['need']}) {'MET' if t['met'] else 'not met'}; "
              f"vs eager+fast_cpu ×{t['over_eager_fast_cpu']:.3f}")
    payload = {"benchmark": "compile", "command": " ".join([sys.executable.split('/')[-1]] + sys.argv),
               "machine": machine, "inputs": {"batch": args.batch, "img_size": args.img_size,
                                              "seeds_n_segments": args.superpixels, "max_tokens": max_tokens, **info},
               "settings": {"rounds": args.rounds, "warmup": args.warmup, "statistic": "best of rounds",
                            "clock": "thread CPU time" if args.thread_clock else "wall"},
               "rows": rows, "targets": targets}
    path = C.write_json(f"compile_{device.split(':')[0]}", payload, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

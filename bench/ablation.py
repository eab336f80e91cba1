"""Before/after of each CPU optimisation of the model code, measured in one run.

    python bench/ablation.py                  # cast_small, batch 8, 224 px, 2 threads
    python bench/ablation.py --threads 1      # 1 thread: per-thread CPU clock, robust on a busy machine

Each optimisation can be switched back to the code it replaced (kept below, verbatim
in behaviour); the script times the forward with everything current, with each one
reverted alone, and with all reverted (≈ the code before issue 6), round-robin in one
process so that machine load hits every variant alike. The best of ``--rounds`` counts.
Writes ``bench/results/ablation_<dtype>_<threads>t.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

import _common as C
import castvit
from castvit import ops
from castvit.models import cast, fast_cpu, fps, graph_pool, vit

# ----------------------------------------------------------------------------- the replaced code


def scatter_segment_sum(x, labels, num_segments):
    """Before: scatter_add_ with a B×L×C expanded index."""
    b, _, c = x.shape
    out = x.new_zeros(b, num_segments, c)
    return out.scatter_add_(1, labels.unsqueeze(-1).expand(-1, -1, c), x)


def loop_fps(points, num_samples, start_idx=0, exclude=None):
    """Before: Gram matrix, distances recomputed per pick (≈ 6 ops per pick)."""
    b, n, _ = points.shape
    p = points.to(torch.float64)
    sq = (p * p).sum(-1)
    gram = torch.bmm(p, p.transpose(1, 2))
    min_dist = torch.full((b, n), float("inf"), dtype=torch.float64, device=p.device)
    if exclude is not None:
        min_dist = min_dist.masked_fill(exclude, -2.0)
    cur = torch.full((b, 1), start_idx, dtype=torch.long, device=p.device)
    picks = [cur]
    for _ in range(num_samples - 1):
        d = (sq + sq.gather(1, cur) - 2.0 * gram.gather(2, cur.unsqueeze(1).expand(b, n, 1)).squeeze(2))
        min_dist = torch.minimum(min_dist, d.clamp_min_(0.0))
        min_dist.scatter_(1, cur, -1.0)
        cur = min_dist.argmax(dim=1, keepdim=True)
        picks.append(cur)
    return torch.cat(picks, dim=1)


def unfused_conv_bn_relu(conv, bn, x):
    """Before: BatchNorm as its own pass in eval mode too."""
    return F.relu(bn(conv(x)), inplace=True)


def nchw_forward_unprojected(self, x):
    """Before: NCHW activations; the B×h×w×D permute is a strided view (copied later)."""
    for i in range(0, 12, 3):
        x = fast_cpu._conv_bn_relu(self.proj[i], self.proj[i + 1], x)
    return x.permute(0, 2, 3, 1)


def project_every_cell_tokens(stem, feat, pe, labels):
    """Before: the 1×1 projection on every grid cell, then the per-superpixel means."""
    b = feat.shape[0]
    n = int(labels.max()) + 1
    count = ops.segment_count(labels, n).unsqueeze(-1)
    valid = count.squeeze(-1) > 0
    count = count.clamp_min(1)
    tokens = ops.segment_sum(stem.project(feat), labels, n) / count
    return tokens + ops.segment_sum(pe.expand(b, -1, -1), labels, n) / count, valid


def sdpa_attention_forward(self, x, attn_mask=None):
    """Before: SDPA for every dtype (the CPU flash kernel also under bf16 autocast)."""
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


_current_check_inputs = cast.check_inputs


def isfinite_check_inputs(images, superpixels, min_superpixels=None):
    """Before: ``torch.isfinite(images).all()`` on every call (plus today's checks)."""
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf values")
    _current_check_inputs(images, superpixels, min_superpixels)


_current_pool_forward = graph_pool.GraphPool.forward


def always_masked_pool_forward(self, cls, tokens, valid=None, mask_padded=True):
    """Before: the first pooling got the padding mask even when no token was padded."""
    if valid is None and getattr(self, "_first_stage", False):
        valid = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    return _current_pool_forward(self, cls, tokens, valid, mask_padded)


def all_levels_forward(self, images, superpixels):
    """Before: ``model()`` ran all four poolings, the last one unread by a classifier's head."""
    return self.forward_head(self.forward_features(images, superpixels))


# (name, what it does now, [(module or class, attribute, replaced code)])
OPTIMISATIONS: list[tuple[str, str, list[tuple[Any, str, Any]]]] = [
    ("onednn_linear", "fp32 no-grad linears on oneDNN (GELU fused) instead of MKL sgemm",
     [(fast_cpu, "ONEDNN_LINEAR", False)]),
    ("channels_last_stem", "conv stem in channels-last memory format",
     [(fast_cpu.FastConvStem, "forward_unprojected", nchw_forward_unprojected)]),
    ("bn_folded_in_eval", "eval-mode BatchNorm folded into the conv weights",
     [(fast_cpu, "_conv_bn_relu", unfused_conv_bn_relu)]),
    ("project_after_mean", "stem's 1×1 projection applied to the superpixel means",
     [(cast, "superpixel_tokens", project_every_cell_tokens),
      (vit, "superpixel_tokens", project_every_cell_tokens)]),
    ("index_add_segment_sum", "segment sums by index_add_ over the flattened batch",
     [(ops, "segment_sum", scatter_segment_sum), (cast, "segment_sum", scatter_segment_sum)]),
    ("fps_precomputed_distances", "FPS: all distances up front, 3 ops per pick",
     [(fps, "farthest_point_sampling", loop_fps), (graph_pool, "farthest_point_sampling", loop_fps)]),
    ("cheap_finite_check", "finiteness checked through one sum",
     [(cast, "check_inputs", isfinite_check_inputs)]),
    ("no_all_true_masks", "no padding mask when no token is padded",
     [(graph_pool.GraphPool, "forward", always_masked_pool_forward)]),
    ("rand_mask_dropout", "CPU dropout masks from rand_like instead of bernoulli_ (train only)",
     [(fast_cpu.FastDropout, "forward", torch.nn.Dropout.forward)]),
    ("skip_unread_last_pool", "classifier forward() skips the last pooling, which its head never reads",
     [(cast.CAST, "forward", all_levels_forward)]),
    ("bf16_explicit_attention", "bf16 attention by oneDNN batched matmuls instead of flash SDPA",
     [(fast_cpu.FastAttention, "forward", sdpa_attention_forward)]),
]


@contextlib.contextmanager
def reverted(patches: list[tuple[Any, str, Any]]):
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in patches]
    try:
        for owner, attr, old in patches:
            setattr(owner, attr, old)
        yield
    finally:
        for owner, attr, cur in saved:
            setattr(owner, attr, cur)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cast_small")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--mode", default="forward", choices=["forward", "train"],
                   help="forward: eval, no_grad; train: forward + backward + fused AdamW step")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    # With one thread the per-thread CPU clock ignores time spent descheduled, so the
    # comparison survives a busy machine; with more threads only wall time is meaningful.
    clock: Callable[[], float] = time.thread_time if args.threads == 1 else time.perf_counter
    machine = C.machine_info("cpu")
    images, superpixels, info = C.model_inputs(args.batch, args.img_size)
    # the optimisations ablated here are castvit's opt-in CPU path (castvit.models.fast_cpu)
    model = fast_cpu.enable(castvit.create_model(args.model)).train(args.mode == "train")
    if hasattr(model, "pools"):
        model.pools()[0]._first_stage = True
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    # Optimisations that cannot act in this setting (eval-only, no-grad-only, bf16-only).
    inactive = {"bf16_explicit_attention"} if args.dtype == "fp32" else {"onednn_linear"}
    if args.mode == "train":
        inactive |= {"onednn_linear", "bn_folded_in_eval"}
    else:
        inactive |= {"rand_mask_dropout"}
    optimisations = [o for o in OPTIMISATIONS if o[0] not in inactive]
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4, fused=True)
    target = torch.arange(args.batch) % 10

    def forward():
        if args.mode == "forward":
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                model(images, superpixels)
            return
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            loss = F.cross_entropy(model(images, superpixels).float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    variants: dict[str, list] = {"current": []}
    for name, _, patches in optimisations:
        variants[f"without {name}"] = patches
    variants["all reverted"] = [pt for _, _, patches in optimisations for pt in patches]

    def variant(patches):
        def run():
            with reverted(patches):
                forward()
        return run

    fns = {k: variant(v) for k, v in variants.items()}
    for fn in fns.values():
        for _ in range(args.warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, fn in fns.items():
            start = clock()
            fn()
            times[k].append(clock() - start)
    best = {k: min(v) for k, v in times.items()}
    rows = []
    for (name, what, _), key in zip(optimisations, [f"without {o[0]}" for o in optimisations]):
        rows.append({"optimisation": name, "what": what, "before_ms": 1e3 * best[key], "after_ms": 1e3 * best["current"],
                     "saved_ms": 1e3 * (best[key] - best["current"]),
                     "speedup": best[key] / best["current"]})
    rows.append({"optimisation": "all", "what": "every optimisation above", "before_ms": 1e3 * best["all reverted"],
                 "after_ms": 1e3 * best["current"], "saved_ms": 1e3 * (best["all reverted"] - best["current"]),
                 "speedup": best["all reverted"] / best["current"]})
    print(f"# {args.model} {args.mode}, {args.dtype}, batch {args.batch}, {args.img_size} px, {args.threads} thread(s), "
          f"{'thread CPU time' if args.threads == 1 else 'wall time'}, best of {args.rounds}")
    C.print_table(rows, [("optimisation", "optimisation", "s"), ("before_ms", "before ms", ".1f"),
                         ("after_ms", "after ms", ".1f"), ("saved_ms", "saved ms", ".1f"), ("speedup", "×", ".3f")])
    payload = {"benchmark": "ablation", "command": " ".join(["python"] + sys.argv), "machine": machine,
               "inputs": {"model": args.model, "mode": args.mode, "batch": args.batch, "img_size": args.img_size, "dtype": args.dtype,
                          **info},
               "settings": {"rounds": args.rounds, "clock": "thread_time" if args.threads == 1 else "perf_counter",
                            "statistic": "best of rounds"},
               "rows": rows, "all_times_ms": {k: [1e3 * t for t in v] for k, v in times.items()}}
    path = C.write_json(f"ablation_{args.mode}_{args.dtype}_{args.threads}t", payload, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

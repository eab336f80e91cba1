"""Opt-in CPU speed-ups for castvit models: ``castvit.models.fast_cpu.enable(model)``.

**Default: off.** A model from ``create_model`` computes with plain PyTorch modules
(``nn.Linear``, ``nn.Dropout``, ``nn.GELU``, ``F.scaled_dot_product_attention``,
conv → BN → ReLU), so the model code reads like the paper and runs in every dtype
(fp32, bf16, fp16) and on every device. :func:`enable` swaps the classes of some
modules in place for subclasses that compute the same function faster on CPU;
parameters, buffers, state-dict keys, optimizer references and the parity with the
authors' outputs are unchanged (to float32 rounding). :func:`disable` swaps them back.

The tricks, each taken only where it applies (otherwise the plain forward runs):

* **oneDNN linear** (``nn.Linear``, the stem's 1×1 projection): for fp32 CPU inference
  (no autograd, no autocast), the private ``torch.ops.mkldnn._linear_pointwise`` kernel
  that ``torch.compile`` emits for CPU linears, 6–11 % faster per matmul than MKL
  sgemm on AVX-512; checked once against ``F.linear`` at first use, and skipped on
  torch builds without it. Set :data:`ONEDNN_LINEAR` to False to turn only this off,
  e.g. under ``FlopCounterMode``, which does not count oneDNN ops.
* **fused GELU**: the same kernel with the GELU fused (ViT MLPs, the graph pooling's
  ``fc1``).
* **dropout from** ``rand_like``: CPU dropout masks from ``rand_like`` instead of the
  ``bernoulli_`` behind ``F.dropout`` (1.6× cheaper; same distribution).
* **BN folding at eval**: the conv stem's BatchNorms folded into their convolutions in
  eval mode (one pass over the activations instead of three).
* **chunked bf16 attention** (with autograd only): bf16 CPU attention as two oneDNN
  bf16 batched matmuls and a softmax over L2-sized chunks of heads, whose backward beats
  the CPU flash kernel's at head dim 32; inference keeps the flash kernel, faster there.

Measured (cast_small, batch 8, 224 px, 1 thread, thread CPU clock, busy 2-core machine;
bench/RESULTS.md "Plain models, fast_cpu opt-in and torch.compile"): enabled over plain,
fp32 forward 1.09×, fp32 train step 1.00×; enabled over the code before this split
(the tricks always on), 0.99–1.02×.

Use it for CPU inference and CPU training in eager mode. Leave it off under
``torch.compile`` (Inductor makes the same choices itself, and the private op is not
traceable everywhere) and on GPUs (where every trick falls back to the plain code).
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from castvit.models.graph_pool import GraphPool
from castvit.models.layers import Attention, ConvStem, Mlp

#: Route no-grad fp32 CPU linears of enabled models to oneDNN. False: ``F.linear``.
ONEDNN_LINEAR = True


# ----------------------------------------------------------------------------- kernels


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           gelu: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, then exact GELU when ``gelu``; through oneDNN for
    fp32 CPU inference (no autograd, no autocast) when the kernel is available."""
    if (ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not torch.is_grad_enabled() and not _cpu_autocast_enabled() and _onednn_linear_works()):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [],
                                                  "none" if gelu else "")
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


def _cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


@functools.cache
def _onednn_linear_works() -> bool:
    """The private oneDNN op exists in this torch build and matches ``F.linear``."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*shape, generator=gen) for shape in ((2, 3, 16), (8, 16), (8,)))
        with torch.no_grad():
            ok = torch.allclose(op(x, w, b, "none", [], ""), F.linear(x, w, b), atol=1e-5)
            ok = ok and torch.allclose(op(x, w, b, "gelu", [], "none"), F.gelu(F.linear(x, w, b)), atol=1e-5)
        return bool(ok)
    except (AttributeError, RuntimeError, TypeError):
        return False


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout`` whose CPU mask comes from ``rand_like`` (other devices: ``F.dropout``)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training)
    return x * (torch.rand_like(x) >= p) * (1.0 / (1.0 - p))


def bf16_cpu_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
                       chunk_bytes: int = 1 << 20) -> torch.Tensor:
    """``softmax(q kᵀ / √d) v`` for ``B×H×L×d`` bfloat16 inputs on CPU (``attn_mask``:
    ``B×1×1×L`` bool, True = key takes part).

    Same result as ``F.scaled_dot_product_attention`` up to bf16 rounding: two oneDNN
    bf16 batched matmuls and a softmax, over chunks of heads whose L×L scores fit in
    ``chunk_bytes`` (about one core's L2 cache; unchunked scores lose to flash attention
    once they spill out of cache, e.g. ViT-S/8's 785 tokens).
    """
    b, h, n, d = q.shape
    q, k, v = (t.reshape(b * h, n, d) for t in (q, k, v))
    bias = None
    if attn_mask is not None:  # additive −inf bias, broadcast over the query rows by baddbmm
        bias = q.new_zeros(b, h, 1, n).masked_fill_(~attn_mask, float("-inf")).view(b * h, 1, n)
    step = max(1, chunk_bytes // (n * n * q.element_size()))
    outs = []
    for i in range(0, b * h, step):
        j = min(i + step, b * h)
        if bias is None:
            scores = torch.baddbmm(q.new_empty(j - i, n, n), q[i:j], k[i:j].transpose(1, 2), beta=0.0,
                                   alpha=d ** -0.5)
        else:
            scores = torch.baddbmm(bias[i:j], q[i:j], k[i:j].transpose(1, 2), alpha=d ** -0.5)
        outs.append(torch.bmm(scores.softmax(dim=-1), v[i:j]))
    return (outs[0] if len(outs) == 1 else torch.cat(outs)).view(b, h, n, d)


# ----------------------------------------------------------------------------- modules
# Each subclass adds no state: swapping ``__class__`` keeps parameters and keys.


class FastLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class FastDropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)


class FastMlp(Mlp):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = linear(x, self.fc1.weight, self.fc1.bias, gelu=True)
        return self.drop(self.fc2(self.drop(x)))


class FastAttention(Attention):
    def attend(self, q, k, v, attn_mask):
        # Only with autograd: for inference the CPU flash kernel of torch 2.13 is now the
        # faster one (cast_small bf16 forward 0.93x with the chunked path), while its
        # backward stays slow (bf16 train step ~1.2x with the chunked path).
        if (q.dtype == torch.bfloat16 and q.device.type == "cpu" and torch.is_grad_enabled()
                and not (self.training and self.attn_drop > 0)):
            return bf16_cpu_attention(q, k, v, attn_mask)
        return super().attend(q, k, v, attn_mask)


class FastConvStem(ConvStem):
    def forward_unprojected(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.proj[0].weight.dtype).contiguous(memory_format=torch.channels_last)
        for i in range(0, 12, 3):
            x = _conv_bn_relu(self.proj[i], self.proj[i + 1], x)
        return x.permute(0, 2, 3, 1)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.proj[12]
        return linear(x, conv.weight.flatten(1), conv.bias)


def _conv_bn_relu(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``relu(bn(conv(x)))``; in eval mode the BatchNorm is folded into the convolution."""
    if bn.training or bn.running_mean is None:
        return F.relu(bn(conv(x)), inplace=True)
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return F.relu(F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups), inplace=True)


class FusedLinearGELU(nn.Sequential):
    """The graph pooling's ``fc1`` = [LayerNorm, Linear, GELU, Dropout] with the GELU
    fused into the linear (the GELU child stays, for the published layout)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm, fc, _, drop = self
        return drop(linear(norm(x), fc.weight, fc.bias, gelu=True))


_SWAPS: dict[type, type] = {nn.Linear: FastLinear, nn.Dropout: FastDropout, Mlp: FastMlp,
                            Attention: FastAttention, ConvStem: FastConvStem}
_UNSWAPS: dict[type, type] = {v: k for k, v in _SWAPS.items()}
_UNSWAPS[FusedLinearGELU] = nn.Sequential


# ----------------------------------------------------------------------------- API


def enable(model: nn.Module) -> nn.Module:
    """Turn the CPU speed-ups on for every submodule of ``model``, in place; returns
    ``model``. Idempotent; state dict and parameters are untouched."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fast_cpu.enable expects an nn.Module, got {type(model).__name__}")
    for m in model.modules():
        cls = _SWAPS.get(type(m))
        if cls is not None:
            m.__class__ = cls
        if isinstance(m, GraphPool) and type(m.fc1) is nn.Sequential and _is_ln_linear_gelu(m.fc1):
            m.fc1.__class__ = FusedLinearGELU
    return model


def disable(model: nn.Module) -> nn.Module:
    """Undo :func:`enable`: every module computes with plain PyTorch again."""
    for m in model.modules():
        cls = _UNSWAPS.get(type(m))
        if cls is not None:
            m.__class__ = cls
    return model


def is_enabled(model: nn.Module) -> bool:
    """Whether any submodule of ``model`` runs a fast-CPU forward."""
    return any(type(m) in _UNSWAPS for m in model.modules())


def _is_ln_linear_gelu(seq: nn.Sequential) -> bool:
    kinds = [type(c) for c in seq]
    return (len(kinds) == 4 and kinds[0] is nn.LayerNorm and issubclass(kinds[1], nn.Linear)
            and kinds[2] is nn.GELU and issubclass(kinds[3], nn.Dropout) and seq[2].approximate == "none")

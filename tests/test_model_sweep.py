"""Every registered model through the same checks, in the style of timm's model sweep
(issue 13 §6): forward, backward with a gradient for *every* trainable parameter (what
multi-process DDP with ``find_unused_parameters=False`` demands), a dtype sweep and
eval-mode determinism. Tiny overrides keep each model well under a second."""

import copy

import pytest
import torch

import castvit
from castvit.models import fast_cpu
from test_models import grid_superpixels, tiny_overrides

NAMES = castvit.list_models()
B, H, W = 2, 64, 64


pytestmark = pytest.mark.usefixtures("one_thread")


def make(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return castvit.create_model(name, **tiny_overrides(name))


def inputs():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(B, 3, H, W, generator=gen), grid_superpixels(B, H, W)


def weighted_loss(out: torch.Tensor) -> torch.Tensor:
    """A loss that reads every output element with a distinct weight (a plain sum can
    give exactly-zero gradients through normalisations)."""
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    return (out.float() * w).sum()


def structurally_zero(model) -> set[str]:
    """Parameters whose gradient is zero by the architecture (as published): in the
    segmentation models the last pooling's centroid block only shapes ``logit4`` and the
    pooled tokens, and block fusion reads neither (only its cls update, which fc2 computes
    row by row from the cls alone). DDP accepts them: their gradient is defined (zero)."""
    encoder = getattr(model, "encoder", model)  # a semantic model's encoder is a seg CAST
    prefix = "encoder." if encoder is not model else ""
    if getattr(encoder, "task", "cls") == "cls":
        return set()
    return {n for n, _ in model.named_parameters() if n.startswith(prefix + "pool4.pool_block.centroid_fc.")}


@pytest.mark.parametrize("name", NAMES)
def test_every_trainable_parameter_receives_a_gradient(name):
    model = make(name).train()
    x, sp = inputs()
    out = model(x, sp)
    assert torch.isfinite(out).all()
    weighted_loss(out).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"trainable parameters without a gradient (DDP would fail): {missing}"
    zero = {n for n, p in model.named_parameters() if p.requires_grad and not p.grad.abs().sum() > 0}
    assert zero == structurally_zero(model), "trainable parameters with an all-zero gradient"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"
    frozen_with_grad = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not frozen_with_grad


@pytest.mark.parametrize("name", NAMES)
def test_half_precision_models_run_forward_and_backward(name):
    """``.to(dtype)`` models run on CPU (fp32 images are cast by the stem), train a step
    with finite gradients in that dtype, and stay close to fp32. This loose bound only
    catches broken numerics: with untrained tiny weights, farthest point sampling and
    the segmentation models' hard argmax unpooling flip on near-ties in bf16, which
    moves whole output rows (measured: cosine ≥ 0.993). The tolerance against fp32 is
    justified and tested tightly on the fixture weights in test_models.py."""
    ref_model = make(name).eval()
    x, sp = inputs()
    with torch.no_grad():
        ref = ref_model(x, sp)
    for dtype in (torch.bfloat16, torch.float16):
        model = copy.deepcopy(ref_model).to(dtype)
        with torch.no_grad():
            out = model(x, sp)
        assert out.dtype == dtype and torch.isfinite(out).all(), dtype
        cos = torch.nn.functional.cosine_similarity(out.float().flatten(), ref.flatten(), dim=0)
        assert cos >= 0.98, f"{dtype}: cosine to fp32 {cos:.4f}"
        model.train()
        weighted_loss(model(x, sp)).backward()
        for n, p in model.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and p.grad.dtype == dtype and torch.isfinite(p.grad).all(), (dtype, n)


@pytest.mark.parametrize("name", NAMES)
def test_eval_forward_is_deterministic_and_leaves_the_state_alone(name):
    model = make(name)
    model.train()
    x, sp = inputs()
    with torch.no_grad():
        model(x, sp)  # move the BatchNorm statistics off their initial values
    model.eval()
    for fast in (False, True):
        if fast:
            fast_cpu.enable(model)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            a = model(x, sp)
            b = model(x, sp)
            one = model(x[:1], sp[:1])
        assert torch.equal(a, b), f"fast_cpu={fast}"
        assert torch.allclose(one, a[:1], atol=1e-5, rtol=1e-4)  # batch mates change nothing
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), "an eval forward changed a buffer"


@pytest.mark.parametrize("name", NAMES)
def test_fast_cpu_computes_the_plain_function(name):
    """The opt-in speed-ups change speed only: same outputs (float32 rounding) in eval
    and in a train-mode forward/backward without dropout."""
    plain = make(name)
    fast = fast_cpu.enable(copy.deepcopy(plain))
    assert fast_cpu.is_enabled(fast) and not fast_cpu.is_enabled(plain)
    assert list(fast.state_dict()) == list(plain.state_dict())
    x, sp = inputs()
    with torch.no_grad():
        assert torch.allclose(fast.eval()(x, sp), plain.eval()(x, sp), atol=1e-5, rtol=1e-4)
    for m in (plain, fast):
        m.train()
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
        weighted_loss(m(x, sp)).backward()
    for (n, p), q in zip(plain.named_parameters(), fast.parameters()):
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-3), n
    assert not fast_cpu.is_enabled(fast_cpu.disable(fast))

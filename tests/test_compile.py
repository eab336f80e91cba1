"""Static-shape, sync-free forward (issue 12 §3): a fixed token count (``max_tokens``),
padded tokens masked, no host sync or data-dependent branch, one graph under
``torch.compile(fullgraph=True)``."""

import pytest
import torch

import castvit
from castvit.models import fast_cpu
from castvit.models.cast import compile_model
from test_models import grid_superpixels, tiny_overrides
from test_padding import sparse_superpixels


pytestmark = pytest.mark.usefixtures("one_thread")


STATIC = ["cast_small", "cast_small_deit", "cast_small_seg_pretrain", "cast_small_seg", "cast_small_deit_seg",
          "vit_suppix_small"]


def pair(name: str, max_tokens: int):
    """(dynamic-shape model, static-shape model) with the same weights."""
    torch.manual_seed(0)
    dyn = castvit.create_model(name, **tiny_overrides(name))
    static = castvit.create_model(name, max_tokens=max_tokens, **tiny_overrides(name))
    static.load_state_dict(dyn.state_dict())
    return dyn.eval(), static.eval()


def inputs(sp=None):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return x, (grid_superpixels(2, 64, 64) if sp is None else sp)


def head_rows(name, out, n):
    """Per-token outputs (seg models) cut to the first ``n`` tokens."""
    if name.endswith("deit_seg"):
        return out[:, : 1 + n]
    if name.endswith("_seg"):
        return out[:, :n]
    return out


@pytest.mark.parametrize("name", STATIC)
def test_static_mode_equals_dynamic_when_no_token_is_padded(name):
    dyn, static = pair(name, 64)  # 64 ids, all present in both images
    x, sp = inputs()
    with torch.no_grad():
        assert torch.allclose(static(x, sp), dyn(x, sp), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", STATIC)
def test_static_mode_pads_to_max_tokens_and_padding_changes_nothing(name):
    """Image 0 uses 40 of 64 ids; with 100 tokens, 60 of its tokens and 36 of image 1's
    are padded, yet every output equals the dynamic model's on the valid tokens."""
    dyn, static = pair(name, 100)
    sp = torch.cat([sparse_superpixels()[None], grid_superpixels(1, 64, 64)])
    x, sp = inputs(sp)
    with torch.no_grad():
        ref, out = dyn(x, sp), static(x, sp)
        if name.startswith("cast"):
            feats = static.forward_features(x, sp)
            assert feats["logit1"].shape[1] == 100 and feats["padding_mask1"][:, 64:].all()
    assert torch.allclose(head_rows(name, out, 64), ref, atol=1e-5, rtol=1e-4)


def test_static_mode_batch_norm_of_block_fusion_matches_batch_norm_of_the_valid_tokens():
    """Train mode: the masked statistics equal BatchNorm1d over the valid tokens alone,
    running statistics included (no boolean indexing, so shapes stay static)."""
    from castvit.models.graph_pool import TokenBatchNorm

    tbn = TokenBatchNorm(6).train()
    ref = torch.nn.BatchNorm1d(6).train()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        tbn.norm.weight.uniform_(0.5, 1.5, generator=gen)
        tbn.norm.bias.normal_(generator=gen)
    ref.load_state_dict(tbn.norm.state_dict())
    x = torch.randn(3, 10, 6, generator=gen) * 3 + 1
    valid = torch.rand(3, 10, generator=gen) > 0.4
    out = tbn(x, valid)
    assert torch.allclose(out[valid], ref(x[valid]), atol=1e-5)
    assert (out[~valid] == 0).all()
    for a, b in zip(tbn.norm.buffers(), ref.buffers()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    tbn.eval(), ref.eval()
    assert torch.allclose(tbn(x, valid)[valid], ref(x[valid]), atol=1e-5)


def test_static_mode_rejects_labels_beyond_max_tokens_and_too_few_superpixels():
    _, static = pair("cast_small", 64)
    x, sp = inputs()
    with pytest.raises(RuntimeError, match="max_tokens=64"):
        static(x, sp + 1)
    few = grid_superpixels(2, 64, 64) % 10  # 10 superpixels, the first stage pools to 16
    with pytest.raises(RuntimeError, match="fewer superpixels than the 16 clusters"):
        static(x, few)
    with pytest.raises(ValueError, match="max_tokens"):
        castvit.create_model("cast_small", max_tokens=8, **tiny_overrides("cast_small"))


SLOW = pytest.mark.slow  # 20–40 s each on a busy 2-core machine: the key models run by default
EXPLAINED = ["cast_small", "cast_small_seg"] + [pytest.param(n, marks=SLOW) for n in (
    "cast_small_deit_seg", "cast_small_seg_pretrain", "vit_suppix_small", "vit_conv_small_patch16")]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", EXPLAINED)
def test_static_forward_is_one_graph_without_breaks(name, train):
    """``torch._dynamo.explain`` traces without compiling: any ``.item()``, ``.cpu()``,
    ``bool(tensor)`` or data-dependent branch would show as a graph break."""
    kw = dict(max_tokens=64) if not name.startswith("vit_conv") else {}
    model = castvit.create_model(name, **kw, **tiny_overrides(name)).train(train)
    x, sp = inputs()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x, sp)
    assert explained.graph_break_count == 0, [str(r.reason) for r in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_segmenter_with_a_static_encoder_is_one_graph(train):
    """The Segmenter (encoder + mask-transformer decoder + pixel gather) traces as one
    graph once its encoder has a fixed token count, and masking every token when traced
    changes nothing where no token is padded."""
    torch.manual_seed(0)
    enc = dict(img_size=64, embed_dim=48, depth=[1, 1, 1, 1], num_heads=4, num_clusters=[16, 8, 4, 2])
    model = castvit.create_model("segmenter_cast_small", num_classes=5, encoder="cast_small_seg",
                                 encoder_kwargs=enc, decoder_kwargs={"n_heads": 2}).train(train)
    x, sp = inputs()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        dynamic = model.eval()(x, sp)
    model.encoder.max_tokens = 80  # 64 superpixels: 16 padded tokens reach the decoder
    model.train(train)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x, sp)
    assert explained.graph_break_count == 0, [str(r.reason) for r in explained.break_reasons]
    assert explained.graph_count == 1
    model.load_state_dict(state)  # a traced training forward moved the BatchNorm statistics
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x, sp), dynamic, rtol=1e-4, atol=1e-5)


def test_the_dynamic_forward_does_break_the_graph():
    """The explain check can fail: the dynamic-shape model reads the token count."""
    model = castvit.create_model("cast_small", **tiny_overrides("cast_small")).eval()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(*inputs())
    assert explained.graph_break_count > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cast_small", "cast_small_seg"])
def test_fullgraph_compile_matches_eager_forward_and_train_step(name):
    torch.manual_seed(0)
    model = castvit.create_model(name, **tiny_overrides(name))
    fast_cpu.enable(model)  # compile_model turns the eager-only speed-ups off
    eager = castvit.create_model(name, max_tokens=64, **tiny_overrides(name))
    eager.load_state_dict(model.state_dict())
    torch._dynamo.reset()
    compiled = compile_model(model, max_tokens=64)
    assert model.max_tokens == 64 and not fast_cpu.is_enabled(model)
    x, sp = inputs()
    model.eval(), eager.eval()
    with torch.no_grad():
        assert torch.allclose(compiled(x, sp), eager(x, sp), atol=1e-4, rtol=1e-4)
    for m in (model, eager):
        m.train()
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
    w = torch.randn(eager(x, sp).shape, generator=torch.Generator().manual_seed(3))
    (compiled(x, sp) * w).sum().backward()
    (eager(x, sp) * w).sum().backward()
    for (n, p), q in zip(model.named_parameters(), eager.parameters()):
        if p.grad is not None:
            # fp32 sums in another order: errors scale with the tensor's largest terms,
            # so near-zero entries of a large gradient get an absolute allowance too
            atol = 1e-4 + 2e-5 * float(q.grad.abs().max())
            assert torch.allclose(p.grad, q.grad, atol=atol, rtol=1e-3), n

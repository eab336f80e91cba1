"""Padded tokens: by default an image's outputs do not depend on its batch mates."""

import pytest
import torch

import castvit
from test_models import grid_superpixels, tiny_overrides

NAMES = ["cast_small", "cast_small_deit", "cast_small_seg_pretrain", "cast_small_deit_seg_pretrain", "vit_suppix_small"]


def sparse_superpixels() -> torch.Tensor:
    """Image with 40 of 64 ids present (the rest padded in a batch that uses id 63)."""
    sp = grid_superpixels(1, 64, 64)[0]
    sp = torch.where(sp >= 40, sp % 40, sp)
    return sp


def run_alone_and_in_batch(name, mask):
    model = castvit.create_model(name, mask_padded_tokens=mask, **tiny_overrides(name)).eval()
    a_img, b_img = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    a_sp = sparse_superpixels()[None]
    b_sp = grid_superpixels(1, 64, 64) + 30  # ids up to 93: image a gets 54 padded tokens
    with torch.no_grad():
        alone = model.forward_features(a_img, a_sp)
        batch = model.forward_features(torch.cat([a_img, b_img]), torch.cat([a_sp, b_sp]))
    return alone, batch, a_sp


@pytest.mark.parametrize("name", NAMES)
def test_outputs_do_not_depend_on_batch_mates(name):
    alone, batch, a_sp = run_alone_and_in_batch(name, True)
    valid = ~alone["padding_mask1" if "padding_mask1" in alone else "padding_mask"][0]
    n = valid.numel()
    for key, ref in alone.items():
        got = batch[key][:1]
        if key.startswith(("logit1", "block1", "padding_mask1", "tokens", "padding_mask")) and got.shape[1] != n:
            got = got[:, :n]
        if key in ("logit1", "block1", "tokens"):
            ref, got = ref[:, valid], got[:, valid]
        if ref.dtype in (torch.bool, torch.int64):
            assert torch.equal(ref, got), key
        else:
            assert torch.allclose(ref, got, atol=1e-5, rtol=1e-4), key


def test_authors_numerics_do_depend_on_batch_mates():
    # The defect castvit fixes: with mask_padded_tokens=False zero tokens take part.
    alone, batch, _ = run_alone_and_in_batch("cast_small", False)
    assert not torch.allclose(alone["out4"], batch["out4"][:1], atol=1e-4)


@pytest.mark.parametrize("name", ["cast_small", "cast_small_seg_pretrain", "cast_small_deit_seg"])
def test_masking_changes_nothing_when_no_token_is_padded(name):
    kw = tiny_overrides(name)
    masked = castvit.create_model(name, **kw).eval()
    authors = castvit.create_model(name, mask_padded_tokens=False, **kw).eval()
    authors.load_state_dict(masked.state_dict())
    x, sp = torch.randn(2, 3, 64, 64), grid_superpixels(2, 64, 64)
    with torch.no_grad():
        assert torch.equal(masked(x, sp), authors(x, sp))


def test_padded_tokens_are_never_sampled_as_centroids():
    model = castvit.create_model("cast_small", **tiny_overrides("cast_small")).eval()
    sp = torch.cat([sparse_superpixels()[None], grid_superpixels(1, 64, 64)])
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, 64, 64), sp)
    padded = feats["padding_mask1"]
    assert padded[0].sum() == 24
    assert not padded[0][feats["sampled_inds1"][0]].any()

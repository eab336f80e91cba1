"""ToMe on superpixel tokens (issue 14): merges conserve size, r = 0 is vit_suppix,
the traced hierarchy is strictly nested and covers every pixel, and the model trains
with the supervised and MoCo recipes."""

import math

import numpy as np
import pytest
import torch

import castvit
from castvit.hierarchy import Hierarchy
from castvit.models import model_config
from castvit.models.tome import ToMeViT, bipartite_merge, merge_schedule

TINY = dict(img_size=64, embed_dim=48, num_heads=4, num_classes=3)


def shuffled_grid(b: int, size: int, cell: int, seed: int = 0) -> torch.Tensor:
    """``b`` maps of square superpixels of side ``cell``, ids shuffled per image."""
    side = size // cell
    ids = torch.arange(side * side).reshape(side, side).repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(side * side, generator=gen)[ids] for _ in range(b)])


def tiny_tome(**kw) -> ToMeViT:
    torch.manual_seed(0)
    return castvit.create_model("tome_small", **{**TINY, "depth": [2, 1, 1, 1], "num_clusters": [16, 8, 4, 2], **kw})


def test_registered_sizes_follow_vit_suppix_and_cast_stages():
    for size, dim in (("small", 384), ("base", 768)):
        cfg = model_config(f"tome_{size}")
        assert cfg["embed_dim"] == dim and sum(cfg["depth"]) == 11 and cfg["num_clusters"] == [64, 32, 16, 8]
        assert model_config(f"vit_suppix_{size}")["depth"] == 11


def test_schedule_reaches_cast_token_counts_at_stage_ends():
    r = merge_schedule(196, [3, 3, 3, 2], [64, 32, 16, 8])
    counts = 196 - np.cumsum(r)
    assert [counts[i] for i in (2, 5, 8, 10)] == [64, 32, 16, 8]
    tokens = 196
    for step in r:  # bipartite matching removes at most half
        assert 0 <= step <= tokens // 2
        tokens -= step


def test_schedule_halves_when_a_stage_cannot_reach_its_target():
    r = merge_schedule(64, [1, 1, 1, 1], [16, 8, 4, 2])
    assert r == [32, 16, 8, 4]  # 64 → 32 → 16 → 8 → 4: one block can only halve
    assert merge_schedule(10, [2, 1, 1, 1], [16, 8, 4, 2]) == [0, 0, 2, 4, 2]


def test_bipartite_merge_against_a_hand_computed_case():
    # A = tokens 0, 2, 4; B = tokens 1, 3. Token 0 is closest to 3, token 2 to 1,
    # token 4 is orthogonal to both and must stay when r = 2.
    metric = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.1, 1.0, 0.0], [1.0, 0.1, 0.0], [0.0, 0.0, 1.0]]])
    x = torch.arange(5 * 2, dtype=torch.float32).reshape(1, 5, 2)
    size = torch.tensor([[1.0, 2.0, 3.0, 1.0, 1.0]])
    out, new_size, index = bipartite_merge(x, metric, size, 2)
    # output: the kept tokens 1, 3, 4 in order, 1 and 3 holding their merges
    assert index.tolist() == [[1, 0, 0, 1, 2]]
    assert new_size.tolist() == [[5.0, 2.0, 1.0]]
    expected_1 = (2 * x[0, 1] + 3 * x[0, 2]) / 5
    expected_3 = (1 * x[0, 3] + 1 * x[0, 0]) / 2
    assert torch.allclose(out[0], torch.stack([expected_1, expected_3, x[0, 4]]))


def test_bipartite_merge_skips_absent_tokens_and_takes_r_per_image():
    torch.manual_seed(0)
    x, metric = torch.randn(2, 8, 4), torch.randn(2, 8, 3)
    size = torch.ones(2, 8)
    size[1, ::3] = 0  # image 1 holds 5 tokens: 1, 2, 4, 5, 7
    out, new_size, index = bipartite_merge(x, metric, size, torch.tensor([4, 1]))
    assert new_size.sum(1).tolist() == [8.0, 5.0]
    assert (new_size[0] > 0).sum() == 4 and (new_size[1] > 0).sum() == 4
    # image 1 alone, without its absent tokens, merges the same way
    kept = torch.tensor([1, 2, 4, 5, 7])
    out1, size1, index1 = bipartite_merge(x[1:, kept], metric[1:, kept], size[1:, kept], 1)
    assert torch.equal(out[1, :4], out1[0]) and torch.equal(new_size[1, :4], size1[0])
    assert torch.equal(index[1, kept], index1[0])


def test_merges_conserve_size_at_every_block():
    model = tiny_tome().eval()
    sp = shuffled_grid(3, 64, 8)
    sp[1][sp[1] == 7] = 3  # image 1 lacks id 7: a padded token
    sp[2][sp[2] < 4] = 4  # image 2 lacks ids 0..3
    valid = [torch.unique(s[::8, ::8]).numel() for s in sp]
    with torch.no_grad():
        out = model.forward_features(torch.randn(3, 3, 64, 64), sp, trace_blocks=True)
    tokens = 64
    for i in range(1, 6):
        sizes = out[f"size_block{i}"]
        assert sizes.shape[1] < tokens, "every block merges here"
        tokens = sizes.shape[1]
        assert sizes.sum(1).tolist() == pytest.approx(valid)
        assert (sizes >= 0).all() and sizes.eq(sizes.round()).all()
    assert [out[f"size{k}"].shape[1] for k in range(1, 5)] == [16, 8, 4, 2]


def test_default_schedule_gives_cast_counts_on_224_images():
    torch.manual_seed(0)
    model = castvit.create_model("tome_small", embed_dim=48, num_heads=4, num_classes=3).eval()
    sp = shuffled_grid(1, 224, 16)  # 196 superpixels, one per 16×16 square
    with torch.no_grad():
        out = model.forward_features(torch.randn(1, 3, 224, 224), sp, trace_blocks=True)
    assert [out[f"size{k}"].shape[1] for k in range(1, 5)] == [64, 32, 16, 8]
    assert all(out[f"size_block{i}"].sum().item() == 196 for i in range(1, 12))


def test_r_zero_equals_vit_suppix_exactly():
    torch.manual_seed(0)
    vit = castvit.create_model("vit_suppix_small", **TINY, depth=5).eval()
    tome = castvit.create_model("tome_small", **TINY, depth=[2, 1, 1, 1], r=0).eval()
    tome.load_state_dict(vit.state_dict())  # same parameter names
    images, sp = torch.randn(2, 3, 64, 64), shuffled_grid(2, 64, 8)
    sp[0][sp[0] == 5] = 6  # a padded token
    with torch.no_grad():
        a, b = vit.forward_features(images, sp), tome.forward_features(images, sp)
        assert torch.equal(a["out4"], b["out4"]) and torch.equal(a["tokens"], b["tokens"])
        assert torch.equal(vit(images, sp), tome(images, sp))


def test_traced_hierarchy_is_strictly_nested_and_covers_every_pixel():
    model = tiny_tome().eval()
    sp = shuffled_grid(2, 64, 8)
    sp[:, :3, :] = 63  # superpixel 63 now owns thin rows too; some ids keep no 8-px cell
    sp[1][sp[1] == 10] = 11
    with torch.no_grad():
        out = model.forward_features(torch.randn(2, 3, 64, 64), sp)
    for b, h in enumerate(Hierarchy.from_outputs(out, sp)):
        assert h.is_nested()
        maps = h.label_maps()
        assert all((m >= 0).all() for m in maps)  # every pixel has a segment at every level
        assert [h.num_segments(k) for k in range(1, 5)] == [16, 8, 4, 2]
        # the traced segments hold exactly the superpixel tokens their sizes count
        for k in range(1, 5):
            seg = h.segment_of(k)
            present = torch.unique(sp[b, ::8, ::8]).numpy()
            counts = np.bincount(seg[present], minlength=out[f"size{k}"].shape[1])
            assert counts.tolist() == out[f"size{k}"][b].tolist()


def test_an_image_does_not_depend_on_the_others_in_its_batch():
    model = tiny_tome().eval()
    images, sp = torch.randn(2, 3, 64, 64), shuffled_grid(2, 64, 8)
    sp[0][sp[0] > 40] = 40  # image 0 has 41 ids, image 1 has 64: image 0 is padded in the batch
    with torch.no_grad():
        alone = model.forward_features(images[:1], sp[:1])
        both = model.forward_features(images, sp)
    torch.testing.assert_close(both["out4"][:1], alone["out4"], atol=1e-5, rtol=1e-5)
    maps_alone = Hierarchy.from_outputs(alone, sp[:1])[0].label_maps()
    maps_both = Hierarchy.from_outputs(both, sp)[0].label_maps()
    assert all(np.array_equal(a, b) for a, b in zip(maps_alone, maps_both))


def test_supervised_recipe_trains_tome(tmp_path):
    from castvit.data.datasets import build_loader
    from castvit.train.supervised import SupervisedConfig, train_supervised

    gen = torch.Generator().manual_seed(0)
    items = [{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8, generator=gen),
              "superpixels": shuffled_grid(1, 64, 8, seed=i)[0], "label": i % 3} for i in range(16)]

    def view(image, gen=None):
        return {"image": image.float() / 255}

    loader = build_loader(items, view, batch_size=8, train=True, seed=0, num_workers=0)
    model = tiny_tome()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = SupervisedConfig(epochs=1, batch_size=8, lr=1e-3, warmup_epochs=0, mixup_alpha=0.0, cutmix_alpha=0.0,
                           mix_prob=0.0, drop_path=0.0, num_workers=0, eval_every=1)
    history = train_supervised(model, loader, cfg, out_dir=None, progress=False)
    assert len(history["train_loss"]) == 1 and math.isfinite(history["train_loss"][0])
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert "blocks.0.attn.qkv.weight" in changed and "head.weight" in changed


def test_moco_step_gives_gradients_to_tome():
    from castvit.train.moco import MoCo

    moco = MoCo(tiny_tome(), dim=16, mlp_dim=32)
    images, sp = torch.randn(4, 3, 64, 64), shuffled_grid(4, 64, 8)
    loss = moco(images, sp, images.flip(-1), sp.flip(-1), m=0.99)
    loss.backward()
    assert torch.isfinite(loss)
    grad = moco.base_encoder.blocks[0].attn.qkv.weight.grad
    assert grad is not None and grad.abs().sum() > 0

"""VOC nearest-neighbour segmentation (castvit.eval.retrieval, castvit eval voc-nn).

Every check recomputes the protocol here by brute force: prototypes from per-pixel
embeddings, majority labels by counting, neighbours by sorting all prototypes.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import castvit
from castvit.data.segmentation import voc_aug
from castvit.data.synthetic_layouts import write_voc_layout
from castvit.eval.retrieval import (
    MemoryBank, SegmentEmbedder, build_embedding_model, build_memory_bank, knn_vote, majority_labels,
    projector_from_state_dict,
)
from castvit.hierarchy import Hierarchy
from castvit.models._builder import model_record

TINY = dict(img_size=64, embed_dim=48, depth=[1, 1, 1, 1], num_heads=4, num_clusters=[16, 8, 4, 2])
SP = dict(method="seeds", n_segments=100, histogram_bins=5, num_iterations=15)
SCENE = dict(image_size=64, num_classes=3)


def tiny_moco_checkpoint(path, name="cast_small_seg_pretrain", seed=0, projector=True):
    """A castvit-record MoCo container (``module.base_encoder.*``) of a tiny model whose
    head is a 3-layer MoCo projector with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    m = castvit.create_model(name, **TINY)
    if projector:
        m.head = nn.Sequential(nn.Linear(48, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(inplace=True),
                               nn.Linear(64, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(inplace=True),
                               nn.Linear(64, 32, bias=False), nn.BatchNorm1d(32, affine=False))
        for mod in m.head:
            if isinstance(mod, nn.BatchNorm1d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
    sd = {"module.base_encoder." + k: v for k, v in m.state_dict().items()}
    torch.save({"epoch": 1, "state_dict": sd, "castvit_model": model_record(m)}, path)
    return m


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return write_voc_layout(tmp_path_factory.mktemp("voc"), num_train=4, num_val=2, scene=SCENE)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "last.pth.tar"
    tiny_moco_checkpoint(path)
    return path


def test_projector_rebuilt_from_weights_matches_original(checkpoint):
    torch.manual_seed(1)
    m = tiny_moco_checkpoint(checkpoint.parent / "p.pth.tar", seed=3)
    mlp = projector_from_state_dict({f"head.{k}": v for k, v in m.head.state_dict().items()})
    mlp.load_state_dict(m.head.state_dict())
    x = torch.randn(7, 48)
    assert torch.allclose(mlp.eval()(x), m.head.eval()(x), atol=1e-6)
    assert [type(l).__name__ for l in mlp] == [type(l).__name__ for l in m.head]


def test_embedding_model_keeps_projector_per_token(checkpoint):
    model = build_embedding_model(checkpoint)
    assert model.task == "seg" and not model.training
    assert model.num_clusters == TINY["num_clusters"]  # not the 64/32/16/8 default: kept
    src = torch.load(checkpoint)["state_dict"]
    w = src["module.base_encoder.head.6.weight"]
    assert torch.equal(model.head.mlp[6].weight, w)
    # per token: the projector applied to every fused token row
    img = torch.rand(1, 3, 64, 64)
    sp = torch.arange(64).reshape(8, 8).repeat_interleave(8, 0).repeat_interleave(8, 1)[None]
    with torch.no_grad():
        feats = model.forward_features(img, sp)
        emb = model.forward_head(feats)
        ref = model.head.mlp(feats["features"][0])
    assert emb.shape == (1, 64, 32)
    assert torch.allclose(emb[0], ref, atol=1e-5)


def test_embedding_model_errors_name_the_fix(tmp_path):
    tiny_moco_checkpoint(tmp_path / "cls.pth.tar", name="cast_small")
    with pytest.raises(ValueError, match="block-fusion.*--head none"):
        build_embedding_model(tmp_path / "cls.pth.tar", head="projector")
    tiny_moco_checkpoint(tmp_path / "noproj.pth.tar", projector=False)
    with pytest.raises(ValueError, match="projector"):
        build_embedding_model(tmp_path / "noproj.pth.tar", head="projector")
    assert isinstance(build_embedding_model(tmp_path / "noproj.pth.tar").head, nn.Identity)  # auto: no projector
    tiny_moco_checkpoint(tmp_path / "deit.pth.tar", name="cast_small_deit", projector=False)
    with pytest.raises(ValueError, match="per-superpixel tokens"):
        build_embedding_model(tmp_path / "deit.pth.tar")


def test_classifier_checkpoint_embeds_unpooled_stage_outputs(tmp_path):
    """A CAST classifier (the castvit demo's kind of checkpoint) has no block fusion: its
    embedding is the four stage outputs, each unpooled to the superpixels through the
    hard (argmax) hierarchy, concatenated; its trained weights are all used."""
    torch.manual_seed(0)
    cls = castvit.create_model("cast_small", num_classes=4, **TINY)
    path = castvit.save_pretrained(cls, tmp_path / "demo_like.safetensors")
    model = build_embedding_model(path)
    assert model.embedding_fusion == "unpooled" and model.task == "seg" and isinstance(model.head, nn.Identity)
    own = list(model.state_dict().values())  # the seg variant names its stages differently
    for k, v in cls.state_dict().items():
        if not k.startswith(("head.", "norm.")) and v.numel() > 1:
            assert any(o.shape == v.shape and torch.equal(o, v) for o in own), k
    gen = torch.Generator().manual_seed(1)
    img = torch.rand(1, 3, 64, 64, generator=gen)
    sp = torch.arange(64).reshape(8, 8).repeat_interleave(8, 0).repeat_interleave(8, 1)[None]
    with torch.no_grad():
        feats = model.forward_features(img, sp)
        emb = model.forward_head(feats)[0]
    # independent: follow each superpixel up the argmax assignments, level by level
    parent = [feats[f"logit{k}"][0].argmax(-1) for k in (1, 2, 3)]
    pieces, index = [feats["block1"][0]], torch.arange(64)
    for k in (2, 3, 4):
        index = parent[k - 2][index]
        pieces.append(feats[f"block{k}"][0][index])
    assert emb.shape == (64, 4 * TINY["embed_dim"])
    assert torch.allclose(emb, torch.cat(pieces, -1), atol=1e-6)
    untrained = build_embedding_model(path, untrained=True, seed=3)
    assert untrained.embedding_fusion == "unpooled"
    with torch.no_grad():
        assert not torch.allclose(untrained(img, sp)[0], emb)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_embedding_model(tmp_path / "missing.pth.tar")


def test_majority_labels_ties_go_to_lowest_value():
    seg = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 3]])
    tgt = np.array([[5, 3, 5, 3], [255, 255, 7, 7], [255, 255, 1, 255]])
    # seg 0: 3 vs 5 tie -> 3; seg 1: 7 vs 255 tie -> 7; seg 2: 255 wins 2:1; seg 3: 255
    assert majority_labels(seg, tgt).tolist() == [3, 7, 255, 255]


def _brute_prototypes(emb, target):
    """Pixel by pixel: every pixel's normalised embedding, summed per segment."""
    pix = F.normalize(emb.token_embeddings.double(), dim=-1)[torch.from_numpy(emb.superpixels)]  # H×W×C
    protos, labels = [], []
    for s in range(int(emb.segments.max()) + 1):
        sel = torch.from_numpy(emb.segments == s)
        protos.append(F.normalize(pix[sel].sum(0), dim=0))
        counts = Counter(np.asarray(target)[emb.segments == s].tolist())
        top = max(counts.values())
        labels.append(min(v for v, c in counts.items() if c == top))
    return torch.stack(protos), labels


def test_memory_bank_matches_brute_force(voc_root, checkpoint, tmp_path):
    model = build_embedding_model(checkpoint)
    emb = SegmentEmbedder(model, long_side=64, superpixels=SP)
    train = voc_aug(voc_root, "train_aug")
    bank = build_memory_bank(emb, train, tmp_path / "bank", num_classes=4, shard_size=3)
    assert len(bank.prototypes) > 1  # several shards
    expect_p, expect_l, expect_img = [], [], []
    for i in range(len(train)):
        item = train[i]
        image = item["image"].permute(1, 2, 0).numpy()
        e = emb(image)
        # the segments are the level-4 hierarchy of the same forward pass, renumbered
        x = castvit.ops.normalize_images(image)
        sp = torch.from_numpy(e.superpixels)[None]
        with torch.no_grad():
            h = Hierarchy.from_outputs(model.forward_features(x, sp), sp, on_grid=False)[0]
        pairs = set(zip(h.label_map(4).ravel().tolist(), e.segments.ravel().tolist()))
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
        assert e.segments.max() + 1 <= TINY["num_clusters"][3]
        p, lab = _brute_prototypes(e, item["target"].numpy())
        for s, l in enumerate(lab):
            if l != 255:
                expect_p.append(p[s])
                expect_l.append(l)
                expect_img.append(i)
    assert len(bank) == len(expect_l) > 0
    assert torch.allclose(bank.all_prototypes().double(), torch.stack(expect_p), atol=1e-5)
    assert bank.all_labels().tolist() == expect_l
    assert torch.cat(bank.images).tolist() == expect_img
    # the saved bank reads back identically, shard by shard
    again = MemoryBank.load(tmp_path / "bank")
    assert torch.equal(again.all_prototypes(), bank.all_prototypes())
    pix = sum(np.bincount(train[i]["target"].numpy().ravel(), minlength=256)[:4] for i in range(len(train)))
    assert again.meta["pixel_counts"] == pix.tolist()


def _brute_vote(q, protos, labels, k, num_classes):
    sims = (q[None] * protos).sum(1).tolist()
    order = sorted(range(len(sims)), key=lambda j: (-sims[j], j))[:k]
    votes = Counter(labels[j] for j in order)
    top = max(votes.values())
    return min(c for c, n in votes.items() if n == top), sorted(order)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 40])
def test_knn_vote_matches_brute_force_with_ties(k):
    gen = torch.Generator().manual_seed(k)
    # entries in quarters: every dot product is exact in float32, so ties are real ties
    base = torch.randint(-4, 5, (9, 8), generator=gen).float() / 4
    protos = torch.cat([base, base[:4], base[2:6]])  # duplicates: equal similarities
    labels = torch.tensor([0, 1, 2, 1, 0, 2, 3, 1, 0, 2, 2, 0, 1, 3, 3, 1, 2])
    assert len(labels) == len(protos)
    # unit queries with four ±0.5 entries (norm exactly 1)
    queries = []
    for _ in range(25):
        q = torch.zeros(8)
        idx = torch.randperm(8, generator=gen)[:4]
        q[idx] = torch.where(torch.rand(4, generator=gen) < 0.5, -0.5, 0.5)
        queries.append(q)
    queries = torch.stack(queries)
    bank = MemoryBank([protos[:5], protos[5:6], protos[6:13], protos[13:]], [labels[:5], labels[5:6], labels[6:13],
                      labels[13:]], [torch.zeros(5), torch.zeros(1), torch.zeros(7), torch.zeros(4)], {})
    pred, nb = knn_vote(queries, bank, k, num_classes=4, return_neighbours=True)
    for i, q in enumerate(queries):
        want, order = _brute_vote(q, protos, labels.tolist(), k, 4)
        assert pred[i].item() == want
        assert sorted(nb[i].tolist()) == order


def test_knn_vote_hand_made_ties():
    protos = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([2, 1, 0, 3])
    bank = MemoryBank([protos], [labels], [torch.zeros(4)], {})
    q = torch.tensor([[1.0, 0.0]])
    # three equal neighbours, k=2: the first two in the bank (labels 2, 1), a 1-1 tie -> class 1
    assert knn_vote(q, bank, 2, 4).tolist() == [1]
    # k=3: labels 2, 1, 3 one vote each -> 1
    assert knn_vote(q, bank, 3, 4).tolist() == [1]
    with pytest.raises(ValueError, match="empty"):
        knn_vote(q, MemoryBank([], [], [], {}), 3, 4)


def test_voc_nn_command_end_to_end(voc_root, checkpoint, tmp_path, capsys):
    from castvit.cli import main

    args = ["eval", "voc-nn", "--root", str(voc_root), "--checkpoint", str(checkpoint), "--long-side", "64",
            "--superpixels", "100", "--k", "3", "--out", str(tmp_path / "out"), "--no-progress", "--pictures", "1"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "mIoU" in text and "majority class" in text
    rec = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert rec["images"] == 2 and rec["k"] == 3 and rec["level"] == 4 and rec["num_classes"] == 4
    assert 0.0 <= rec["mIoU"] <= 1.0 and set(rec["per_class"]) == {"background", "totem", "rocket", "rattle"}
    assert (tmp_path / "out" / "bank" / "meta.json").is_file()
    assert (tmp_path / "out" / "prediction_0.png").is_file()
    # second run reuses the bank, same numbers
    assert main(args) == 0
    assert "reusing the memory bank" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["mIoU"] == rec["mIoU"]
    # a bad checkpoint is a clear error, not a traceback
    assert main(args[:4] + ["--checkpoint", str(tmp_path / "nope.pth")] + args[6:]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_embedding_model_from_train_container_without_record(tmp_path):
    """castvit train's container names its model only in the recipe (castvit.config.model)."""
    m = tiny_moco_checkpoint(tmp_path / "rec.pth.tar")
    ck = torch.load(tmp_path / "rec.pth.tar")
    del ck["castvit_model"]
    kwargs = {k: v for k, v in TINY.items()}
    ck["castvit"] = {"format": "castvit-train/1", "config": {"model": {"name": "cast_small_seg_pretrain",
                                                                       "kwargs": kwargs}}}
    torch.save(ck, tmp_path / "train.pth.tar")
    model = build_embedding_model(tmp_path / "train.pth.tar")
    assert model.num_clusters == TINY["num_clusters"] and model.embed_dim == 48
    assert torch.equal(model.head.mlp[0].weight, m.head[0].weight)
    untrained = build_embedding_model(tmp_path / "train.pth.tar", untrained=True)
    assert not torch.equal(untrained.head.mlp[0].weight, m.head[0].weight)
    assert untrained.head.mlp[0].weight.shape == m.head[0].weight.shape


def test_published_name_gives_the_authors_retrieval_model(tmp_path, monkeypatch):
    """cast_small_seg_pretrain.moco_coco_ep149 (a local stand-in in the cache, as the README
    tests do) → cast_small_seg with 320/160/80/40 clusters and the projector as head."""
    from castvit.models import hub

    entry = hub.pretrained_entry("cast_small_seg_pretrain.moco_coco_ep149")
    monkeypatch.setenv("CASTVIT_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CASTVIT_HUB_URL", (tmp_path / "offline").as_uri())
    torch.manual_seed(0)
    src = castvit.create_model(entry.model)
    sd = {f"module.base_encoder.{k}": v for k, v in src.state_dict().items() if not k.startswith("head.")}
    sd["module.base_encoder.head.0.weight"] = torch.randn(16, 384)
    sd["module.base_encoder.head.1.running_mean"] = torch.zeros(16)
    sd["module.base_encoder.head.1.running_var"] = torch.ones(16)
    sd["module.base_encoder.head.1.num_batches_tracked"] = torch.tensor(0)
    (tmp_path / "cache").mkdir()
    torch.save({"epoch": 150, "arch": "cast_small", "state_dict": sd}, tmp_path / "cache" / entry.filename)
    model = build_embedding_model("cast_small_seg_pretrain.moco_coco_ep149")
    assert model.castvit_name == "cast_small_seg" and model.num_clusters == [320, 160, 80, 40]
    assert torch.equal(model.head.mlp[0].weight, sd["module.base_encoder.head.0.weight"])
    assert torch.equal(model.block_fusion.state_dict()["proj_blocks.2.weight"],
                       src.block_fusion.state_dict()["proj_blocks.2.weight"])

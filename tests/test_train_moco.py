"""MoCo-v3: the loss, the momentum update, the published state-dict names and container."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import castvit
from conftest import FIXTURES
from castvit.checkpoint import read_checkpoint
from castvit.data.datasets import build_loader
from castvit.data.transforms import MoCoViews, SuperpixelConfig
from castvit.train import distributed as D
from castvit.train.moco import MoCo, MoCoConfig, contrastive_loss, load_moco_state, train_moco
from castvit.train.optim import load_optimizer_checked


pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(img_size=32, embed_dim=48, depth=[1, 1, 1, 1], num_heads=4, num_clusters=[8, 4, 4, 2])


def tiny_encoder(**kw):
    torch.manual_seed(0)
    return castvit.create_model("cast_small", **{**TINY, **kw})


class RandomImages(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int = 32, classes: int = 4):
        gen = torch.Generator().manual_seed(123)
        self.images = torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)
        self.labels = torch.arange(n) % classes

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": int(self.labels[i])}


def reference_ctr(q: np.ndarray, k_all: np.ndarray, t: float, offset: int) -> float:
    """2T · mean_i −log softmax(q̂_i · k̂ / T)[i + offset], in float64 with explicit loops."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k_all / np.linalg.norm(k_all, axis=1, keepdims=True)
    total = 0.0
    for i in range(q.shape[0]):
        logits = [float(np.dot(q[i], k[j])) / t for j in range(k.shape[0])]
        m = max(logits)
        lse = m + np.log(sum(np.exp(x - m) for x in logits))
        total += lse - logits[i + offset]
    return 2 * t * total / q.shape[0]


def test_contrastive_loss_matches_an_independent_computation():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(6, 16, generator=gen), torch.randn(6, 16, generator=gen)
    got = float(contrastive_loss(q, k, 0.2, rank=0))
    assert got == pytest.approx(reference_ctr(q.double().numpy(), k.double().numpy(), 0.2, 0), rel=1e-5)


def test_contrastive_loss_uses_the_gathered_keys_with_the_rank_offset(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    q, k_rank0, k_rank1 = (torch.randn(4, 8, generator=gen) for _ in range(3))
    gathered = torch.cat([k_rank0, k_rank1])
    # the loss gathers normalised keys; rank 0 contributes its own
    monkeypatch.setattr(D, "concat_all_gather",
                        lambda k: torch.cat([torch.nn.functional.normalize(k_rank0, dim=1), k]))
    got = float(contrastive_loss(q, k_rank1, 0.2, rank=1))
    assert got == pytest.approx(reference_ctr(q.double().numpy(), gathered.double().numpy(), 0.2, 4), rel=1e-5)


def test_loss_is_symmetric_sum_of_both_directions():
    moco = MoCo(tiny_encoder(pool_dropout=0.0), dim=16, mlp_dim=32, temperature=0.2)
    x1, x2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    from castvit.data.transforms import grid_superpixels

    s = grid_superpixels(32, 32, 16).expand(4, -1, -1).contiguous()
    state = {k: v.clone() for k, v in moco.state_dict().items()}
    loss = moco(x1, s, x2, s, 0.9).detach()
    moco.load_state_dict(state)
    q1 = moco.predictor(moco.base_encoder(x1, s))
    q2 = moco.predictor(moco.base_encoder(x2, s))
    moco.update_momentum_encoder(0.9)
    k1, k2 = moco.momentum_encoder(x1, s), moco.momentum_encoder(x2, s)
    expected = contrastive_loss(q1, k2, 0.2) + contrastive_loss(q2, k1, 0.2)
    assert float(loss) == pytest.approx(float(expected.detach()), rel=1e-6)


def test_momentum_update_moves_parameters_only():
    moco = MoCo(tiny_encoder(), dim=16, mlp_dim=32)
    with torch.no_grad():
        for p in moco.base_encoder.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in moco.momentum_encoder.state_dict().items()}
    base = dict(moco.base_encoder.state_dict())
    moco.update_momentum_encoder(0.75)
    params = {n for n, _ in moco.momentum_encoder.named_parameters()}
    for name, value in moco.momentum_encoder.state_dict().items():
        if name in params:
            torch.testing.assert_close(value, 0.75 * before[name] + 0.25 * base[name])
        else:
            assert torch.equal(value, before[name]), f"buffer {name} changed"
    assert not any(p.requires_grad for p in moco.momentum_encoder.parameters())


def test_projector_and_predictor_have_the_published_names_and_shapes():
    with torch.device("meta"):
        moco = MoCo(castvit.create_model("cast_small"))
    sd = {k: tuple(v.shape) for k, v in moco.state_dict().items()}
    expected = {
        "head.0.weight": (4096, 384), "head.1.weight": (4096,), "head.1.running_mean": (4096,),
        "head.3.weight": (4096, 4096), "head.4.weight": (4096,), "head.6.weight": (256, 4096),
        "head.7.running_mean": (256,), "head.7.running_var": (256,),
    }
    for prefix in ("base_encoder.", "momentum_encoder."):
        for k, shape in expected.items():
            assert sd[prefix + k] == shape
        for absent in ("head.0.bias", "head.7.weight", "head.7.bias", "head.2.weight"):
            assert prefix + absent not in sd
    assert sd["predictor.0.weight"] == (4096, 256)
    assert sd["predictor.1.weight"] == (4096,)
    assert sd["predictor.3.weight"] == (256, 4096)
    assert "predictor.4.running_var" in sd and "predictor.4.weight" not in sd
    assert list(moco.base_encoder.state_dict())[-1].startswith("head."), "head is re-added last, as the authors do"


def test_base_encoder_keys_match_the_official_cast_small_keys():
    path = FIXTURES / "official_state_dict_shapes.json"
    if not path.is_file():
        pytest.skip(f"reference fixture {path} not found; set CASTVIT_FIXTURES")
    shapes = json.loads(path.read_text())["cast_models.cast.cast_small"]
    official = {k: tuple(v) for k, v in shapes.items()
                if not k.startswith("head.") and not k.split(".")[0] in ("blocks1", "blocks2", "blocks3", "blocks4")}
    with torch.device("meta"):
        moco = MoCo(castvit.create_model("cast_small"))
    ours = {k: tuple(v.shape) for k, v in moco.base_encoder.state_dict().items() if not k.startswith("head.")}
    assert ours == official


@pytest.fixture(scope="module")
def moco_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("moco")
    views = MoCoViews(32, scale=(0.5, 1.0), superpixels=SuperpixelConfig(method="grid", n_segments=16))
    loader = build_loader(RandomImages(8), views, batch_size=4, train=True, seed=0)
    encoder = tiny_encoder()
    moco = MoCo(encoder, dim=16, mlp_dim=32)
    cfg = MoCoConfig(epochs=1, lr=1e-3, warmup_epochs=0, dim=16, mlp_dim=32, num_workers=0, log_every=1)
    train_moco(moco, loader, cfg, out_dir=out, progress=False)
    return out, moco


def test_checkpoint_is_the_authors_moco_container(moco_run):
    out, moco = moco_run
    ckpt = read_checkpoint(out / "last.pth.tar")
    assert {"epoch", "arch", "state_dict", "optimizer", "scaler"} <= set(ckpt)
    assert ckpt["epoch"] == 1 and ckpt["arch"] == "cast_small"
    prefixes = {k.split(".")[0] + "." + k.split(".")[1] for k in ckpt["state_dict"]}
    assert prefixes == {"module.base_encoder", "module.momentum_encoder", "module.predictor"}
    assert "module.base_encoder.head.6.weight" in ckpt["state_dict"]


def test_castvit_load_checkpoint_reads_the_base_encoder_back(moco_run):
    out, moco = moco_run
    classifier = castvit.create_model("cast_small", **TINY, num_classes=7)
    report = castvit.load_checkpoint(classifier, out / "last.pth.tar")
    assert report.container == "moco"
    assert set(report.reinitialised) == {"head.weight", "head.bias"}
    base = moco.base_encoder.state_dict()
    for k, v in classifier.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(v, base[k]), k


def test_moco_container_loads_back_into_a_moco_wrapper(moco_run):
    out, moco = moco_run
    other = MoCo(tiny_encoder(), dim=16, mlp_dim=32)
    load_moco_state(other, read_checkpoint(out / "last.pth.tar"))
    for (k, a), b in zip(moco.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k


def test_optimizer_state_of_another_parameter_layout_is_refused():
    a = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    b = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 4))
    opt_a = torch.optim.AdamW(a.parameters())
    a(torch.randn(2, 3)).sum().backward()
    opt_a.step()
    opt_b = torch.optim.AdamW(b.parameters())
    with pytest.warns(UserWarning, match="optimizer state not restored"):
        assert not load_optimizer_checked(opt_b, opt_a.state_dict())
    assert load_optimizer_checked(torch.optim.AdamW(a.parameters()), opt_a.state_dict())

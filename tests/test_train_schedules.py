"""Learning-rate and momentum schedules against the formulas of SPEC §7."""

from __future__ import annotations

import math

import pytest

from castvit.train.schedules import cosine_lr, moco_momentum, scaled_lr


def spec_moco_lr(epoch: float, lr: float, warmup: float, epochs: float) -> float:
    # MoCo-v3 main_moco.adjust_learning_rate, written out independently.
    if epoch < warmup:
        return lr * epoch / warmup
    return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))


@pytest.mark.parametrize("t", [0.0, 0.25, 5.0, 9.999, 10.0, 10.5, 37.3, 55.0, 99.0, 99.999, 100.0])
def test_moco_lr_matches_spec_formula_at_sample_points(t):
    base = 1.5e-4 * 1024 / 256
    got = cosine_lr(t, base_lr=base, epochs=100, warmup_epochs=10)
    assert got == pytest.approx(spec_moco_lr(t, base, 10, 100), rel=1e-12, abs=1e-18)


def test_moco_lr_landmarks():
    base = 6e-4
    assert cosine_lr(0.0, base_lr=base, epochs=100, warmup_epochs=10) == 0.0
    assert cosine_lr(5.0, base_lr=base, epochs=100, warmup_epochs=10) == pytest.approx(base / 2)
    assert cosine_lr(10.0, base_lr=base, epochs=100, warmup_epochs=10) == pytest.approx(base)
    assert cosine_lr(55.0, base_lr=base, epochs=100, warmup_epochs=10) == pytest.approx(base / 2)
    assert cosine_lr(100.0, base_lr=base, epochs=100, warmup_epochs=10) == pytest.approx(0.0, abs=1e-18)


def test_supervised_lr_warms_up_from_warmup_lr_and_ends_at_min_lr():
    kw = dict(base_lr=1e-3, epochs=300, warmup_epochs=5, min_lr=1e-5, warmup_start_lr=1e-6)
    assert cosine_lr(0.0, **kw) == pytest.approx(1e-6)
    assert cosine_lr(2.5, **kw) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    assert cosine_lr(5.0, **kw) == pytest.approx(1e-3)
    assert cosine_lr(152.5, **kw) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)
    assert cosine_lr(300.0, **kw) == pytest.approx(1e-5)


@pytest.mark.parametrize("t", [0.0, 0.5, 1.0, 12.34, 50.0, 77.7, 99.5, 100.0])
def test_momentum_matches_spec_formula_at_sample_points(t):
    m0, epochs = 0.99, 100
    expected = 1.0 - 0.5 * (1.0 + math.cos(math.pi * t / epochs)) * (1.0 - m0)
    assert moco_momentum(t, base_momentum=m0, epochs=epochs) == pytest.approx(expected, rel=1e-15)


def test_momentum_goes_from_m0_to_one_and_can_be_constant():
    assert moco_momentum(0.0, base_momentum=0.99, epochs=100) == pytest.approx(0.99)
    assert moco_momentum(50.0, base_momentum=0.99, epochs=100) == pytest.approx(0.995)
    assert moco_momentum(100.0, base_momentum=0.99, epochs=100) == pytest.approx(1.0)
    assert moco_momentum(70.0, base_momentum=0.99, epochs=100, cosine=False) == 0.99


def test_linear_scaling_rule():
    assert scaled_lr(1.5e-4, 4096, 256) == pytest.approx(2.4e-3)
    assert scaled_lr(0.8, 256, 256) == pytest.approx(0.8)
    assert scaled_lr(1e-3, 64, None) == 1e-3

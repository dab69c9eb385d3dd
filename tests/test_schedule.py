"""Pure schedule functions: burn-in, MultiStep / cosine learning rate, multi-scale sizes."""

from __future__ import annotations

import math

import pytest

from utils.schedule import (
    burn_in_batches,
    burn_in_factors,
    learning_rate,
    lr_factor,
    multi_scale_range,
    multi_scale_size,
    multistep_milestones,
    scheduler_state,
)


def test_burn_in_batches_formula_and_override():
    assert burn_in_batches(100) == 21  # round(100/5 + 1)
    assert burn_in_batches(7) == 2  # round(2.4)
    assert burn_in_batches(1) == 1
    assert burn_in_batches(10_000) == 1000  # capped
    assert burn_in_batches(100, burn_in=300) == 300
    assert burn_in_batches(100, burn_in=0) == 0
    with pytest.raises(ValueError, match="burn-in"):
        burn_in_batches(100, burn_in=-1)


def test_burn_in_factors_power4_and_gr_ramp():
    assert burn_in_factors(0, 10) == (0.0, 0.0)
    lr_mult, gr = burn_in_factors(5, 10)
    assert lr_mult == pytest.approx(0.5**4) and gr == pytest.approx(0.5)
    assert burn_in_factors(10, 10) == (1.0, 1.0)
    assert burn_in_factors(11, 10) == (1.0, 1.0)
    assert burn_in_factors(0, 0) == (1.0, 1.0)  # burn-in off
    # monotone
    values = [burn_in_factors(i, 50)[0] for i in range(60)]
    assert values == sorted(values)


def test_multistep_factor():
    assert multistep_milestones(100) == [80, 90]
    assert multistep_milestones(10) == [8, 9]
    assert lr_factor(0, 100) == 1.0
    assert lr_factor(79, 100) == 1.0
    assert lr_factor(80, 100) == pytest.approx(0.1)
    assert lr_factor(89, 100) == pytest.approx(0.1)
    assert lr_factor(90, 100) == pytest.approx(0.01)
    assert lr_factor(99, 100) == pytest.approx(0.01)


def test_cosine_factor():
    lrf = 0.0005
    assert lr_factor(0, 100, cos=True, lrf=lrf) == pytest.approx(1.0)
    assert lr_factor(50, 100, cos=True, lrf=lrf) == pytest.approx(0.5 * (1 - lrf) + lrf)
    assert lr_factor(100, 100, cos=True, lrf=lrf) == pytest.approx(lrf)
    values = [lr_factor(e, 30, cos=True, lrf=lrf) for e in range(30)]
    assert all(a > b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError):
        lr_factor(0, 0)


def test_learning_rate_combines_epoch_and_burn_in():
    assert learning_rate(0.01, 0, 10, ni=0, n_burn=4) == 0.0
    assert learning_rate(0.01, 0, 10, ni=2, n_burn=4) == pytest.approx(0.01 * 0.5**4)
    assert learning_rate(0.01, 9, 10, ni=900, n_burn=4) == pytest.approx(0.01 * 0.01)
    # burn-in longer than an epoch keeps ramping in epoch 1
    assert learning_rate(0.01, 1, 10, ni=15, n_burn=20) == pytest.approx(0.01 * (15 / 20) ** 4)


def test_multi_scale_range_and_values():
    assert multi_scale_range(416) == (288, 608)
    assert multi_scale_range(320) == (224, 480)
    lo, hi = multi_scale_range(416)
    sizes = {multi_scale_size(416, ni, accumulate=1, seed=0) for ni in range(0, 3000, 10)}
    assert all(s % 32 == 0 and lo <= s <= hi for s in sizes)
    assert len(sizes) > 5  # actually varies over the range
    assert sizes <= set(range(lo, hi + 1, 32))


def test_multi_scale_changes_every_10_optimizer_steps_and_is_deterministic():
    acc = 4
    block = [multi_scale_size(416, ni, accumulate=acc, seed=3) for ni in range(40)]
    assert len(set(block)) == 1  # 40 batches = 10 optimizer steps with accumulate 4
    a = [multi_scale_size(416, ni, accumulate=acc, seed=3) for ni in range(0, 4000, 40)]
    b = [multi_scale_size(416, ni, accumulate=acc, seed=3) for ni in range(0, 4000, 40)]
    c = [multi_scale_size(416, ni, accumulate=acc, seed=4) for ni in range(0, 4000, 40)]
    assert a == b
    assert a != c


def test_scheduler_state_describes_schedule():
    s = scheduler_state(epochs=10, cos=False, lrf=0.0005, lr0=0.01, n_burn=3, epoch=9)
    assert s["kind"] == "multistep" and s["milestones"] == [8, 9] and s["n_burn"] == 3
    assert math.isclose(s["lr_factor"], 0.01)
    s = scheduler_state(epochs=10, cos=True, lrf=0.0005, lr0=0.01, n_burn=3, epoch=0)
    assert s["kind"] == "cosine" and s["lr_factor"] == pytest.approx(1.0)

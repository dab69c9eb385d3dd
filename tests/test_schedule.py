"""Pure schedule functions: the 2020 burn-in ramps, cosine / MultiStep lr, accumulation, steps, multi-scale sizes."""

from __future__ import annotations

import math

import pytest

from utils.schedule import (
    Recipe,
    auto_accumulate,
    burn_in_batches,
    lr_factor,
    multi_scale_range,
    multistep_milestones,
)

HYP = {"lr0": 0.01, "momentum": 0.937, "weight_decay": 0.0005}


def recipe_2020(nb: int = 100, epochs: int = 10, accumulate: int = 4, n_burn: int | None = None) -> Recipe:
    n_burn = burn_in_batches(nb, "2020") if n_burn is None else n_burn
    return Recipe("2020", epochs, nb, n_burn, "cos", accumulate, **HYP)


def test_burn_in_batches_per_recipe_and_override():
    assert burn_in_batches(10) == 500 and burn_in_batches(100) == 500  # max(3 nb, 500)
    assert burn_in_batches(200) == 600
    assert burn_in_batches(100, "2019") == 21  # round(100/5 + 1)
    assert burn_in_batches(7, "2019") == 2 and burn_in_batches(10_000, "2019") == 1000
    assert burn_in_batches(100, "2020", burn_in=300) == 300 and burn_in_batches(100, "2019", burn_in=0) == 0
    with pytest.raises(ValueError, match="burn-in"):
        burn_in_batches(100, burn_in=-1)
    with pytest.raises(ValueError, match="recipe"):
        burn_in_batches(100, "2021")


def test_auto_accumulate_aims_at_64_images_per_step():
    assert [auto_accumulate(b) for b in (1, 16, 32, 64, 128)] == [64, 4, 2, 1, 0.5]
    after = [Recipe("2020", 10, 10, 0, "cos", auto_accumulate(b), **HYP).steps_accumulate for b in (24, 40, 128)]
    assert after == [3, 2, 1]  # max(round(64 / bs), 1) once burn-in is over


def test_2020_accumulate_ramps_towards_the_unrounded_target():
    """The reference interpolates towards 64 / batch_size itself and rounds each value. At batch 24 (target
    2.667) and x = 0.8 that is round(2.333) = 2, where a ramp to the rounded target 3 would give round(2.6) = 3."""
    r = Recipe("2020", 10, 100, 500, "cos", auto_accumulate(24), **HYP)
    assert [r.settings(ni).accumulate for ni in (0, 150, 370, 400, 500)] == [1, 2, 2, 2, 3]


def test_cosine_has_a_five_percent_floor():
    # hand values of ((1 + cos(pi e / 10)) / 2) * 0.95 + 0.05
    expected = {0: 1.0, 1: 0.97675185, 2: 0.90928302, 5: 0.525, 9: 0.07324815, 10: 0.05}
    for e, v in expected.items():
        assert lr_factor(e, 10, "cos") == pytest.approx(v, rel=1e-7), e
    values = [lr_factor(e, 30, "cos") for e in range(31)]
    assert all(a > b for a, b in zip(values, values[1:])) and min(values) == pytest.approx(0.05)
    with pytest.raises(ValueError):
        lr_factor(0, 0)
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, 10, "step")


def test_multistep_factor():
    assert multistep_milestones(100) == [80, 90] and multistep_milestones(10) == [8, 9]
    assert [lr_factor(e, 100, "multistep") for e in (0, 79, 80, 89, 90, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])


# (ni, epoch lr, lr other, lr conv, lr bias, wd conv, momentum, gr, accumulate) for nb=100, epochs=10, n_burn=500,
# lr0=0.01, momentum 0.937, wd 5e-4, bs 16 (accumulate target 4). Worked out by hand from np.interp(ni, [0, 500], ..).
RAMPS = [
    (0, 0.01, 0.0, 0.0, 0.1, 0.0, 0.9, 0.0, 1),
    (125, 0.0097675185, 0.0024418796, 0.0024418796, 0.0774418796, 0.000125, 0.90925, 0.25, 2),  # round(1.75)
    (250, 0.0090928302, 0.0045464151, 0.0045464151, 0.0545464151, 0.00025, 0.9185, 0.5, 2),  # round(2.5) = 2
    (375, 0.0080419799, 0.0060314850, 0.0060314850, 0.0310314850, 0.000375, 0.92775, 0.75, 3),  # round(3.25)
    (500, 0.00525, 0.00525, 0.00525, 0.00525, 0.0005, 0.937, 1.0, 4),  # burn-in over: the epoch's lr everywhere
    (950, 0.0007324815, 0.0007324815, 0.0007324815, 0.0007324815, 0.0005, 0.937, 1.0, 4),
]


@pytest.mark.parametrize("row", RAMPS, ids=[f"ni={r[0]}" for r in RAMPS])
def test_2020_burn_in_ramps_every_group_momentum_decay_accumulate_and_gr(row):
    ni, epoch_lr, lr_other, lr_conv, lr_bias, wd_conv, momentum, gr, accumulate = row
    r = recipe_2020()
    assert r.n_burn == 500 and r.epoch_lr(ni // 100) == pytest.approx(epoch_lr, rel=1e-7)
    s = r.settings(ni)
    assert s.lr == pytest.approx({"other": lr_other, "conv": lr_conv, "bias": lr_bias}, rel=1e-7, abs=1e-12)
    assert s.weight_decay == pytest.approx({"other": 0.0, "conv": wd_conv, "bias": 0.0}, abs=1e-12)
    assert s.momentum == pytest.approx(momentum) and s.gr == pytest.approx(gr) and s.accumulate == accumulate


def test_2019_burn_in_is_the_power_4_ramp_with_constant_settings():
    r = Recipe("2019", 10, 10, burn_in_batches(10, "2019"), "multistep", 4, **HYP)
    assert r.n_burn == 3
    s = r.settings(1)
    assert s.lr == pytest.approx(dict.fromkeys(("other", "conv", "bias"), 0.01 * (1 / 3) ** 4))
    assert (s.momentum, s.gr, s.accumulate) == (0.937, pytest.approx(1 / 3), 4)
    assert s.weight_decay == {"other": 0.0, "conv": 0.0005, "bias": 0.0}
    assert r.settings(3).lr["conv"] == 0.01 and r.settings(85).lr["bias"] == pytest.approx(0.001)


def test_optimizer_steps_2020_every_accumulate_batches_across_epoch_ends():
    r = recipe_2020(n_burn=0)  # accumulate 4 from the start
    assert [ni for ni in range(0, 12) if r.steps_after(ni)] == [0, 4, 8]
    assert not r.steps_after(99) and r.steps_after(100)  # epoch 0 ends at ni 99 with 3 batches pending
    ramp = recipe_2020(nb=4, epochs=2, accumulate=3, n_burn=6)  # accumulate 1, 1, 2, 2, 2, 3, 3, 3
    assert [ramp.steps_after(ni) for ni in range(8)] == [True, True, True, False, True, False, True, False]
    assert [ramp.last_step_at_or_before(ni) for ni in range(8)] == [0, 1, 2, 2, 4, 4, 6, 6]


def test_optimizer_steps_2019_every_accumulate_batches_and_after_each_epoch():
    r = Recipe("2019", 10, 10, 3, "multistep", 4, **HYP)
    assert [ni for ni in range(20) if r.steps_after(ni)] == [3, 7, 9, 13, 17, 19]


def test_multi_scale_ranges_follow_each_recipe():
    assert multi_scale_range(416) == (256, 608) and multi_scale_range(320) == (192, 448)
    assert multi_scale_range(416, "2019") == (288, 640) and multi_scale_range(320, "2019") == (224, 480)


def test_2020_multi_scale_draws_a_size_at_every_step_and_keeps_it_until_the_next():
    r = recipe_2020(n_burn=0)
    sizes = [r.multi_scale_size(ni, 256, 608, seed=3) for ni in range(400)]
    for k in range(0, 400, 4):  # the step batch and the three accumulating after it share one size
        assert len(set(sizes[k : k + 4])) == 1
    assert set(sizes) <= set(range(256, 609, 32)) and len(set(sizes)) > 5
    assert sizes == [r.multi_scale_size(ni, 256, 608, seed=3) for ni in range(400)]
    assert sizes != [r.multi_scale_size(ni, 256, 608, seed=4) for ni in range(400)]


def test_2019_multi_scale_changes_every_10_optimizer_steps():
    r = Recipe("2019", 10, 1000, 3, "multistep", 4, **HYP)
    sizes = [r.multi_scale_size(ni, 288, 640, seed=3) for ni in range(400)]
    assert all(len(set(sizes[k : k + 40])) == 1 for k in range(0, 400, 40))
    assert len(set(sizes)) > 3


def test_recipe_rejects_bad_settings_and_describes_itself():
    with pytest.raises(ValueError, match="recipe"):
        Recipe("2018", 10, 10, 3, "cos", 4, **HYP)
    with pytest.raises(ValueError, match="schedule"):
        Recipe("2020", 10, 10, 3, "linear", 4, **HYP)
    d = recipe_2020().describe(epoch=5)
    assert d["recipe"] == "2020" and d["kind"] == "cos" and d["n_burn"] == 500 and d["accumulate"] == 4
    assert math.isclose(d["lr_factor"], 0.525)

"""Training schedules as pure functions of the position: learning rates, burn-in ramps, accumulation, multi-scale.

Every value the trainer sets per batch (each parameter group's learning rate and weight decay, the momentum, the
objectness target ratio ``gr``, how many batches one optimizer step accumulates, whether this batch steps, the
multi-scale image size) is computed from the integrated batch index ``ni`` and settings fixed at the start
(:class:`Recipe`), never from state carried between batches. That is what makes ``--resume`` exact: a resumed run
recomputes the same numbers at the same position instead of restoring objects that might have drifted.

Two recipes:

- ``2020`` (the default): the reference trainer's recipe of 2020 (ultralytics/yolov3, archive branch). Burn-in of
  ``max(3 * nb, 500)`` batches; for ``ni <= n_burn`` each value is ``np.interp(ni, [0, n_burn], [start, end])``:
  ``gr`` 0 -> 1, accumulate 1 -> ``64 / batch_size`` (rounded, at least 1), the bias group's lr 0.1 -> lr0 *
  lf(epoch) and the other groups' 0 -> lr0 * lf(epoch), the conv-weight group's weight decay 0 -> wd, the momentum
  0.9 -> hyp momentum. Cosine ``lf(e) = ((1 + cos(e * pi / epochs)) / 2) * 0.95 + 0.05`` per epoch. An optimizer
  step when ``ni % accumulate == 0``. Multi-scale: a new size at every optimizer step, in ``[size // 1.5,
  size // 0.667]`` floored to multiples of 32.
- ``2019`` (``--recipe 2019``): the July 2019 seed's choices, the previous default of this project. Burn-in of
  ``min(round(nb / 5 + 1), 1000)`` batches with ``lr = lr0 * lf(epoch) * (ni / n_burn) ** 4`` and ``gr = ni /
  n_burn``; MultiStep x0.1 at 80% and 90% of the epochs; constant accumulation (4 unless given); a step every
  ``accumulate`` batches and after an epoch's last batch; multi-scale every 10 optimizer steps in
  ``[round(size / 32 / 1.5), round(size / 32 * 1.5)] * 32``.

Glossary: ``nb`` batches per epoch, ``ni`` integrated batch index ``i + nb * epoch``, ``n_burn`` burn-in batches,
``gr`` the ratio of GIoU in the objectness target (``(1 - gr) + gr * giou``), ``lf`` the per-epoch lr factor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RECIPES = ("2020", "2019")
SCHEDULES = ("cos", "multistep")
GROUPS = ("other", "conv", "bias")  # optimizer parameter groups (utils.torch_utils.build_optimizer names them)
NOMINAL_BATCH = 64  # the batch the reference's hyperparameters were evolved at
BIAS_LR_START = 0.1  # the 2020 burn-in starts the bias group's lr here and lowers it to lr0 * lf(epoch)
MOMENTUM_START = 0.9  # the 2020 burn-in raises the momentum from here to hyp['momentum']
COS_FLOOR = 0.05  # the 2020 cosine ends at 5% of lr0 (the reference does not use hyp['lrf'])
SEED_ACCUMULATE = 4  # the 2019 seed's --accumulate default
MULTI_SCALE_EVERY_2019 = 10  # optimizer steps between multi-scale sizes in the 2019 recipe


def lr_factor(epoch: int, epochs: int, schedule: str = "cos") -> float:
    """Multiplier of ``lr0`` for a whole epoch (0-based ``epoch`` out of ``epochs``).

    ``cos``: ``((1 + cos(pi * epoch / epochs)) / 2) * 0.95 + 0.05`` (1 at epoch 0, towards 0.05). ``multistep``: 1
    until ``round(0.8 * epochs)``, 0.1 until ``round(0.9 * epochs)``, then 0.01.
    """
    if epochs < 1:
        raise ValueError(f"epochs={epochs}: must be >= 1")
    if schedule == "cos":
        return ((1 + math.cos(epoch * math.pi / epochs)) / 2) * (1 - COS_FLOOR) + COS_FLOOR
    if schedule == "multistep":
        return 0.1 ** sum(epoch >= m for m in multistep_milestones(epochs))
    raise ValueError(f"schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")


def multistep_milestones(epochs: int) -> list[int]:
    """Epochs at which the MultiStep schedule multiplies the learning rate by 0.1: 80% and 90% of ``epochs``."""
    return [round(0.8 * epochs), round(0.9 * epochs)]


def burn_in_batches(nb: int, recipe: str = "2020", burn_in: int | None = None) -> int:
    """Burn-in length in batches: ``burn_in`` when given (``--burn-in``; 0 switches it off), else the recipe's:
    ``max(3 * nb, 500)`` (2020) or ``min(round(nb / 5 + 1), 1000)`` (2019)."""
    if burn_in is not None:
        if burn_in < 0:
            raise ValueError(f"--burn-in {burn_in}: must be >= 0 (0 switches burn-in off)")
        return burn_in
    if recipe == "2020":
        return max(3 * nb, 500)
    if recipe == "2019":
        return min(round(nb / 5 + 1), 1000)
    raise ValueError(f"recipe {recipe!r}: expected one of {', '.join(RECIPES)}")


def auto_accumulate(batch_size: int) -> float:
    """The 2020 recipe's accumulation target ``64 / batch_size`` (unrounded: the burn-in interpolates towards it
    and rounds each value, as the reference; after burn-in a step takes ``max(round(64 / batch_size), 1)``
    batches, so that it sees about 64 images)."""
    return NOMINAL_BATCH / batch_size


@dataclass(frozen=True)
class BatchSettings:
    """What one batch trains with: per-group lr and weight decay (keys ``GROUPS``), momentum, gr, accumulation."""

    lr: dict[str, float]
    weight_decay: dict[str, float]
    momentum: float
    gr: float
    accumulate: int


@dataclass(frozen=True)
class Recipe:
    """The schedule of one run, fixed at its start; every method is a pure function of the batch position.

    Args:
        name: ``"2020"`` or ``"2019"`` (see the module docstring).
        epochs: epochs of the run; nb: batches per epoch.
        n_burn: burn-in batches (:func:`burn_in_batches`).
        schedule: ``"cos"`` or ``"multistep"`` per-epoch factor (:func:`lr_factor`).
        accumulate: batches per optimizer step: ``max(round(accumulate), 1)`` after burn-in; the 2020 burn-in
            ramps from 1 towards it (``auto_accumulate``'s ``64 / batch_size`` when not given).
        lr0, momentum, weight_decay: the hyperparameters.
    """

    name: str
    epochs: int
    nb: int
    n_burn: int
    schedule: str
    accumulate: float
    lr0: float
    momentum: float
    weight_decay: float

    def __post_init__(self) -> None:
        if self.name not in RECIPES:
            raise ValueError(f"recipe {self.name!r}: expected one of {', '.join(RECIPES)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if self.nb < 1 or self.epochs < 1 or not self.accumulate > 0 or self.n_burn < 0:
            raise ValueError(f"recipe needs nb, epochs >= 1, accumulate > 0 and n_burn >= 0: {self}")

    @property
    def steps_accumulate(self) -> int:
        """Batches per optimizer step once burn-in is over."""
        return max(1, round(self.accumulate))

    def epoch_lr(self, epoch: int) -> float:
        """``lr0 * lf(epoch)``: every group's learning rate once burn-in is over."""
        return self.lr0 * lr_factor(epoch, self.epochs, self.schedule)

    def burning(self, ni: int) -> bool:
        """Whether batch ``ni`` is inside burn-in (the 2020 ramps end exactly at ``ni == n_burn``)."""
        return ni < self.n_burn

    def settings(self, ni: int) -> BatchSettings:
        """The learning rates, weight decays, momentum, gr and accumulation for integrated batch ``ni``."""
        epoch_lr = self.epoch_lr(ni // self.nb)
        wd = {"other": 0.0, "conv": self.weight_decay, "bias": 0.0}
        if not self.burning(ni):
            return BatchSettings(dict.fromkeys(GROUPS, epoch_lr), wd, self.momentum, 1.0, self.steps_accumulate)
        x = ni / self.n_burn  # in [0, 1): np.interp(ni, [0, n_burn], [a, b]) == a + (b - a) * x
        if self.name == "2019":
            return BatchSettings(dict.fromkeys(GROUPS, epoch_lr * x**4), wd, self.momentum, x, self.steps_accumulate)

        def ramp(a: float, b: float) -> float:
            return float(np.interp(ni, [0, self.n_burn], [a, b]))

        lr = {"other": ramp(0.0, epoch_lr), "conv": ramp(0.0, epoch_lr), "bias": ramp(BIAS_LR_START, epoch_lr)}
        wd = {"other": 0.0, "conv": ramp(0.0, self.weight_decay), "bias": 0.0}
        accumulate = max(1, round(ramp(1.0, self.accumulate)))
        return BatchSettings(lr, wd, ramp(MOMENTUM_START, self.momentum), ramp(0.0, 1.0), accumulate)

    def steps_after(self, ni: int) -> bool:
        """Whether the optimizer steps after batch ``ni`` (2020: ``ni % accumulate == 0``, accumulating across
        epoch ends as the reference; 2019: every ``accumulate`` batches of an epoch and after its last)."""
        if self.name == "2020":
            return ni % self.settings(ni).accumulate == 0
        i = ni % self.nb
        return (i + 1) % self.steps_accumulate == 0 or i + 1 == self.nb

    def last_step_at_or_before(self, ni: int) -> int:
        """The latest batch ``k <= ni`` after which the optimizer steps (-1 when none has yet)."""
        k = ni
        while k >= 0 and not self.steps_after(k):
            k -= 1
        return k

    def multi_scale_size(self, ni: int, lo: int, hi: int, seed: int = 0, gs: int = 32) -> int:
        """Training image size (pixels, a multiple of ``gs`` in ``[lo, hi]``) of batch ``ni`` with multi-scale.

        2020: a new size at every batch after which the optimizer steps (the reference draws one whenever ``ni %
        accumulate == 0``, before that batch's forward pass); the batches up to the next such batch keep it. 2019:
        a new size every ``10 * accumulate`` batches. Each size is drawn by ``np.random.default_rng([seed, k])``
        for the batch ``k`` that starts its block, uniformly over the multiples of ``gs``: a resumed run draws the
        same sizes.
        """
        if self.name == "2020":
            start = self.last_step_at_or_before(ni)
        else:
            block = MULTI_SCALE_EVERY_2019 * self.steps_accumulate
            start = ni // block
        rng = np.random.default_rng([seed, start])
        return int(rng.integers(lo // gs, hi // gs + 1)) * gs

    def describe(self, epoch: int) -> dict:
        """What the checkpoint stores about the schedule (it is recomputed on resume, not restored)."""
        return {
            "recipe": self.name, "kind": self.schedule, "epochs": self.epochs, "n_burn": self.n_burn,
            "accumulate": self.steps_accumulate, "lr0": self.lr0, "epoch": epoch,
            "lr_factor": lr_factor(min(epoch, self.epochs - 1), self.epochs, self.schedule),
            "milestones": multistep_milestones(self.epochs) if self.schedule == "multistep" else [],
        }  # fmt: skip


def multi_scale_range(img_size: int, recipe: str = "2020", gs: int = 32) -> tuple[int, int]:
    """Smallest and largest multi-scale training size (pixels) for one ``--img-size``.

    2020 (the reference's): ``size // 1.5`` and ``size // 0.667``, each floored to a multiple of ``gs``
    (416 -> 256..608, 320 -> 192..448). 2019 (the seed's): ``round(size / gs / 1.5)`` and ``round(size / gs * 1.5)``
    multiples of ``gs`` (416 -> 288..640).
    """
    if recipe == "2019":
        lo, hi = round(img_size / gs / 1.5) * gs, round(img_size / gs * 1.5) * gs
    else:
        lo, hi = int((img_size // 1.5) // gs * gs), int((img_size // 0.667) // gs * gs)
    return max(lo, gs), max(hi, gs)

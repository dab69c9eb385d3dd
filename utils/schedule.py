"""Learning-rate, burn-in and multi-scale schedules as pure functions of the training position.

Every value the trainer sets per batch (learning rate, the objectness target ratio ``gr``, the multi-scale
image size) is computed from ``(epoch, batch index, settings)`` alone, never from state carried between
batches. That is what makes ``--resume`` exact: a resumed run recomputes the same numbers at the same
position instead of restoring a scheduler object that might have drifted.

Glossary: ``nb`` batches per epoch, ``ni`` integrated batch index ``i + nb * epoch``, ``gr`` the ratio of
GIoU in the objectness target (``(1 - gr) + gr * giou``).
"""

from __future__ import annotations

import math

import numpy as np


def lr_factor(epoch: int, epochs: int, cos: bool = False, lrf: float = 0.0005) -> float:
    """Multiplier of ``lr0`` for a whole epoch (0-based ``epoch`` out of ``epochs``).

    Default (the seed's MultiStepLR): 1 until ``round(0.8 * epochs)``, 0.1 until ``round(0.9 * epochs)``,
    then 0.01. With ``cos``: half a cosine from 1 at epoch 0 down towards ``lrf``:
    ``((1 + cos(pi * epoch / epochs)) / 2) * (1 - lrf) + lrf``.
    """
    if epochs < 1:
        raise ValueError(f"epochs={epochs}: must be >= 1")
    if cos:
        return ((1 + math.cos(math.pi * epoch / epochs)) / 2) * (1 - lrf) + lrf
    return 0.1 ** sum(epoch >= m for m in multistep_milestones(epochs))


def multistep_milestones(epochs: int) -> list[int]:
    """Epochs at which the MultiStep schedule multiplies the learning rate by 0.1: 80% and 90% of ``epochs``."""
    return [round(0.8 * epochs), round(0.9 * epochs)]


def burn_in_batches(nb: int, burn_in: int | None = None) -> int:
    """Number of burn-in batches: ``burn_in`` when given (``--burn-in``), else ``min(round(nb / 5 + 1), 1000)``.

    The formula is the seed's; small data sets trained from scratch often need more (one epoch has few
    batches), which is what ``--burn-in`` is for.
    """
    if burn_in is not None:
        if burn_in < 0:
            raise ValueError(f"--burn-in {burn_in}: must be >= 0 (0 switches burn-in off)")
        return burn_in
    return min(round(nb / 5 + 1), 1000)


def burn_in_factors(ni: int, n_burn: int) -> tuple[float, float]:
    """``(lr multiplier, gr)`` at integrated batch ``ni`` during burn-in: ``((ni / n_burn) ** 4, ni / n_burn)``.

    The fourth power is Darknet's ``power=4`` burn-in as the seed used it; ``gr`` ramps linearly so the
    objectness target starts at 1 and becomes the GIoU of the matched prediction. From ``ni >= n_burn`` on
    (and always when ``n_burn == 0``) both are 1.
    """
    if ni >= n_burn:
        return 1.0, 1.0
    x = ni / n_burn
    return x**4, x


def learning_rate(
    lr0: float, epoch: int, epochs: int, ni: int, n_burn: int, cos: bool = False, lrf: float = 0.0005
) -> float:
    """The learning rate for the batch at ``ni`` (integrated index) in ``epoch``: epoch factor times burn-in."""
    return lr0 * lr_factor(epoch, epochs, cos, lrf) * burn_in_factors(ni, n_burn)[0]


def multi_scale_range(img_size: int, gs: int = 32) -> tuple[int, int]:
    """Smallest and largest multiple of ``gs`` inside ``[img_size / 1.5, img_size * 1.5]`` (pixels)."""
    lo = math.ceil(img_size / 1.5 / gs) * gs
    hi = math.floor(img_size * 1.5 / gs) * gs
    return max(lo, gs), max(hi, gs)


def multi_scale_size(img_size: int, ni: int, accumulate: int, seed: int = 0, gs: int = 32, every: int = 10) -> int:
    """Training image size (pixels, a multiple of ``gs``) for integrated batch ``ni`` with ``--multi-scale``.

    The size changes every ``every`` optimizer steps (``every * accumulate`` batches) and is drawn uniformly
    from the multiples of ``gs`` in :func:`multi_scale_range` by ``np.random.default_rng([seed, block])``,
    so it is a pure function of the position and a resumed run draws the same sizes.
    """
    lo, hi = multi_scale_range(img_size, gs)
    block = ni // (accumulate * every)
    rng = np.random.default_rng([seed, block])
    return int(rng.integers(lo // gs, hi // gs + 1)) * gs


def scheduler_state(epochs: int, cos: bool, lrf: float, lr0: float, n_burn: int, epoch: int) -> dict:
    """A description of the schedule for the checkpoint (the schedule itself is recomputed, not restored)."""
    return {
        "kind": "cosine" if cos else "multistep",
        "milestones": [] if cos else multistep_milestones(epochs),
        "gamma": None if cos else 0.1,
        "lrf": lrf if cos else None,
        "lr0": lr0,
        "epochs": epochs,
        "n_burn": n_burn,
        "epoch": epoch,
        "lr_factor": lr_factor(min(epoch, epochs - 1), epochs, cos, lrf),
    }

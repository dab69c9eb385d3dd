"""Hyperparameter evolution (``--evolve``): the evolve.txt record, parent selection and mutation.

Each generation trains once with a hyperparameter set and appends one row to ``evolve.txt``:

    the 8 results in ``RESULT_KEYS`` order (P, R, mAP@0.5, mAP@0.5:0.95, F1, val_box, val_obj, val_cls),
    then every hyperparameter of the run in its dict order.

The first line is a header naming every column, so the file is self-describing, loads with
``numpy.loadtxt(path, skiprows=1)`` and survives key-order changes between versions (the header is checked
on every append). A run stopped and restarted continues the same file.

The next generation's hyperparameters come from ``propose_hyp``: a parent is chosen among the best rows by
fitness (``select_parent``), then mutated (``mutate``: multiplicative Gaussian noise with per-key gains,
clipped to per-key limits). Every random draw comes from an explicit ``numpy.random.Generator``.

``--bucket`` keeps evolve.txt in a Google Cloud Storage bucket through the ``gsutil`` command line tool
(``gsutil_available``, ``gsutil_cp``, ``bucket_url``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml

from utils.hyp import DEFAULT_HYP, HYP_GAINS, HYP_LIMITS

__all__ = [
    "RESULT_KEYS",
    "EVOLVE_HEADER",
    "evolve_header",
    "read_evolve",
    "append_evolve",
    "select_parent",
    "mutate",
    "propose_hyp",
    "best_hyp",
    "write_hyp_yaml",
    "print_mutation",
    "gsutil_available",
    "gsutil_cp",
    "bucket_url",
]

RESULT_KEYS: tuple[str, ...] = ("P", "R", "mAP@0.5", "mAP@0.5:0.95", "F1", "val_box", "val_obj", "val_cls")
"""The results columns of every evolve.txt row, in the order of results.txt and ``test.test``."""

_WIDTH = 12
FitnessFn = Callable[[np.ndarray], np.ndarray]


def evolve_header(hyp_keys: Sequence[str]) -> str:
    """The evolve.txt header line (no newline) for runs whose hyperparameter dict has ``hyp_keys``."""
    return " ".join(f"{k:>{_WIDTH}}" for k in (*RESULT_KEYS, *hyp_keys))


EVOLVE_HEADER = evolve_header(tuple(DEFAULT_HYP))
"""The header of an evolve.txt written by runs using the full ``DEFAULT_HYP`` key set (the trainer's case)."""


def _format_row(results: Sequence[float], hyp_values: Sequence[float]) -> str:
    # 6 significant digits for results; 8 for hyperparameters so user-given values survive the file.
    cells = [f"{float(v):>{_WIDTH}.6g}" for v in results] + [f"{float(v):>{_WIDTH}.8g}" for v in hyp_values]
    return " ".join(cells)


def _header_keys(line: str) -> list[str]:
    return line.lstrip("#").split()


def read_evolve(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read an evolve.txt.

    Returns:
        results: (n, 8) float64 in ``RESULT_KEYS`` order.
        hyps: (n, k) float64, one column per hyperparameter.
        keys: the k hyperparameter names from the header.
        An empty file gives (0, 8), (0, 0) and [].

    Raises:
        FileNotFoundError: no such file.
        ValueError: missing or unknown header columns, or a row with the wrong number of values or a
            non-number; the message names file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evolve file {path} not found (resolved: {path.resolve()})")
    lines = path.read_text().splitlines()
    if not lines:
        return np.zeros((0, len(RESULT_KEYS))), np.zeros((0, 0)), []
    columns = _header_keys(lines[0])
    n_res = len(RESULT_KEYS)
    if tuple(columns[:n_res]) != RESULT_KEYS:
        raise ValueError(
            f"{path}:1: expected a header starting with {' '.join(RESULT_KEYS)}, got {' '.join(columns[:n_res])!r}; "
            f"fix: an evolve.txt without header (older ultralytics) cannot be continued, start a new file"
        )
    keys = columns[n_res:]
    unknown = [k for k in keys if k not in DEFAULT_HYP]
    if unknown:
        raise ValueError(f"{path}:1: unknown hyperparameter columns {unknown}; valid: {', '.join(DEFAULT_HYP)}")
    rows = []
    for line_no, line in enumerate(lines[1:], 2):
        cells = line.split()
        if not cells:
            continue
        if len(cells) != len(columns):
            raise ValueError(f"{path}:{line_no}: found {len(cells)} values, the header has {len(columns)} columns")
        try:
            rows.append([float(c) for c in cells])
        except ValueError as e:
            raise ValueError(f"{path}:{line_no}: not a row of numbers ({e})") from e
    table = np.array(rows, dtype=np.float64).reshape(-1, len(columns))
    return table[:, :n_res], table[:, n_res:], keys


def append_evolve(path: str | Path, results: Sequence[float], hyp: Mapping[str, float]) -> Path:
    """Append one generation (8 results, then ``hyp``'s values) to ``path``, writing the header first if new.

    The row is written with a single ``write`` then flushed and fsynced, so a crash leaves whole rows.

    Raises:
        ValueError: ``results`` does not have 8 values, or the file's header names other columns than
            this run's (a different hyperparameter set would misalign the columns).
    """
    path = Path(path)
    if len(results) != len(RESULT_KEYS):
        raise ValueError(f"results must have {len(RESULT_KEYS)} values ({', '.join(RESULT_KEYS)}), got {len(results)}")
    header = evolve_header(tuple(hyp))
    is_new = not path.is_file() or path.stat().st_size == 0
    if not is_new:
        with open(path) as f:
            found = _header_keys(f.readline())
        if found != header.split():
            raise ValueError(
                f"{path}:1: header columns {found} differ from this run's {header.split()}; "
                f"fix: evolve into another file or use the same hyperparameter keys"
            )
    text = (header + "\n" if is_new else "") + _format_row(results, list(hyp.values())) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return path


def select_parent(
    results: np.ndarray,
    hyps: np.ndarray,
    fitness_fn: FitnessFn,
    rng: np.random.Generator,
    n_best: int = 5,
    method: str = "single",
) -> np.ndarray:
    """Choose the parent hyperparameter vector for the next generation.

    Args:
        results: (n, 8) results rows, ``RESULT_KEYS`` order.
        hyps: (n, k) hyperparameter rows.
        fitness_fn: maps (n, 8) results to (n,) fitness (``utils.metrics.fitness``).
        rng: the generator for the draw.
        n_best: how many of the fittest rows take part.
        method: ``'single'`` draws one of them with probability proportional to its fitness above the
            worst of them (the reference's choice); ``'weighted'`` returns their mean weighted the same way.

    Returns:
        (k,) float64 parent vector (a copy).
    """
    results = np.asarray(results, dtype=np.float64)
    hyps = np.asarray(hyps, dtype=np.float64)
    if len(hyps) == 0 or len(results) != len(hyps):
        raise ValueError(f"need matching non-empty results and hyps, got {len(results)} and {len(hyps)} rows")
    if n_best < 1:
        raise ValueError(f"n_best must be >= 1, got {n_best}")
    fit = np.asarray(fitness_fn(results), dtype=np.float64).reshape(-1)
    order = np.argsort(-fit, kind="stable")[:n_best]
    top, top_fit = hyps[order], fit[order]
    w = top_fit - top_fit.min() + 1e-6  # the worst of the best still has a (tiny) chance
    if method == "single":
        return top[rng.choice(len(top), p=w / w.sum())].copy()
    if method == "weighted":
        return (top * w[:, None]).sum(0) / w.sum()
    raise ValueError(f"unknown parent selection method {method!r}; use 'single' or 'weighted'")


def _round_sig(x: float, digits: int = 5) -> float:
    return float(f"{x:.{digits}g}")


def mutate(
    parent_hyp: Mapping[str, float],
    gains: Mapping[str, float],
    limits: Mapping[str, tuple[float, float]],
    rng: np.random.Generator,
    sigma: float = 0.2,
    mutation_prob: float = 0.9,
) -> dict[str, float]:
    """A mutated copy of ``parent_hyp`` that differs from it in at least one key.

    Each key is multiplied by ``v = 1 + z * u * sigma * gain`` where ``z`` is standard normal per key, ``u``
    one uniform draw shared by all keys (so some generations explore far and others stay close) and a key
    takes part with probability ``mutation_prob``; ``v`` is clipped to [0.3, 3] so no key moves more than
    threefold in one generation. Then values are clipped to ``limits`` and rounded to 5 significant digits.
    Draws repeat until some value changes. Keys missing from ``gains`` are not mutated; keys missing from
    ``limits`` are not clipped. A value of 0 stays 0 (multiplicative noise).

    Raises:
        ValueError: nothing can change (no key with a gain > 0 and a non-zero value), or bad sigma/prob.
    """
    if sigma <= 0 or not 0 < mutation_prob <= 1:
        raise ValueError(f"need sigma > 0 and 0 < mutation_prob <= 1, got sigma={sigma}, mutation_prob={mutation_prob}")
    keys = list(parent_hyp)
    x = np.array([float(parent_hyp[k]) for k in keys])
    g = np.array([float(gains.get(k, 0.0)) for k in keys])
    lo = np.array([limits[k][0] if k in limits else -np.inf for k in keys])
    hi = np.array([limits[k][1] if k in limits else np.inf for k in keys])
    if not np.any((g > 0) & (x != 0)):
        raise ValueError(f"no hyperparameter can mutate: every key with a gain > 0 is 0 (gains: {dict(gains)})")
    for _ in range(10_000):
        chosen = rng.random(len(keys)) < mutation_prob
        v = (1 + chosen * rng.standard_normal(len(keys)) * rng.random() * sigma * g).clip(0.3, 3.0)
        new = [_round_sig(float(val)) for val in np.clip(x * v, lo, hi)]
        if any(a != b for a, b in zip(new, x)):
            return dict(zip(keys, new))
    raise ValueError("mutation produced no change in 10000 draws: the mutable keys sit at their limits")


def propose_hyp(
    evolve_file: str | Path,
    base_hyp: Mapping[str, float],
    fitness_fn: FitnessFn,
    rng: np.random.Generator,
    gains: Mapping[str, float] = HYP_GAINS,
    limits: Mapping[str, tuple[float, float]] = HYP_LIMITS,
    n_best: int = 5,
    method: str = "single",
) -> dict[str, float]:
    """The next generation's hyperparameters.

    With no ``evolve_file`` (or no rows yet) this is ``base_hyp`` unchanged, so the first generation measures
    the starting point. Otherwise a parent is selected from the file (``select_parent``), laid over
    ``base_hyp`` (keys the file lacks keep their base value) and mutated (``mutate``).
    """
    base = dict(base_hyp)
    path = Path(evolve_file)
    if not path.is_file():
        return base
    results, hyps, keys = read_evolve(path)
    if len(results) == 0:
        return base
    parent = select_parent(results, hyps, fitness_fn, rng, n_best=n_best, method=method)
    base.update({k: float(v) for k, v in zip(keys, parent) if k in base})
    return mutate(base, gains, limits, rng)


def best_hyp(path: str | Path, fitness_fn: FitnessFn) -> dict[str, float]:
    """The hyperparameters of the fittest row of evolve.txt ``path`` (first one on ties), as a dict."""
    results, hyps, keys = read_evolve(path)
    if len(results) == 0:
        raise ValueError(f"{path}: no generations recorded yet")
    fit = np.asarray(fitness_fn(results), dtype=np.float64).reshape(-1)
    best = int(np.argmax(fit))
    return {k: float(v) for k, v in zip(keys, hyps[best])}


def write_hyp_yaml(hyp: Mapping[str, float], path: str | Path, comment: str | None = None) -> Path:
    """Write ``hyp`` as YAML that ``utils.hyp.load_hyp`` (and ``--hyp``) reads back; atomic replace.

    ``comment`` (e.g. the generation count and fitness) becomes ``#`` lines at the top.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = "".join(f"# {line}\n" for line in comment.splitlines()) if comment else ""
    text = head + yaml.safe_dump({str(k): float(v) for k, v in hyp.items()}, sort_keys=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def print_mutation(hyp: Mapping[str, float], results: Sequence[float], path: str | Path | None = None) -> str:
    """Print (and return) the generation's hyperparameter names and values and its results.

    With ``path`` the generation is also appended to that evolve.txt (``append_evolve``).
    """
    names = "".join(f"{k:>{_WIDTH}}" for k in hyp)
    values = "".join(f"{float(v):>{_WIDTH}.3g}" for v in hyp.values())
    res_names = "".join(f"{k:>{_WIDTH + 1}}" for k in RESULT_KEYS)
    res_values = "".join(f"{float(v):>{_WIDTH + 1}.4g}" for v in results)
    text = f"\n{names}\n{values}\nEvolved results:\n{res_names}\n{res_values}\n"
    print(text)
    if path is not None:
        append_evolve(path, results, hyp)
    return text


def gsutil_available() -> bool:
    """True when the ``gsutil`` command (Google Cloud SDK) is on PATH."""
    return shutil.which("gsutil") is not None


def bucket_url(bucket: str, name: str) -> str:
    """``gs://bucket/name`` for a bucket given with or without the ``gs://`` prefix."""
    bucket = bucket.removeprefix("gs://").strip("/")
    if not bucket:
        raise ValueError("empty --bucket name; fix: --bucket BUCKET (without gs://)")
    return f"gs://{bucket}/{name}"


def gsutil_cp(src: str | Path, dst: str | Path, timeout: float = 600.0) -> None:
    """Copy with ``gsutil cp src dst`` (either may be a ``gs://`` URL).

    Raises:
        RuntimeError: gsutil is not installed, fails (its stderr is included) or times out.
    """
    exe = shutil.which("gsutil")
    if exe is None:
        raise RuntimeError(
            "--bucket needs the gsutil command (Google Cloud SDK), not found on PATH; install it or drop --bucket"
        )
    cmd = [exe, "cp", str(src), str(dst)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"'gsutil cp {src} {dst}' timed out after {timeout:g} s") from e
    if proc.returncode != 0:
        raise RuntimeError(f"'gsutil cp {src} {dst}' failed with exit code {proc.returncode}: {proc.stderr.strip()}")

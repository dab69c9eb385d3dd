"""evolve.txt record, parent selection and mutation (utils/evolve.py)."""

from __future__ import annotations

import numpy as np
import pytest

from utils.evolve import (
    EVOLVE_HEADER,
    RESULT_KEYS,
    append_evolve,
    best_hyp,
    bucket_url,
    gsutil_available,
    gsutil_cp,
    mutate,
    print_mutation,
    propose_hyp,
    read_evolve,
    select_parent,
    write_hyp_yaml,
)
from utils.hyp import DEFAULT_HYP, HYP_GAINS, HYP_LIMITS, load_hyp


def fitness(results: np.ndarray) -> np.ndarray:
    """The contract's fitness (0.5 mAP@0.5 + 0.5 F1), local so the test does not depend on utils.metrics."""
    return 0.5 * results[:, 2] + 0.5 * results[:, 4]


def _results(m: float) -> tuple[float, ...]:
    return (0.5, 0.4, m, m / 2, 0.45, 1.0, 2.0, 3.0)


def test_header_once_rows_appended_across_reopen(tmp_path):
    path = tmp_path / "evolve.txt"
    hyp1 = dict(DEFAULT_HYP)
    hyp2 = {**DEFAULT_HYP, "lr0": 0.00123456789}
    append_evolve(path, _results(0.1), hyp1)
    append_evolve(path, _results(0.2), hyp2)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and lines[0] == EVOLVE_HEADER
    assert lines[0].split() == [*RESULT_KEYS, *DEFAULT_HYP]

    append_evolve(path, _results(0.3), hyp1)  # a restarted run appends to the same file
    results, hyps, keys = read_evolve(path)
    assert sum(line == EVOLVE_HEADER for line in path.read_text().splitlines()) == 1
    assert results.shape == (3, 8) and hyps.shape == (3, len(DEFAULT_HYP))
    assert keys == list(DEFAULT_HYP)
    assert results[:, 2].tolist() == [0.1, 0.2, 0.3]
    assert hyps[1, keys.index("lr0")] == pytest.approx(0.00123456789, rel=1e-7)
    assert hyps[0].tolist() == list(DEFAULT_HYP.values())


def test_header_mismatch_and_bad_results(tmp_path):
    path = tmp_path / "evolve.txt"
    append_evolve(path, _results(0.1), DEFAULT_HYP)
    other = {k: v for k, v in DEFAULT_HYP.items() if k not in ("xy", "wh")}
    with pytest.raises(ValueError, match=r"evolve\.txt:1: header columns .* differ"):
        append_evolve(path, _results(0.2), other)
    with pytest.raises(ValueError, match="8 values"):
        append_evolve(path, (1.0, 2.0), DEFAULT_HYP)
    assert len(path.read_text().splitlines()) == 2


def test_read_errors_name_file_and_line(tmp_path):
    path = tmp_path / "evolve.txt"
    path.write_text(" ".join(["0.1"] * 25) + "\n")  # headerless ultralytics file
    with pytest.raises(ValueError, match=r"evolve\.txt:1: expected a header"):
        read_evolve(path)
    path.write_text(EVOLVE_HEADER + "\n1 2 3\n")
    with pytest.raises(ValueError, match=r"evolve\.txt:2: found 3 values"):
        read_evolve(path)
    path.write_text(" ".join(RESULT_KEYS) + " giou bogus\n")
    with pytest.raises(ValueError, match="unknown hyperparameter columns"):
        read_evolve(path)
    with pytest.raises(FileNotFoundError):
        read_evolve(tmp_path / "none.txt")
    path.write_text("")
    results, hyps, keys = read_evolve(path)
    assert results.shape == (0, 8) and keys == []


def test_mutation_changes_something_and_respects_limits():
    rng = np.random.default_rng(0)
    parent = dict(DEFAULT_HYP)
    parent["lr0"] = HYP_LIMITS["lr0"][1]  # at the upper limit: can only stay or go down
    for _ in range(200):
        child = mutate(parent, HYP_GAINS, HYP_LIMITS, rng)
        assert list(child) == list(parent)
        assert any(child[k] != parent[k] for k in parent)
        for k, v in child.items():
            lo, hi = HYP_LIMITS[k]
            assert lo <= v <= hi, (k, v)
            assert v == float(f"{v:.5g}")
            if HYP_GAINS[k] == 0:
                assert v == parent[k], k
    assert parent == {**DEFAULT_HYP, "lr0": HYP_LIMITS["lr0"][1]}


def test_mutation_is_deterministic_for_a_seed_and_rejects_impossible_cases():
    a = mutate(DEFAULT_HYP, HYP_GAINS, HYP_LIMITS, np.random.default_rng(5))
    b = mutate(DEFAULT_HYP, HYP_GAINS, HYP_LIMITS, np.random.default_rng(5))
    assert a == b
    with pytest.raises(ValueError, match="no hyperparameter can mutate"):
        mutate(DEFAULT_HYP, dict.fromkeys(DEFAULT_HYP, 0.0), HYP_LIMITS, np.random.default_rng(0))
    with pytest.raises(ValueError, match="sigma"):
        mutate(DEFAULT_HYP, HYP_GAINS, HYP_LIMITS, np.random.default_rng(0), sigma=0)


def test_parent_selection_is_deterministic_with_rng():
    results = np.array([_results(m) for m in (0.1, 0.9, 0.5, 0.2, 0.8, 0.3, 0.0)])
    hyps = np.arange(7 * 3, dtype=float).reshape(7, 3)
    picks = [select_parent(results, hyps, fitness, np.random.default_rng(s)) for s in range(20)]
    again = [select_parent(results, hyps, fitness, np.random.default_rng(s)) for s in range(20)]
    assert all(np.array_equal(p, q) for p, q in zip(picks, again))
    top5 = {tuple(hyps[i]) for i in (1, 4, 2, 5, 3)}
    assert {tuple(p) for p in picks} <= top5
    best = select_parent(results, hyps, fitness, np.random.default_rng(0), n_best=1)
    assert best.tolist() == hyps[1].tolist()
    weighted = select_parent(results, hyps, fitness, np.random.default_rng(0), method="weighted")
    top = hyps[[1, 4, 2, 5, 3]]
    assert np.all(top.min(0) <= weighted) and np.all(weighted <= top.max(0))
    assert not any(np.array_equal(weighted, row) for row in top)  # a blend, not one row
    with pytest.raises(ValueError, match="method"):
        select_parent(results, hyps, fitness, np.random.default_rng(0), method="best")


def test_propose_hyp_starts_from_base_then_mutates_a_parent(tmp_path):
    path = tmp_path / "evolve.txt"
    rng = np.random.default_rng(1)
    assert propose_hyp(path, DEFAULT_HYP, fitness, rng) == DEFAULT_HYP
    append_evolve(path, _results(0.4), {**DEFAULT_HYP, "giou": 5.0})
    child = propose_hyp(path, DEFAULT_HYP, fitness, rng)
    assert list(child) == list(DEFAULT_HYP) and child != {**DEFAULT_HYP, "giou": 5.0}


def test_best_hyp_yaml_loads_back_through_load_hyp(tmp_path):
    path = tmp_path / "evolve.txt"
    winner = {**DEFAULT_HYP, "giou": 4.5, "lr0": 0.0071234}
    append_evolve(path, _results(0.2), DEFAULT_HYP)
    append_evolve(path, _results(0.6), winner)
    append_evolve(path, _results(0.3), {**DEFAULT_HYP, "giou": 1.0})
    best = best_hyp(path, fitness)
    assert best == winner
    yaml_path = write_hyp_yaml(best, tmp_path / "hyp_evolved.yaml", comment="3 generations\nfitness 0.525")
    assert yaml_path.read_text().startswith("# 3 generations\n# fitness 0.525\n")
    assert load_hyp(yaml_path) == winner


def test_print_mutation_prints_and_appends(tmp_path, capsys):
    path = tmp_path / "evolve.txt"
    text = print_mutation(DEFAULT_HYP, _results(0.5), path)
    out = capsys.readouterr().out
    assert "giou" in out and "mAP@0.5" in out and text in out
    assert read_evolve(path)[0].shape == (1, 8)


def test_gsutil_helpers(monkeypatch):
    assert bucket_url("gs://my-bucket/", "evolve.txt") == "gs://my-bucket/evolve.txt"
    with pytest.raises(ValueError, match="bucket"):
        bucket_url("", "evolve.txt")
    monkeypatch.setenv("PATH", "")
    assert gsutil_available() is False
    with pytest.raises(RuntimeError, match="gsutil"):
        gsutil_cp("evolve.txt", "gs://b/evolve.txt")

"""bench/learn.py: the raccoon conversion it runs and the tables it prints from finished runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import learn


@pytest.mark.skipif(not learn.RACCOON.is_dir(), reason="../shared/datasets/raccoon is absent")
def test_raccoon_data_converts_the_shared_set_with_the_authors_split(tmp_path: Path) -> None:
    data = learn.raccoon_data(tmp_path, None)
    fields = dict(line.split("=", 1) for line in data.read_text().splitlines() if "=" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    train = [x for x in (data.parent / fields["train"]).read_text().splitlines() if x.strip()]
    valid = [x for x in (data.parent / fields["valid"]).read_text().splitlines() if x.strip()]
    assert (len(train), len(valid)) == (160, 40)
    assert learn.raccoon_data(tmp_path, None) == data  # converted once, then reused


def test_summary_and_curve_tables_report_final_and_best_epoch() -> None:
    rec = {"name": "raccoon-scratch-2020", "recipe": "2020", "wall_s": 120.0,
           "map50": [0.1, 0.7, 0.5], "map": [0.01, 0.3, 0.2]}
    row = learn.summary_table([rec]).splitlines()[1].split()
    assert row == ["raccoon-scratch-2020", "0.500", "0.200", "0.700", "1", "2.0", "m"]
    curve = learn.curve_table([rec], every=2).splitlines()
    assert curve[1].split() == ["run", "0", "2"] and curve[2].split()[1:] == ["0.100", "0.500"]


def test_read_results_maps_the_header_to_columns(tmp_path: Path) -> None:
    f = tmp_path / "results.txt"
    f.write_text("epoch box mAP@0.5\n0 1.5 0.25\n1 1.25 0.5\n")
    assert learn.read_results(f) == {"epoch": [0.0, 1.0], "box": [1.5, 1.25], "mAP@0.5": [0.25, 0.5]}

"""Shared fixtures: the repository root, the real coco128 set when present, and a tiny YOLO dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
COCO128 = REPO_ROOT.parent / "shared" / "datasets" / "coco128"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def coco128_dir() -> Path:
    """The real coco128 set beside the checkout; tests using it skip when it is absent."""
    if not (COCO128 / "images" / "train2017").is_dir():
        pytest.skip(f"coco128 not found at {COCO128}")
    return COCO128

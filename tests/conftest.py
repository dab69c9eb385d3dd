"""Shared fixtures: the repository root, the real coco128 set when present, and test.py's command line."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

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


@pytest.fixture(scope="session")
def test_cli() -> ModuleType:
    """Our test.py (the evaluation CLI), loaded by path: the name ``test`` could find the standard library package."""
    spec = importlib.util.spec_from_file_location("yolo_test_cli", REPO_ROOT / "test.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module

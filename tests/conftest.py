"""Shared fixtures: the repository root, the real coco128 set when present, and test.py's command line."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
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


@pytest.fixture(scope="session")
def shapes_data_cfg() -> Callable[[Path, int], Path]:
    """``shapes_data_cfg(root, seed)``: a 3-class shapes set of 16 training and 4 validation images in ``root``;
    returns its .data file."""
    from utils.shapes import make_shapes_dataset

    def make(root: Path, seed: int) -> Path:
        make_shapes_dataset(root / "shapes", seed=seed, n_train=16, n_valid=4)
        (root / "s.names").write_text("circle\nsquare\ntriangle\n")
        data = root / "s.data"
        data.write_text("classes=3\ntrain=shapes/images/train\nvalid=shapes/images/valid\nnames=s.names\n")
        return data

    return make


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``mount_tmpfs(size)``: a tmpfs of ``size`` (e.g. ``"1m"``) mounted at ``tmp_path / "mnt"``, unmounted after
    the test (needs root and mount; the test is skipped where it cannot be mounted)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        if sys.platform != "linux" or shutil.which("mount") is None:
            pytest.skip("needs Linux mount")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                           text=True)  # fmt: skip
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", str(mnt)], capture_output=True)

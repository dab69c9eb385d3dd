"""Importing any module of the project prints nothing and writes nothing (setup lives in main())."""

from __future__ import annotations

import subprocess
import sys

MODULES = [
    "models", "test", "train", "detect", "export", "utils.parse_config", "utils.layers", "utils.boxes",
    "utils.loss", "utils.nms", "utils.metrics", "utils.augmentations", "utils.datasets", "utils.shapes",
    "utils.sources", "utils.hyp", "utils.schedule", "utils.checkpoint", "utils.evolve", "utils.plots",
    "utils.distributed", "utils.torch_utils", "utils.general", "bench.run", "utils.convert", "utils.runlock",
    "utils.runstop", "bench.ceilings", "bench.gpu_check", "bench.inference", "bench.learn", "bench.loading",
    "bench.memory", "bench.reference", "bench.synthetic", "bench.timing", "bench.training", "utils.evaluate",
    "utils.coco", "utils.weights", "utils.problems", "utils.data_files", "utils.labels", "utils.label_cache",
    "utils.images", "utils.image_cache", "utils.data_check", "utils.annotations", "utils.convert_output",
    "utils.train_options", "utils.resume", "utils.train_parts", "utils.train_log", "utils.runs", "utils.finite",
    "utils.files",
]  # fmt: skip


def test_importing_every_module_prints_and_writes_nothing(repo_root, tmp_path):
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    env = {"PYTHONPATH": str(repo_root), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code, *MODULES], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    assert [p.name for p in tmp_path.iterdir()] == []


def test_the_list_names_every_module(repo_root):
    found = {p.stem for p in repo_root.glob("*.py")}
    for package in ("utils", "bench"):
        found |= {f"{package}.{p.stem}" for p in (repo_root / package).glob("*.py") if p.stem != "__init__"}
    assert sorted(found - set(MODULES)) == []

"""utils.general.tune_malloc: freed batch-sized buffers stay in the heap (no page faults on reuse)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Allocates what a loader batch allocates (16 images of 300 kB, then the 4.8 MB stacked batch), frees it, and
# counts the page faults of 20 more such batches. Run in a fresh process: the settings are process-wide.
PROBE = """
import resource, sys
import numpy as np
from utils.general import tune_malloc
tuned = tune_malloc() if sys.argv[1] == "tuned" else False
def batch():
    parts = [np.ones(300_000, np.uint8) for _ in range(16)]
    out = np.ones(16 * 300_000, np.uint8)
    return len(parts) + len(out)
batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    batch()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(mode: str, **env: str) -> tuple[str, int]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    environ.update(env, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=environ,
                         cwd=ROOT, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_tune_malloc_stops_page_faults_on_reused_batch_buffers():
    applied, tuned_faults = _probe("tuned")
    if applied != "True":
        pytest.skip("not glibc: tune_malloc does nothing here")
    # 20 batches of ~9.6 MB (~47,000 pages): tuned, they are served from the heap the first batch left.
    assert tuned_faults < 1000, tuned_faults
    _, default_faults = _probe("default")
    # glibc 2.36 here faults most pages in again every batch (~36,000); the probe must show the difference.
    assert default_faults > 20 * max(tuned_faults, 100), (tuned_faults, default_faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_tune_malloc_leaves_user_settings_alone():
    applied, faults = _probe("tuned", MALLOC_TRIM_THRESHOLD_="1")
    assert applied == "False"
    assert faults > 2000  # the user's trim-everything setting still rules

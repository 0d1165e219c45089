"""The backend-neutral suite (tests/backends) on JAX and PyTorch, each in its own pytest process.

Keras fixes its backend at import, so the suite cannot share this process; running it from here makes the
README's one test command cover every backend.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_suite_passes(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra", "--run-slow"]
    command.append("tests/backends")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "(no output)"
    output = f"{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    assert result.returncode == 0, f"KERAS_BACKEND={backend}: {summary}\n{output}"
    assert " passed" in summary and "failed" not in summary, summary

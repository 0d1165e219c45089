"""docs/custom-steps.md's stateless JAX `train_step` runs as written, on JAX."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "custom-steps.md"
BLOCKS = re.findall(r'^```python title="JAX[^"]*"\n(.*?)^```', PAGE.read_text(), re.DOTALL | re.MULTILINE)


def test_the_jax_step_runs_on_jax(tmp_path):
    assert len(BLOCKS) == 1
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", BLOCKS[0]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]

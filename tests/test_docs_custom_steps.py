"""docs/custom-steps.md runs as written: its Python blocks, in page order, as one script."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the page as a script in a fresh process

PAGE = Path(__file__).resolve().parents[1] / "docs" / "custom-steps.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", PAGE.read_text(), re.DOTALL | re.MULTILINE)


def test_the_page_runs_top_to_bottom(tmp_path):
    assert len(BLOCKS) >= 4  # any model, own train_step, GAN, tape loop
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run(
        [sys.executable, "-c", "\n\n".join(BLOCKS)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "runs" / "gan" / "train").is_dir()  # the GAN's logger wrote its run

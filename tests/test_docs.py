"""The documentation site builds strictly, and the notebooks are stored without outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the strict mkdocs build

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "strategies" / "index.html").read_text()
    for name in ("ClipByGlobalNorm", "AutoClip", "ZClip", "AdaptiveGradClip", "Chain", "ByVariable"):
        assert f'id="keras_clip.{name}"' in api, name
    assert (tmp_path / "site" / "demo.png").stat().st_size > 10_000


def test_notebooks_exist_and_are_stored_without_outputs():
    assert [p.name for p in NOTEBOOKS] == [
        "01_quickstart.ipynb",
        "02_exploding_rnn_tensorboard.ipynb",
        "03_fixed_vs_adaptive.ipynb",
        "04_dp_sgd_digits.ipynb",
    ]
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, path.name

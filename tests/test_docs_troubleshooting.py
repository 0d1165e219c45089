"""Every snippet of docs/troubleshooting.md runs, as written, in a fresh process and in page order."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every snippet in a fresh process

PAGE = Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
SNIPPETS = FENCE.findall(PAGE.read_text())


def test_every_block_is_a_snippet_this_file_runs():
    assert len(SNIPPETS) >= 7
    assert {language for language, _ in SNIPPETS} == {"python", "bash"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One directory for the whole page: a later snippet may read what an earlier one logged."""
    return tmp_path_factory.mktemp("troubleshooting")


@pytest.mark.parametrize("index", range(len(SNIPPETS)), ids=lambda i: f"{SNIPPETS[i][0]}-{i + 1}")
def test_snippet_runs(workdir, index):
    language, code = SNIPPETS[index]
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-euo", "pipefail", "-c", code]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # keras-clip
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"snippet {index + 1} failed:\n{code}\n--- stderr:\n{done.stderr[-4000:]}"

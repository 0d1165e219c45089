"""Smoke test: the benchmarks run at a tiny size and print their tables.

No figure is asserted (the machines the tests run on are shared and noisy);
`docs/benchmarks.md` holds the measured figures and the command behind them.
"""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # benchmark smoke runs

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 900  # three scripts at once on two cores; a loaded machine needs several minutes


@pytest.fixture(scope="module")
def runs():
    """Every benchmark script in `--tiny` mode, started together (each is mostly tracing and compiling)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    started = {
        script: subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / script), "--tiny"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script in ("bench_step.py", "bench_logging.py", "adaptive_problems.py", "bench_dp.py")
    }
    yield started
    for process in started.values():
        if process.poll() is None:
            process.kill()
        for stream in (process.stdout, process.stderr):
            stream.close()
        process.wait()


def _output(runs, script):
    stdout, stderr = runs[script].communicate(timeout=TIMEOUT)
    assert runs[script].returncode == 0, stderr[-4000:]
    return stdout


def test_bench_step_tiny_prints_every_variant(runs):
    out = _output(runs, "bench_step.py")
    assert "### mlp, steps_per_execution=1" in out
    assert "| variant | wall ms/step | wall ratio median (min-max) |" in out
    variants = re.findall(r"^- (\w+): ", out, flags=re.MULTILINE)
    assert {"keras", "keras_clipnorm", "handwritten", "kc", "kc_logger", "kc_agc", "kc_zclip"} <= set(variants)
    for variant in variants:
        assert f"\n| {variant} | " in out, variant
    assert "### First epoch and peak memory" in out
    assert "\n| mlp | keras | " in out
    assert "load average at end" in out


def test_bench_logging_tiny_prints_its_table(runs):
    out = _output(runs, "bench_logging.py")
    assert "wall-clock: ms/step (median) and ratio to no logging" in out
    assert "CPU time (all threads)" in out
    for variant in ("none, spe=1", "logger, spe=1", "logger per_variable, spe=1", "logger, spe=8"):
        assert variant in out


def _table(section: str) -> dict[str, list[str]]:
    """Label -> cells of each data row of a markdown table."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("|")]
    return {cells[0]: cells[1:] for cells in rows[2:]}  # after the header and the --- line


def test_adaptive_problems_tiny_prints_all_three_tables(runs):
    out = _output(runs, "adaptive_problems.py")
    cliff, rest = out.split("### 2.")
    outliers, late = rest.split("### 3.")
    cliff, outliers, late = _table(cliff), _table(outliers), _table(late)
    assert list(cliff) == ["none", "ClipByGlobalNorm(1.0)", "AutoClip()", "ZClip()"]
    assert cliff["none"][-1] == "diverged"  # NaN within 2 epochs, as in plain Keras
    assert {row[-1] for row in cliff.values()} <= {"diverged", "converged", "stalled"}
    assert list(outliers) == ["none", "AutoClip()"]
    assert outliers["none"][-1] == "1" and float(outliers["AutoClip()"][0]) > 0
    assert list(late) == ["none", "SkipSpikes(window=8, warmup_steps=4)"]
    skipping = late["SkipSpikes(window=8, warmup_steps=4)"]
    assert skipping[-2:] == ["1", "3"]  # the 3 poisoned batches skipped: no harm at all


def test_bench_dp_tiny_prints_every_model_and_variant(runs):
    out = _output(runs, "bench_dp.py")
    for model in ("mlp", "embedding", "conv"):
        assert re.search(rf"^{model} \(batch \d+", out, re.M), out
    for variant in ("keras", "dp_ghost", "dp_vectorized"):
        assert len(re.findall(rf"^  {variant} +[\d.]+ +[\d.]+ +[\d.]+", out, re.M)) == 3, out


def test_clipping_speed_quick_sweeps_every_family(tmp_path):
    """The tuned comparison in `--quick` mode: every family and kind, the reuse check and the suggest row."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    out_json = tmp_path / "speed.json"
    process = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "clipping_speed.py"), "--quick", "--json", str(out_json)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    out = process.stdout
    sections = out.split("### ")[1:]
    assert [s.splitlines()[0] for s in sections] == ["seed regression", "IRNN sum", "transformer"]
    for section in sections:
        table = _table(section)
        assert list(table) == ["none", "ClipByGlobalNorm", "AutoClip", "ZClip", "AdaptiveGradClip"]
        assert "1.00" in [row[2] for row in table.values()]  # the best kind is the reference of the ratios
        assert re.search(r"^- suggest \(percentile 90\): ", section, re.M)
    # A model reset between runs trains exactly as a freshly compiled one (checked on the first family).
    assert "largest relative difference of the epoch losses: 0\n" in sections[0]
    runs = json.loads(out_json.read_text())["runs"]
    assert len(runs) == 3 * 5 * 3  # families x kinds (one threshold) x learning rates, one seed
    seed = {(r["label"], r["lr"]): r["losses"] for r in runs if r["family"] == "seed regression"}
    assert all(len(losses) == 4 for losses in seed.values())
    # Without clipping the seed regression diverges at the largest rate; clipped, it does not.
    assert not math.isfinite(float(seed[("none", 1.0)][-1]))  # non-finite losses are written as strings
    clipped = [float(v) for v in seed[("ClipByGlobalNorm(10)", 1.0)]]
    assert all(math.isfinite(v) for v in clipped) and clipped[-1] < clipped[0]


def test_bench_step_compiled_refuses_a_backend_other_than_jax():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_step.py"), "--backend", "torch", "--compiled"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode != 0
    assert "--compiled times jax.jit steps: it needs --backend jax. Received: --backend torch" in done.stderr

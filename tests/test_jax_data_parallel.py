"""On JAX, `keras.distribution.DataParallel` over 2 CPU devices gives the weights of one device."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_data_parallel_over_two_devices_equals_one_device():
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "distributed" / "jax_data_parallel_run.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert sorted(result) == sorted(
        [
            "AdaGC",
            "AdaptiveGradClip",
            "AutoClip",
            "ClipByBlockRMS",
            "ClipByGlobalNorm",
            "ClipByValue",
            "SkipSpikes",
            "ZClip",
            "ZClipPercentileSkip",
        ]
    )
    assert all(diff <= 1e-5 for diff in result.values()), result

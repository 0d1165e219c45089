"""Backend-neutral tests: run once per Keras backend (`KERAS_BACKEND=jax pytest tests/backends`, ...).

Each compares the active backend against TensorFlow, computed in a
TensorFlow subprocess, or checks what must hold on every backend.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.backends import seed_run

ROOT = Path(__file__).resolve().parents[2]
COMPARED = [
    "ClipByGlobalNorm",
    "ClipByValue",
    "AdaptiveGradClip",
    "AutoClip",
    "ZClip",
    "ZClipPercentileSkip",
    "AdaGC",
    "ClipByBlockRMS",
    "SkipSpikes",
]


def _env(backend: str) -> dict[str, str]:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def tensorflow_runs(tmp_path_factory):
    """`seed_run.py`'s results on TensorFlow, computed in a subprocess."""
    path = tmp_path_factory.mktemp("tf") / "seed.npz"
    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "backends" / "seed_run.py"), str(path)],
        env=_env("tensorflow"),
        check=True,
        timeout=600,
        capture_output=True,
    )
    return np.load(path)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_import_does_not_load_tensorflow(backend):
    code = (
        "import sys, keras_clip; loaded = sorted(m for m in sys.modules if m.startswith('tensorflow')); "
        "assert not loaded, loaded[:3]; print(keras_clip.ClipByGlobalNorm(1.0))\n"
        "try:\n    keras_clip.PerExampleClip\nexcept ImportError as e:\n    print(e)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(backend), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ClipByGlobalNorm" in out.stdout
    # Per-example clipping is TensorFlow-only: asking for it says so, and names the fix.
    fix = f"Set the environment variable KERAS_BACKEND=tensorflow. Received: backend='{backend}'"
    assert "needs the TensorFlow backend" in out.stdout and fix in out.stdout


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_callbacks_write_event_files_without_tensorflow(backend, tmp_path):
    # TensorFlow made unimportable, as on a machine without it: TensorBoard falls back to its own stub.
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "import keras, numpy as np, keras_clip\n"
        "from tensorboard.backend.event_processing.event_accumulator import EventAccumulator\n"
        "x = np.ones((8, 3), 'float32'); i = keras.Input((3,))\n"
        "m = keras_clip.ClippingModel(i, keras.layers.Dense(1)(i))\n"
        "m.compile('sgd', 'mse', clipping=keras_clip.ClipByGlobalNorm(1.0))\n"
        f"logger = keras_clip.GradientNormLogger({str(tmp_path)!r}, per_variable=True)\n"
        "m.fit(x, x[:, :1], batch_size=4, epochs=1, verbose=0, callbacks=[logger, keras_clip.GradientSpikeMonitor()])\n"
        f"events = EventAccumulator({str(tmp_path / 'train')!r}); events.Reload()\n"
        "print(sorted(events.Tags()['tensors']))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(backend), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "'grad_norm/pre_clip'" in out.stdout and "'custom_scalars__config__'" in out.stdout, out.stdout


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("name", COMPARED)
def test_seed_steps_match_tensorflow(name, tensorflow_runs):
    weights, losses = seed_run.run(name)
    for i, w in enumerate(weights):
        reference = tensorflow_runs[f"{name}/w{i}"]
        assert np.all(np.isfinite(w))
        assert _relative(w, reference) <= 1e-5, (keras.backend.backend(), name, i, _relative(w, reference))
    np.testing.assert_allclose(losses, tensorflow_runs[f"{name}/loss"], rtol=1e-5)


def test_unclipped_turns_nan_and_clipped_converges(tensorflow_runs):
    unclipped, losses = seed_run.run("none")
    assert not np.all(np.isfinite(losses)) and not all(np.all(np.isfinite(w)) for w in unclipped)
    assert not np.all(np.isfinite(tensorflow_runs["none/loss"]))
    _, clipped = seed_run.run("ClipByGlobalNorm", epochs=10)
    assert np.all(np.isfinite(clipped))
    # The last step's logged loss is its epoch's mean: the tenth epoch's mean against the first's.
    steps = seed_run.STEPS
    assert clipped[-1] < 0.1 * clipped[steps - 1], (clipped[steps - 1], clipped[-1])

"""`GradientNormLogger` and `GradientSpikeMonitor` on the active backend."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

import keras_clip as kc


def _events(log_dir: Path) -> EventAccumulator:
    (path,) = (log_dir / "train").glob("events*")
    events = EventAccumulator(str(path), size_guidance={"tensors": 0})
    events.Reload()
    return events


def _scalars(log_dir: Path, tag: str) -> dict[int, float]:
    return {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in _events(log_dir).Tensors(tag)}


# Keras runs one step per execution on PyTorch.
@pytest.mark.parametrize("steps_per_execution", [1] if keras.backend.backend() == "torch" else [1, 4])
def test_logger_writes_every_step(tmp_path, steps_per_execution):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 20)).astype("float32")
    y = (x @ rng.normal(size=(20, 1)) * 50).astype("float32")
    inputs = keras.Input((20,))
    model = kc.ClippingModel(inputs, keras.layers.Dense(1)(keras.layers.Dense(25, activation="relu")(inputs)))
    model.compile(
        optimizer=keras.optimizers.SGD(0.07, momentum=0.8),
        loss="mse",
        clipping=kc.ClipByGlobalNorm(1.0),
        steps_per_execution=steps_per_execution,
    )
    spikes = kc.GradientSpikeMonitor()
    history = model.fit(
        x, y, batch_size=32, epochs=2, verbose=0, callbacks=[kc.GradientNormLogger(tmp_path, per_variable=True), spikes]
    )
    pre = _scalars(tmp_path, "grad_norm/pre_clip")
    post = _scalars(tmp_path, "grad_norm/post_clip")
    assert sorted(pre) == list(range(1, 17))  # 8 batches x 2 epochs, each step once
    assert all(v > 1.0 for v in pre.values()) and post == pytest.approx(dict.fromkeys(range(1, 17), 1.0))
    assert pre[16] == pytest.approx(history.history["grad_norm"][-1], rel=1e-5)
    tags = [t for t in _events(tmp_path).Tags()["tensors"] if t.startswith("grad_norm_by_variable/") and "kernel" in t]
    assert len(tags) >= 2, tags  # both kernels, pre-clip
    assert sorted(_scalars(tmp_path, tags[0])) == list(range(1, 17))

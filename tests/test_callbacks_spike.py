"""GradientSpikeMonitor: fires before NaN on the seed run, silent on healthy runs."""

import functools
import math
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import plugin_event_accumulator

import keras_clip as kc
from keras_clip.callbacks import GradientSpikeWarning, SpikeEvent
from keras_clip.callbacks.spike import SpikeDetector
from tests import helpers

# The seed run with the non-finite steps applied, as in plain Keras: the monitor must see them.
seed_model = functools.partial(helpers.seed_model, on_nonfinite="propagate")


def test_stops_the_seed_run_before_the_loss_turns_nan(tmp_path, seed_data):
    x, y = seed_data
    monitor = kc.GradientSpikeMonitor(action="stop", log_dir=tmp_path)
    expected = r"at step 3: pre-clip gradient norm 1\.62\de\+07, \d+\.\dx the running median \d+\. Stopping training"
    with pytest.warns(GradientSpikeWarning, match=expected):
        history = seed_model().fit(x, y, batch_size=128, epochs=50, verbose=0, callbacks=[monitor])
    assert [(e.step, e.reason) for e in monitor.events] == [(3, "spike")]
    assert len(history.history["loss"]) == 1 and all(math.isfinite(v) for v in history.history["loss"])
    assert all(np.isfinite(w).all() for w in history.model.get_weights())
    accumulator = plugin_event_accumulator.EventAccumulator(os.path.join(tmp_path, "train"))
    accumulator.Reload()
    (entry,) = accumulator.Tensors("grad_norm/spike")
    text = tf.make_ndarray(entry.tensor_proto).item().decode()
    assert entry.step == 3 and re.search(r"step 3: pre-clip gradient norm 1\.62\de\+07", text)


def test_calls_back_before_the_loss_turns_nan(seed_data):
    """All steps are seen with steps_per_execution=4 too."""
    x, y = seed_data
    events, losses = [], []
    monitor = kc.GradientSpikeMonitor(action=events.append)
    losses_cb = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: losses.append(logs["loss"]))
    model = seed_model(steps_per_execution=1)
    model.fit(x, y, batch_size=128, epochs=2, verbose=0, callbacks=[monitor, losses_cb])
    first_nan = next(step for step, loss in enumerate(losses, start=1) if not math.isfinite(loss))
    assert events and events[0].step < first_nan and math.isfinite(events[0].norm)
    assert len(events) == 1  # one alarm for the whole explosion, NaN included

    events.clear()
    model = seed_model(steps_per_execution=4)
    model.fit(x, y, batch_size=128, epochs=2, verbose=0, callbacks=[kc.GradientSpikeMonitor(action=events.append)])
    assert [(e.step, e.reason) for e in events] == [(3, "spike")]


@pytest.mark.parametrize(
    ("clipping", "lr"),
    [(kc.ClipByGlobalNorm(1.0), 0.07), (None, 1e-3)],
    ids=["global_clipnorm", "small_lr"],
)
def test_silent_on_healthy_runs(seed_data, clipping, lr):
    x, y = seed_data
    monitor = kc.GradientSpikeMonitor(action="stop")  # any warning fails the test (filterwarnings=error)
    history = seed_model(clipping, lr, steps_per_execution=8).fit(
        x, y, batch_size=128, epochs=50, verbose=0, callbacks=[monitor]
    )
    assert monitor.events == [] and len(history.history["loss"]) == 50
    assert history.history["loss"][-1] < history.history["loss"][0] / 10


def test_warns_by_default(seed_data):
    x, y = seed_data
    with pytest.warns(GradientSpikeWarning, match="Exploding gradient at step 3"):
        history = seed_model().fit(x, y, batch_size=128, epochs=1, verbose=0, callbacks=[kc.GradientSpikeMonitor()])
    assert len(history.history["loss"]) == 1


def test_detector_spike_after_warmup_and_one_alarm_per_episode():
    detector = SpikeDetector(factor=10, window=4, warmup=2, growth_steps=0, growth_factor=10)
    assert detector.update(1, 1.0) is None
    assert detector.update(2, 50.0) is None  # one norm seen: still warming up
    assert detector.update(3, 1.0) is None
    event = detector.update(4, 11.0 * 1.0 + 100)  # median of (1, 50, 1) is 1
    assert event == SpikeEvent(4, 111.0, "spike", 1.0)
    assert detector.update(5, 500.0) is None  # same episode
    assert detector.update(6, 1.0) is None  # episode over
    assert detector.update(7, 1e4).reason == "spike"


def test_detector_sustained_growth():
    detector = SpikeDetector(factor=1e9, window=50, warmup=2, growth_steps=3, growth_factor=8)
    norms = [1.0, 2.0, 4.0, 8.0]
    assert [detector.update(i, n) for i, n in enumerate(norms[:3], start=1)] == [None, None, None]
    assert detector.update(4, norms[3]) == SpikeEvent(4, 8.0, "growth", 1.0)
    slow = SpikeDetector(factor=1e9, window=50, warmup=2, growth_steps=3, growth_factor=8)
    assert all(slow.update(i, 1.5**i) is None for i in range(20))  # 3.4x over 3 steps: not enough


def test_detector_nonfinite():
    detector = SpikeDetector(factor=10, window=50, warmup=2, growth_steps=10, growth_factor=10)
    assert detector.update(1, 1.0) is None
    event = detector.update(2, math.nan)
    assert event.reason == "nonfinite" and "not finite" in event.message
    assert detector.update(3, math.inf) is None
    assert detector.update(4, 1.0) is None
    quiet = SpikeDetector(factor=10, window=50, warmup=2, growth_steps=10, growth_factor=10, nonfinite=False)
    assert [quiet.update(i, n) for i, n in enumerate([1.0, math.inf, math.nan, 1.0], start=1)] == [None] * 4


def test_event_message_names_step_and_norm():
    assert SpikeEvent(12, 5000.0, "spike", 100.0).message == (
        "Exploding gradient at step 12: pre-clip gradient norm 5000, 50.0x the running median 100."
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"factor": 1.0}, "`factor` must be a finite number > 1. Received: factor=1.0"),
        ({"window": 0}, "`window` must be an integer >= 1. Received: window=0"),
        ({"warmup": 60}, "`warmup` must be at most `window` (50). Received: warmup=60"),
        ({"growth_steps": -1}, "`growth_steps` must be an integer >= 0. Received: growth_steps=-1"),
        ({"growth_factor": math.inf}, "`growth_factor` must be a finite number > 1. Received: growth_factor=inf"),
        ({"action": "raise"}, "`action` must be 'warn', 'stop' or a callable. Received: action='raise'"),
        ({"log_dir": ""}, "`log_dir` must be a non-empty string or path. Received: log_dir=''"),
    ],
)
def test_validation(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        kc.GradientSpikeMonitor(**kwargs)


def test_exported():
    assert kc.GradientSpikeMonitor is kc.callbacks.GradientSpikeMonitor
    assert issubclass(GradientSpikeWarning, RuntimeWarning)

"""GradientNormLogger: event files read back with TensorBoard's own reader."""

import gc
import math
import os
import re
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import summary as custom_scalar_summary

import keras_clip as kc
from keras_clip.callbacks import layout
from keras_clip.training.recorder import StepRecorder
from tests.helpers import read_run, scalars, seed_model

STEPS_PER_EPOCH = 8  # 1000 samples, batch 128
OUR_SCALARS = {
    "grad_norm/pre_clip",
    "grad_norm/post_clip",
    "grad_norm/threshold",
    "clipping/factor",
    "clipping/clipped",
    "clipping/nonfinite_steps",
}
PATHS = ["hidden/kernel", "hidden/bias", "out/kernel", "out/bias"]


@pytest.fixture(scope="module")
def two_fits(tmp_path_factory, seed_data):
    """XLA, steps_per_execution=4, two fit() calls (the second with a new logger),
    Keras's TensorBoard in the same log_dir."""
    keras.utils.set_random_seed(0)
    log_dir = str(tmp_path_factory.mktemp("two_fits"))
    x, y = seed_data
    model = seed_model(kc.ClipByGlobalNorm(1.0), steps_per_execution=4)
    first = kc.GradientNormLogger(log_dir, per_variable=True, histogram_freq=1)
    keras_tb = keras.callbacks.TensorBoard(log_dir)
    h1 = model.fit(x, y, batch_size=128, epochs=2, verbose=0, callbacks=[first, keras_tb])
    h2 = model.fit(x, y, batch_size=128, epochs=1, verbose=0, callbacks=[kc.GradientNormLogger(log_dir)])
    return model, read_run(log_dir), h1.history, h2.history


def test_exact_tags(two_fits):
    _, events, _, _ = two_fits
    ours = {t for t in events if not t.startswith(("epoch_", "batch_"))}
    expected = OUR_SCALARS | {"custom_scalars__config__"}
    expected |= {layout.PER_VARIABLE_PREFIX + p for p in PATHS} | {layout.HISTOGRAM_PREFIX + p for p in PATHS}
    assert ours == expected


def test_one_point_per_step_across_fits(two_fits):
    _, events, _, _ = two_fits
    for tag in OUR_SCALARS:
        assert [s for s, _ in scalars(events, tag)] == list(range(1, 3 * STEPS_PER_EPOCH + 1)), tag
    first_fit = list(range(1, 2 * STEPS_PER_EPOCH + 1))
    for path in PATHS:
        assert [s for s, _ in scalars(events, layout.PER_VARIABLE_PREFIX + path)] == first_fit
        assert [e.step for e in events[layout.HISTOGRAM_PREFIX + path]] == [8, 16]


def test_post_clip_within_threshold(two_fits):
    _, events, _, _ = two_fits
    pre = dict(scalars(events, "grad_norm/pre_clip"))
    post = dict(scalars(events, "grad_norm/post_clip"))
    threshold = dict(scalars(events, "grad_norm/threshold"))
    factor = dict(scalars(events, "clipping/factor"))
    clipped = dict(scalars(events, "clipping/clipped"))
    for step in pre:
        assert threshold[step] == 1.0
        assert post[step] <= threshold[step] * (1 + 1e-6)
        assert post[step] == pytest.approx(min(pre[step], 1.0), rel=1e-6)
        assert factor[step] == pytest.approx(post[step] / pre[step], rel=1e-6)
        assert clipped[step] == (1.0 if pre[step] > 1.0 else 0.0)


def test_last_step_of_each_epoch_equals_history(two_fits):
    _, events, h1, h2 = two_fits
    ends = {8: (h1, 0), 16: (h1, 1), 24: (h2, 0)}
    for tag, key in [
        ("grad_norm/pre_clip", "grad_norm"),
        ("grad_norm/post_clip", "clipped_grad_norm"),
        ("clipping/nonfinite_steps", "nonfinite_steps"),
    ]:
        values = dict(scalars(events, tag))
        for step, (history, epoch) in ends.items():
            assert values[step] == pytest.approx(history[key][epoch], rel=1e-7, abs=0), (tag, step)


def test_per_variable_norms_make_up_the_global_norm(two_fits):
    _, events, _, _ = two_fits
    pre = dict(scalars(events, "grad_norm/pre_clip"))
    per_variable = [dict(scalars(events, layout.PER_VARIABLE_PREFIX + p)) for p in PATHS]
    for step in range(1, 2 * STEPS_PER_EPOCH + 1):
        total = math.sqrt(sum(norms[step] ** 2 for norms in per_variable))
        assert total == pytest.approx(pre[step], rel=1e-5)


def test_histograms_hold_every_gradient_entry(two_fits):
    _, events, _, _ = two_fits
    sizes = {"hidden/kernel": 20 * 25, "hidden/bias": 25, "out/kernel": 25, "out/bias": 1}
    for path, size in sizes.items():
        for event in events[layout.HISTOGRAM_PREFIX + path]:
            buckets = tf.make_ndarray(event.tensor_proto)
            assert buckets.shape[1] == 3 and buckets[:, 2].sum() == size


def test_custom_scalars_layout_puts_pre_post_threshold_on_one_chart(two_fits):
    _, events, _, _ = two_fits
    (event,) = events["custom_scalars__config__"]
    parsed = layout_pb2.Layout.FromString(tf.make_ndarray(event.tensor_proto).item())
    charts = [chart for category in parsed.category for chart in category.chart]
    tags = [list(chart.multiline.tag) for chart in charts]
    assert ["^grad_norm/pre_clip$", "^grad_norm/post_clip$", "^grad_norm/threshold$"] in tags


def test_layout_summary_is_tensorboards_own_without_tensorflow():
    # TensorBoard's `pb` imports TensorFlow; ours builds the same bytes from its protos alone.
    prefixes = ["", "d_optimizer/"]
    ours = layout.layout_summary(prefixes).SerializeToString()
    assert ours == custom_scalar_summary.pb(layout.layout(prefixes)).SerializeToString()


def test_side_by_side_with_keras_tensorboard(two_fits):
    _, events, h1, _ = two_fits
    assert [e.step for e in events["epoch_loss"]] == [0, 1]
    loss = [float(tf.make_ndarray(e.tensor_proto)) for e in events["epoch_loss"]]
    assert loss == pytest.approx(h1["loss"], rel=1e-6)


def test_recorder_is_detached_after_fit(two_fits):
    model, _, _, _ = two_fits
    assert model.optimizer.recording.users == 0  # released: the next fit without a logger asks nothing


@pytest.mark.parametrize(
    ("update_freq", "steps_per_execution", "expected"),
    [("epoch", 4, [8, 16]), (3, 4, [3, 6, 9, 12, 15]), ("batch", 3, list(range(1, 17)))],
)
def test_update_freq(tmp_path, seed_data, update_freq, steps_per_execution, expected):
    x, y = seed_data
    model = seed_model(kc.ClipByNorm(1.0), steps_per_execution=steps_per_execution, jit_compile=False)
    logger = kc.GradientNormLogger(tmp_path, update_freq=update_freq, write_layout=False)
    history = model.fit(x, y, batch_size=128, epochs=2, verbose=0, callbacks=[logger])
    events = read_run(tmp_path)
    # ClipByNorm bounds each variable's norm: its threshold is drawn beside those, not the global norm.
    assert set(events) == OUR_SCALARS - {"grad_norm/threshold"} | {
        "grad_norm_by_variable/threshold",
        "grad_norm_by_variable/max_pre_clip",
        "grad_norm_by_variable/max_post_clip",
    }
    assert {v for _, v in scalars(events, "grad_norm_by_variable/threshold")} == {1.0}
    pre = scalars(events, "grad_norm/pre_clip")
    assert [s for s, _ in pre] == expected
    if update_freq == "epoch":
        assert [v for _, v in pre] == pytest.approx(history.history["grad_norm"], rel=1e-7)


def test_attaching_retraces_and_step_axis_counts_every_batch(tmp_path, seed_data):
    x, y = seed_data
    model = seed_model(kc.ClipByGlobalNorm(1.0), steps_per_execution=4)
    model.fit(x, y, batch_size=128, verbose=0)
    assert model.optimizer.recorder is None
    traced = model.train_function
    model.fit(x, y, batch_size=128, verbose=0, callbacks=[kc.GradientNormLogger(tmp_path / "a")])
    assert model.train_function is not traced
    kept = model.train_function
    model.fit(x, y, batch_size=128, verbose=0)  # no logger: no retrace, steps still counted
    model.fit(x, y, batch_size=128, verbose=0, callbacks=[kc.GradientNormLogger(tmp_path / "b")])
    assert model.train_function is kept
    assert [s for s, _ in scalars(read_run(tmp_path / "a"), "grad_norm/pre_clip")] == list(range(9, 17))
    assert [s for s, _ in scalars(read_run(tmp_path / "b"), "grad_norm/pre_clip")] == list(range(25, 33))


def test_value_threshold_is_kept_off_the_norm_chart(tmp_path, small_data):
    x, y = small_data
    inputs = keras.Input((4,))
    model = kc.ClippingModel(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse", clipping=kc.ClipByValue(0.5))
    model.fit(x, y, batch_size=16, verbose=0, callbacks=[kc.GradientNormLogger(tmp_path, write_layout=False)])
    events = read_run(tmp_path)
    assert set(events) == OUR_SCALARS - {"grad_norm/threshold"} | {"clipping/value_threshold"}
    assert {v for _, v in scalars(events, "clipping/value_threshold")} == {0.5}


def test_model_is_not_kept_alive(tmp_path, small_data):
    x, y = small_data
    inputs = keras.Input((4,))
    model = kc.ClippingModel(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y, batch_size=16, verbose=0, callbacks=[kc.GradientNormLogger(tmp_path, write_layout=False)])
    ref = weakref.ref(model)
    del model, inputs
    gc.collect()
    assert ref() is None


def test_needs_a_clipping_model(tmp_path, small_data):
    x, y = small_data
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="ClippingModel.*Received: model of type Functional"):
        model.fit(x, y, verbose=0, callbacks=[kc.GradientNormLogger(tmp_path)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"update_freq": "step"},
            "`update_freq` must be 'batch', 'epoch' or a positive integer. Received: update_freq='step'",
        ),
        ({"update_freq": 0}, "Received: update_freq=0"),
        ({"update_freq": True}, "Received: update_freq=True"),
        ({"histogram_freq": -1}, "`histogram_freq` must be a non-negative integer. Received: histogram_freq=-1"),
        ({"per_variable": 1}, "`per_variable` must be a boolean. Received: per_variable=1"),
        ({"log_dir": ""}, "`log_dir` must be a non-empty string or path. Received: log_dir=''"),
    ],
)
def test_validation(kwargs, message):
    kwargs = {"log_dir": "logs", **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        kc.GradientNormLogger(**kwargs)


def test_recorder_rows_slices_none_and_overwrites():
    """Eager: IndexedSlices (repeated index), a None gradient, a 2-row buffer."""
    table = keras.Variable(np.zeros((5, 2)), dtype="float32", name="table")
    dense = keras.Variable(np.zeros((3,)), dtype="float32", name="dense")
    unused = keras.Variable(np.zeros((2,)), dtype="float32", name="unused")
    recorder = StepRecorder(2, [table, dense, unused], 7, True, True, tf.distribute.get_strategy())
    rows = tf.constant([[3.0, 4.0], [0.0, 12.0]])
    grads = [tf.IndexedSlices(rows, tf.constant([1, 1]), tf.constant([5, 2])), tf.constant([1.0, 2.0, 2.0]), None]
    for i in range(3):
        stats = {"grad_norm": tf.constant(10.0 + i), "extra": tf.constant(0.5)}
        stats["nonfinite_steps"] = tf.constant(i, tf.int64)
        recorder.record(stats, grads, [table, dense, unused])
    assert recorder.current_step() == 10
    assert [r.step for r in recorder.read(8)] == [9, 10]
    with pytest.warns(UserWarning, match="steps 8..8 were overwritten"):
        last = recorder.read(7)[-1]
    assert last.stats == {"grad_norm": 12.0, "extra": 0.5, "nonfinite_steps": 2.0}
    assert last.variable_norms == {"table": pytest.approx(math.hypot(3, 16)), "dense": 3.0}
    assert [r.step for r in recorder.read(0, latest_only=True)] == [10]
    snapshot = recorder.read_gradients()
    assert set(snapshot) == {"table", "dense"}
    np.testing.assert_allclose(snapshot["table"][1], [3.0, 16.0])


def test_scalars_of():
    scalars_ = layout.scalars_of({"grad_norm": 4.0, "clipped_grad_norm": 1.0, "threshold": 1.0, "z": 2.0})
    assert scalars_ == {
        "grad_norm/pre_clip": 4.0,
        "grad_norm/post_clip": 1.0,
        "grad_norm/threshold": 1.0,
        "clipping/z": 2.0,
        "clipping/factor": 0.25,
        "clipping/clipped": 1.0,
    }
    assert layout.scalars_of({"grad_norm": 0.0, "clipped_grad_norm": 0.0})["clipping/factor"] == 1.0
    assert math.isnan(layout.scalars_of({"grad_norm": math.inf, "clipped_grad_norm": math.nan})["clipping/factor"])


def test_per_variable_tags_do_not_carry_the_models_process_number():
    from keras_clip.training.recorder import unique_paths

    for _ in range(2):
        model = kc.ClippingSequential([keras.Input((3,)), keras.layers.Dense(2, name="hidden")])
        assert model.trainable_variables[0].path.startswith("clipping_sequential")
        assert unique_paths(model.trainable_variables) == ["hidden/kernel", "hidden/bias"]
    functional = seed_model()
    assert unique_paths(functional.trainable_variables) == PATHS  # no model name to leave out


def test_the_layout_is_written_once_per_run_even_across_processes(tmp_path, seed_data, monkeypatch):
    from keras_clip.callbacks import logger as logger_module

    x, y = seed_data
    for _ in range(2):
        monkeypatch.setattr(logger_module, "_RUNS_WITH_LAYOUT", set())  # as in a new process
        model = seed_model(kc.ClipByGlobalNorm(1.0), jit_compile=False)
        model.fit(x[:256], y[:256], batch_size=128, verbose=0, callbacks=[kc.GradientNormLogger(tmp_path)])
    assert len(read_run(tmp_path)["custom_scalars__config__"]) == 1
    assert len(os.listdir(tmp_path / "train")) == 2  # both runs wrote their steps

"""ClipByBlockRMS against numpy (optax's `clip_by_block_rms` formula)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_clip as kc
from keras_clip import ClipByBlockRMS


def reference(grads, threshold):
    """optax: `u / max(1, sqrt(mean(u ** 2)) / threshold)` per array, in float64."""
    return [g / np.maximum(1.0, np.sqrt(np.mean(g.astype(np.float64) ** 2)) / threshold) for g in grads]


def variables():
    return [
        keras.Variable(np.zeros((6, 4), "float32"), name="kernel"),
        keras.Variable(np.zeros(4, "float32"), name="bias"),
        keras.Variable(np.zeros((3, 3, 2, 8), "float32"), name="conv"),
    ]


def gradient_sequence(steps=40, seed=0):
    """Per-step gradients: quiet, then spikes in single variables, and a NaN."""
    rng = np.random.default_rng(seed)
    shapes = [tuple(v.shape) for v in variables()]
    sequence = []
    for t in range(steps):
        grads = [rng.normal(0.0, 0.5, size=s).astype("float32") for s in shapes]
        if t % 7 == 3:
            grads[t % 3] *= 40.0
        sequence.append(grads)
    if steps > 20:
        sequence[20][1][2] = np.nan
    return sequence


@pytest.mark.parametrize("threshold, jit", [(1.0, True), (0.3, True), (2.0, False)])
def test_matches_reference_over_sequence_with_spikes_and_nan(threshold, jit):
    strategy, vs = ClipByBlockRMS(threshold), variables()
    fn = tf.function(lambda g: strategy.clip(g, vs), jit_compile=True)
    clipped_steps = 0
    for grads in gradient_sequence():
        clipped, stats = fn(grads) if jit else strategy.clip(grads, vs)
        want = reference(grads, threshold)
        for c, w in zip(clipped, want):
            np.testing.assert_allclose(c.numpy(), w, rtol=1e-5, atol=1e-7)
        fraction = np.mean([not np.allclose(w, g) for w, g in zip(want, grads)])
        if np.all([np.all(np.isfinite(g)) for g in grads]):
            pre = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads))
            post = np.sqrt(sum(np.sum(w**2) for w in want))
            np.testing.assert_allclose(float(stats["grad_norm"]), pre, rtol=1e-5)
            np.testing.assert_allclose(float(stats["clipped_grad_norm"]), post, rtol=1e-5)
            np.testing.assert_allclose(float(stats["clipped_fraction"]), fraction, atol=1e-7)
            clipped_steps += fraction > 0
    assert float(stats["rms_threshold"]) == pytest.approx(threshold)
    assert 0 < clipped_steps  # guard: the sequence clips


def test_each_variable_ends_at_rms_threshold_and_clipping_twice_changes_nothing():
    strategy, vs = ClipByBlockRMS(0.5), variables()
    grads = [tf.constant(g * 10.0) for g in gradient_sequence(1)[0]]
    once, _ = strategy.clip(grads, vs)
    for c in once:
        np.testing.assert_allclose(float(tf.sqrt(tf.reduce_mean(tf.square(c)))), 0.5, rtol=1e-5)
    twice, stats = strategy.clip(once, vs)
    for a, b in zip(once, twice):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    assert float(stats["clipped_fraction"]) == 0.0


def test_indexed_slices_use_the_rms_over_the_whole_variable():
    table = keras.Variable(np.zeros((10, 2), "float32"), name="table")
    rows = tf.constant([[30.0, 40.0], [0.0, 0.0]])
    grad = tf.IndexedSlices(rows, tf.constant([1, 4]), tf.constant([10, 2]))
    (clipped,), _ = ClipByBlockRMS(1.0).clip([grad], [table])
    dense = tf.math.unsorted_segment_sum(clipped.values, clipped.indices, 10).numpy()
    np.testing.assert_allclose(dense, reference([tf.convert_to_tensor(grad).numpy()], 1.0)[0], rtol=1e-6)


@pytest.mark.parametrize("value", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_threshold_raises_value_error(value):
    with pytest.raises(ValueError, match=r"`threshold` must be a positive finite number. Received: threshold="):
        ClipByBlockRMS(value)


@pytest.mark.parametrize("value", ["1", None, True])
def test_bad_threshold_type_raises_type_error(value):
    with pytest.raises(TypeError, match="`threshold` must be a number"):
        ClipByBlockRMS(value)


def test_config_round_trip_and_names():
    strategy = ClipByBlockRMS(0.25)
    config = keras.saving.serialize_keras_object(strategy)
    assert keras.saving.deserialize_keras_object(config).get_config() == {"threshold": 0.25}
    assert kc.get(config).get_config() == {"threshold": 0.25}
    assert kc.get("ClipByBlockRMS").get_config() == kc.get("block_rms").get_config() == {"threshold": 1.0}


def test_trains_in_a_model(small_data):
    x, y = small_data
    inputs = keras.Input((4,))
    model = kc.ClippingModel(inputs, keras.layers.Dense(1)(keras.layers.Dense(8, activation="relu")(inputs)))
    model.compile(optimizer="sgd", loss="mse", clipping=ClipByBlockRMS(0.01), jit_compile=True)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0).history
    assert all(np.isfinite(history["loss"]))
    assert history["clipped_grad_norm"][-1] < history["grad_norm"][-1]

"""Ghost norms equal the norms of vectorized per-example gradients, layer kind by layer kind."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_clip.privacy import ghost, gradients
from keras_clip.privacy.step import per_example_losses

CLIP = 5.0


def _sequence_model():
    """Every supported kind on sequences (several positions per example), plus a shared and a Conv1D layer."""
    keras.utils.set_random_seed(0)
    ids = keras.Input((6,), dtype="int32")
    tokens = keras.layers.Embedding(7, 5)(ids)  # 6 positions from 7 rows: repeated rows
    h = keras.layers.LayerNormalization()(tokens)
    h = keras.layers.Dense(4, activation="relu")(h)  # 6 positions, 5 x 4 kernel: Gram is the larger path
    h = keras.layers.EinsumDense("abc,cd->abd", output_shape=(6, 3), bias_axes="d")(h)
    h = keras.layers.Conv1D(3, 2)(h)  # no ghost norm: vectorized
    shared = keras.layers.Dense(3)
    h = shared(shared(h))  # called twice: vectorized
    h = keras.layers.Dense(40)(h)  # 5 positions, 3 x 40 kernel: Gram path
    h = keras.layers.Flatten()(h)
    single_id = keras.Input((), dtype="int32")
    e = keras.layers.Embedding(9, 3)(single_id)  # one row per example
    e = keras.layers.EinsumDense("ab,bc->ac", output_shape=2)(e)
    h = keras.layers.Concatenate()([h, keras.layers.LayerNormalization(center=False)(e)])
    return keras.Model([ids, single_id], keras.layers.Dense(2)(h))


def _data(n=6):
    rng = np.random.default_rng(0)
    return (rng.integers(0, 7, (n, 6)).astype("int32"), rng.integers(0, 9, (n,)).astype("int32")), rng.normal(
        size=(n, 2)
    ).astype("float32")


def _norms(model, x, y, use_ghost, jit_compile=False):
    @tf.function(jit_compile=jit_compile)
    def norms(x, y):
        with tf.GradientTape(persistent=True) as tape:
            if use_ghost:
                with ghost.recording(model, tape) as recording:
                    y_pred = model(x, training=True)
            else:
                recording, y_pred = None, model(x, training=True)
            losses = per_example_losses("mse", y, y_pred)
        result = gradients.clipped_sum(tape, losses, model.trainable_variables, CLIP, recording)
        return result[0], result[1], len(recording.records()) if recording is not None else 0

    norms_, sums, recorded = norms(x, y)
    return norms_.numpy(), [tf.convert_to_tensor(s).numpy() for s in sums], recorded


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_ghost_norms_equal_vectorized_norms(jit_compile):
    model = _sequence_model()
    x, y = _data()
    vectorized, vectorized_sums, _ = _norms(model, x, y, use_ghost=False)
    fast, fast_sums, recorded = _norms(model, x, y, use_ghost=True, jit_compile=jit_compile)
    assert recorded == 9  # Embedding, LayerNormalization, EinsumDense: 2 each; Dense: 3 (not the shared one)
    np.testing.assert_allclose(fast, vectorized, rtol=1e-5)
    assert np.min(vectorized) < CLIP < np.max(vectorized)  # some examples are clipped, some are not
    for a, b in zip(fast_sums, vectorized_sums):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_each_supported_kind_is_recorded_and_the_calls_restored():
    model = _sequence_model()
    x, _ = _data()
    with tf.GradientTape() as tape:
        with ghost.recording(model, tape) as recording:
            model(x)
    kinds = sorted({type(r.layer).__name__ for r in recording.records()})
    assert kinds == ["Dense", "EinsumDense", "Embedding", "LayerNormalization"]
    assert not any("call" in vars(layer) for layer in model._flatten_layers())


def test_unsupported_variants_fall_back():
    dense = keras.layers.Dense(2)
    dense.build((None, 3))
    assert ghost.supported(dense)
    dense.enable_lora(1)
    assert not ghost.supported(dense)
    frozen = keras.layers.Dense(2, trainable=False)
    frozen.build((None, 3))
    assert not ghost.supported(frozen)
    ellipsis = keras.layers.EinsumDense("...b,bc->...c", output_shape=2)
    ellipsis.build((None, 3))
    assert not ghost.supported(ellipsis)

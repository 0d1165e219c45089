"""The four `on_nonfinite` policies."""

import keras
import numpy as np
import pytest

import keras_clip as kc
from tests.helpers import mlp


def _poisoned(data, batch=16, poisoned_batch=1):
    x, y = (a.copy() for a in data)
    x[batch * poisoned_batch] = np.nan
    keep = np.ones(len(x), bool)
    keep[batch * poisoned_batch : batch * (poisoned_batch + 1)] = False
    return (x, y), (x[keep], y[keep])


def _train(data, policy, jit=True, spe=1, epochs=1, clipping="global_norm"):
    model = mlp()
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss="mse",
        clipping=clipping,
        on_nonfinite=policy,
        jit_compile=jit,
        steps_per_execution=spe,
    )
    history = model.fit(*data, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    return model, history.history


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("spe", [1, 4])
def test_skip_is_identical_to_never_seeing_the_batch(small_data, jit, spe):
    poisoned, clean = _poisoned(small_data)
    model, history = _train(poisoned, "skip", jit, spe, epochs=2)
    reference, _ = _train(clean, "skip", jit, spe, epochs=2)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # The inner optimizer's slots and iteration counter (the wrapper's own variables count the skip).
    for a, b in zip(model.optimizer.inner_optimizer.variables, reference.optimizer.inner_optimizer.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    assert int(model.optimizer.iterations.numpy()) == 6
    assert history["nonfinite_steps"] == [1, 2]


def test_skip_is_the_default(small_data):
    model = mlp()
    model.compile(optimizer="sgd", loss="mse")
    assert model.on_nonfinite == "skip"


def test_propagate_does_what_keras_does(small_data):
    poisoned, _ = _poisoned(small_data)
    model, history = _train(poisoned, "propagate", clipping=None)
    reference = mlp(keras.Model)
    reference.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="mse", jit_compile=True)
    reference.fit(*poisoned, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert any(np.isnan(w).any() for w in model.get_weights())
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)  # NaNs in the same places
    assert history["nonfinite_steps"] == [3]  # the poisoned step and every step after it


def test_raise_stops_with_a_clear_error_and_keeps_weights(small_data):
    poisoned, _ = _poisoned(small_data)
    model = mlp()
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss="mse",
        clipping="global_norm",
        on_nonfinite="raise",
        jit_compile=True,
    )
    with pytest.raises(kc.NonFiniteGradientError, match="non-finite gradient.*not applied"):
        model.fit(*poisoned, batch_size=16, epochs=1, shuffle=False, verbose=0)
    reference, _ = _train((small_data[0][:16], small_data[1][:16]), "skip")
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def _two_branch_model():
    a, b = keras.Input((3,), name="a"), keras.Input((3,), name="b")
    out_a = keras.layers.Dense(1, name="out_a")(a)
    out_b = keras.layers.Dense(1, name="out_b")(b)
    return kc.ClippingModel({"a": a, "b": b}, {"out_a": out_a, "out_b": out_b})


@pytest.mark.parametrize("jit", [False, True])
def test_zero_keeps_finite_entries(jit):
    rng = np.random.default_rng(0)
    x = {"a": rng.normal(size=(8, 3)).astype("float32"), "b": rng.normal(size=(8, 3)).astype("float32")}
    y = {"out_a": np.ones((8, 1), "float32"), "out_b": np.ones((8, 1), "float32")}
    x_poisoned = {"a": x["a"].copy(), "b": x["b"]}
    x_poisoned["a"][0, 0] = np.inf
    weights = {}
    for name, inputs in (("zero", x_poisoned), ("clean", x)):
        keras.utils.set_random_seed(0)
        model = _two_branch_model()
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss={"out_a": "mse", "out_b": "mse"},
            clipping=None,
            on_nonfinite="zero",
            jit_compile=jit,
        )
        start = {layer: model.get_layer(layer).get_weights() for layer in ("out_a", "out_b")}
        history = model.fit(inputs, y, batch_size=8, epochs=1, verbose=0).history
        weights[name] = {layer: model.get_layer(layer).get_weights() for layer in ("out_a", "out_b")}
        weights[name + "_start"] = start
        weights[name + "_history"] = history
    # Branch a's gradient was all non-finite: zeroed, so branch a did not move.
    for w, w0 in zip(weights["zero"]["out_a"], weights["zero_start"]["out_a"]):
        np.testing.assert_array_equal(w, w0)
    # Branch b's finite gradient was applied exactly as on clean data.
    for w, w_clean in zip(weights["zero"]["out_b"], weights["clean"]["out_b"]):
        np.testing.assert_allclose(w, w_clean, rtol=1e-6)
    assert weights["zero_history"]["nonfinite_steps"] == [1]
    assert weights["clean_history"]["nonfinite_steps"] == [0]

"""ClippingModel equals keras.Model with the optimizer's own clipping on one device."""

import keras
import numpy as np
import pytest

import keras_clip as kc
from tests.helpers import mlp

CASES = [
    (kc.ClipByGlobalNorm(1.0), {"global_clipnorm": 1.0}),
    (kc.ClipByNorm(1.0), {"clipnorm": 1.0}),
    (kc.ClipByValue(0.5), {"clipvalue": 0.5}),
]


def _train(model, optimizer_kwargs, data, jit, spe, **compile_kwargs):
    x, y = data
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9, **optimizer_kwargs),
        loss="mse",
        jit_compile=jit,
        steps_per_execution=spe,
        **compile_kwargs,
    )
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    return model.get_weights(), history.history


@pytest.mark.parametrize("strategy, keras_kwargs", CASES, ids=lambda c: repr(c) if not isinstance(c, dict) else "")
@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("spe", [1, 4])
def test_same_weights_as_keras_optimizer_clipping(small_data, strategy, keras_kwargs, jit, spe):
    ours, history = _train(mlp(kc.ClippingModel), {}, small_data, jit, spe, clipping=strategy)
    reference, _ = _train(mlp(keras.Model), keras_kwargs, small_data, jit, spe)
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    # Clipping was active, and the norms describe it.
    assert max(history["grad_norm"]) > 1.0
    if not isinstance(strategy, kc.ClipByValue):
        assert all(
            post <= min(pre, 1.0) * (1 + 1e-5) * (2 if isinstance(strategy, kc.ClipByNorm) else 1)
            for pre, post in zip(history["grad_norm"], history["clipped_grad_norm"])
        )


def test_no_clipping_equals_plain_keras_and_reports_norms(small_data):
    ours, history = _train(mlp(kc.ClippingModel), {}, small_data, True, 1, clipping=None)
    reference, _ = _train(mlp(keras.Model), {}, small_data, True, 1)
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    assert all(n > 0 for n in history["grad_norm"])

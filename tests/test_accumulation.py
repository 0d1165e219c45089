"""Gradient accumulation: one clip per real update, on the averaged gradient."""

import keras
import numpy as np
import pytest

import keras_clip as kc
from tests.helpers import mlp


def _train(model, data, jit, **compile_kwargs):
    model.compile(loss="mse", jit_compile=jit, **compile_kwargs)
    history = model.fit(*data, batch_size=8, epochs=2, shuffle=False, verbose=0)
    return model, history.history


@pytest.mark.parametrize("jit", [False, True])
def test_same_weights_as_keras_global_clipnorm_with_accumulation(small_data, jit):
    ours, history = _train(
        mlp(),
        small_data,
        jit,
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9, gradient_accumulation_steps=4),
        clipping=kc.ClipByGlobalNorm(1.0),
    )
    reference, _ = _train(
        mlp(keras.Model),
        small_data,
        jit,
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9, gradient_accumulation_steps=4, global_clipnorm=1.0),
    )
    for a, b in zip(ours.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The norms describe the last real update: its averaged gradient, before and after the clip.
    assert history["grad_norm"][-1] > 1.0
    assert history["clipped_grad_norm"][-1] == pytest.approx(1.0, rel=1e-5)

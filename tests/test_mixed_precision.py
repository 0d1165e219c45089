"""Mixed precision: norms and clips act on unscaled gradients; overflow is skipped once."""

import keras
import numpy as np
import pytest

import keras_clip as kc
from tests.helpers import mlp


@pytest.fixture
def policy():
    def use(name):
        keras.mixed_precision.set_global_policy(name)

    yield use
    keras.mixed_precision.set_global_policy("float32")


def _fit(data, jit=True, clipping=None, epochs=1, **kwargs):
    model = mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", clipping=clipping, jit_compile=jit, **kwargs)
    history = model.fit(*data, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    return model, history.history


@pytest.mark.parametrize("name", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("jit", [False, True])
def test_pre_clip_norm_is_unscaled(small_data, policy, name, jit):
    x, y = small_data
    data = (x, y / 20)  # small enough that the initial loss scale does not overflow float16
    _, reference = _fit(data, jit, clipping=kc.ClipByGlobalNorm(1.0))
    policy(name)
    model, history = _fit(data, jit, clipping=kc.ClipByGlobalNorm(1.0))
    if name == "mixed_float16":
        assert isinstance(model.optimizer.inner_optimizer, keras.optimizers.LossScaleOptimizer)
    tolerance = 2e-2 if name == "mixed_bfloat16" else 5e-3
    np.testing.assert_allclose(history["grad_norm"], reference["grad_norm"], rtol=tolerance)
    assert history["grad_norm"][0] > 1.0  # not multiplied by the 32768 loss scale either
    assert all(post <= 1.0 + 1e-5 for post in history["clipped_grad_norm"])


def test_overflow_halves_the_scale_and_skips_exactly_one_step(small_data, policy):
    x, y = (a.copy() for a in small_data)
    y /= 20
    x[16:32] *= 3e4  # float16 overflows in the second batch only
    policy("mixed_float16")
    model = mlp()
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.01), initial_scale=2.0**8)
    model.compile(optimizer=optimizer, loss="mse", clipping=kc.ClipByGlobalNorm(1.0), on_nonfinite="zero")
    history = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**7
    assert int(optimizer.iterations.numpy()) == 3  # 4 batches, one skipped
    assert history["nonfinite_steps"] == [1]
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_scale_grows_as_keras_does(small_data, policy):
    policy("mixed_float16")
    model = mlp()
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.01), initial_scale=2.0**8, dynamic_growth_steps=2
    )
    model.compile(optimizer=optimizer, loss="mse", clipping=kc.ClipByGlobalNorm(1.0), jit_compile=True)
    x, y = small_data
    model.fit(x, y / 20, batch_size=16, epochs=1, shuffle=False, verbose=0)  # 4 finite steps
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**8 * 4
    assert int(optimizer.iterations.numpy()) == 4

"""`keras_clip.ops`'s overflow-safe norms under the active backend's compiler."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from keras import ops as K

from keras_clip import ops


def _compiled(fn):
    """`fn` as the backend's training step compiles it (XLA on TensorFlow and JAX; PyTorch runs eagerly)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    return fn


CASES = {
    # Sums of squares overflow float32 (entries ~1e20), beside an ordinary gradient.
    "huge beside small": [np.arange(1, 241).reshape(30, 8) * 1e18, np.full(8, 3e21), np.array([0.3, -0.4, 1.2])],
    # The norm itself is near float32's largest number; one tiny gradient.
    "near the float32 limit": [np.array([2e38, -2e38]), np.array([1e-3])],
    # Large and small entries in one overflowing gradient.
    "mixed entries": [np.concatenate([np.full(5, 1e25), np.linspace(-1, 1, 11)]), np.ones((4, 4))],
}


@pytest.mark.parametrize("case", CASES)
def test_l2_norms_match_float64(case):
    arrays = CASES[case]
    norms, total = _compiled(ops.l2_norms)([K.convert_to_tensor(a, "float32") for a in arrays])
    expected = [np.linalg.norm(a.astype(np.float32).astype(np.float64)) for a in arrays]
    np.testing.assert_allclose([float(K.convert_to_numpy(n)) for n in norms], expected, rtol=1e-5)
    assert float(K.convert_to_numpy(total)) == pytest.approx(math.sqrt(sum(e**2 for e in expected)), rel=1e-5)


def test_l2_norms_keep_inf_and_nan():
    fn = _compiled(ops.l2_norms)
    _, total = fn([K.convert_to_tensor([1.0, math.inf]), K.convert_to_tensor([1e30])])
    assert float(K.convert_to_numpy(total)) == math.inf
    _, total = fn([K.convert_to_tensor([1.0, math.nan]), K.convert_to_tensor([1e30])])
    assert math.isnan(float(K.convert_to_numpy(total)))

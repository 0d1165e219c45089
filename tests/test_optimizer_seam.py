"""The Keras code `training.distribute.apply_reduced` mirrors, pinned.

On several replicas `apply_reduced` follows Keras's `BaseOptimizer.apply` (and
`LossScaleOptimizer`'s finite/non-finite handling) step by step, leaving out
the all-reduce of `TFOptimizer._backend_update_step`. If a Keras upgrade
changes any of these methods, this test fails: re-read them, bring
`apply_reduced` / `_apply_loss_scaled` in line, then update the hashes.
"""

import hashlib
import inspect

import keras
import pytest
from keras.src.backend.tensorflow.optimizer import TFOptimizer
from keras.src.optimizers.base_optimizer import BaseOptimizer

LSO = keras.optimizers.LossScaleOptimizer
PINNED = {
    BaseOptimizer.apply: "43097be63b919d03",
    BaseOptimizer._backend_apply_gradients: "48d6e24d58039241",
    TFOptimizer._backend_update_step: "00bd759c099a6b72",
    LSO._stateful_handle_finite_grads: "6e4577e03d1ef28d",
    LSO._stateful_handle_non_finite_grads: "62cf46621318f165",
}


@pytest.mark.parametrize("method", list(PINNED), ids=lambda m: m.__qualname__)
def test_keras_code_mirrored_by_apply_reduced_is_unchanged(method):
    digest = hashlib.sha256(inspect.getsource(method).encode()).hexdigest()[:16]
    assert digest == PINNED[method], (
        f"Keras {keras.__version__} changed {method.__qualname__}: keras_clip.training.distribute."
        "apply_reduced mirrors it without the all-reduce. Re-read it, update apply_reduced, then this hash."
    )

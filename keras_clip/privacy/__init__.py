"""Differentially private training: per-example clipping with noise (DP-SGD), and its privacy budget."""

import keras


def _require_tensorflow() -> None:
    """Raises an ImportError naming the fix unless Keras runs on TensorFlow."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ImportError(
            "Per-example clipping (`keras_clip.privacy`, `PerExampleClip`) needs the TensorFlow backend. "
            f"Set the environment variable KERAS_BACKEND=tensorflow. Received: backend={backend!r}"
        )


# Built on TensorFlow (per-example gradients, ghost norms): refuse other backends with the fix.
_require_tensorflow()

from keras_clip.privacy.accounting import epsilon, noise_multiplier_for  # noqa: E402
from keras_clip.privacy.callback import PrivacyBudget  # noqa: E402
from keras_clip.privacy.clip import PerExampleClip  # noqa: E402
from keras_clip.privacy.sampling import poisson_batches  # noqa: E402

__all__ = ["PerExampleClip", "PrivacyBudget", "epsilon", "noise_multiplier_for", "poisson_batches"]

"""Models whose training step clips gradients (TensorFlow backend only)."""

import keras

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "keras_clip's models need the TensorFlow backend, but Keras is using the "
        f"{keras.backend.backend()!r} backend. Set the environment variable "
        "KERAS_BACKEND=tensorflow before importing keras (for example "
        "`export KERAS_BACKEND=tensorflow`)."
    )

from keras_clip.training.mixin import ClippingMixin  # noqa: E402
from keras_clip.training.models import ClippingModel, ClippingSequential  # noqa: E402
from keras_clip.training.policy import NONFINITE_POLICIES, NonFiniteGradientError  # noqa: E402

__all__ = ["ClippingMixin", "ClippingModel", "ClippingSequential", "NONFINITE_POLICIES", "NonFiniteGradientError"]

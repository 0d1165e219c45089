"""Where clipping happens: the optimizer update, and the models that configure it."""

import keras

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "keras_clip's models need the TensorFlow backend, but Keras is using the "
        f"{keras.backend.backend()!r} backend. Set the environment variable "
        "KERAS_BACKEND=tensorflow before importing keras (for example "
        "`export KERAS_BACKEND=tensorflow`)."
    )

from keras_clip.training.mixin import ClippingMixin
from keras_clip.training.models import ClippingModel, ClippingSequential
from keras_clip.training.optimizer import ClippingOptimizer
from keras_clip.training.policy import NONFINITE_POLICIES, NonFiniteGradientError
from keras_clip.training.report import ClipReport

__all__ = [
    "ClipReport",
    "ClippingMixin",
    "ClippingModel",
    "ClippingOptimizer",
    "ClippingSequential",
    "NONFINITE_POLICIES",
    "NonFiniteGradientError",
]

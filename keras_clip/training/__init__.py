"""Where clipping happens: the optimizer update, and the models that configure it."""

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

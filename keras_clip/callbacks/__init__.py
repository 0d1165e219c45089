"""Callbacks that show clipping at work: TensorBoard logs and a spike alarm."""

from keras_clip.callbacks.logger import GradientNormLogger
from keras_clip.callbacks.spike import GradientSpikeMonitor, GradientSpikeWarning, SpikeEvent

__all__ = ["GradientNormLogger", "GradientSpikeMonitor", "GradientSpikeWarning", "SpikeEvent"]

"""Clipping strategies: what a clip does to a list of gradients."""

from keras_clip.strategies.base import ClipStrategy
from keras_clip.strategies.fixed import ClipByGlobalNorm, ClipByNorm, ClipByValue
from keras_clip.strategies.registry import get

__all__ = ["ClipStrategy", "ClipByGlobalNorm", "ClipByNorm", "ClipByValue", "get"]

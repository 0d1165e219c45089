"""Clipping strategies: what a clip does to a list of gradients."""

from keras_clip.strategies.adagc import AdaGC
from keras_clip.strategies.agc import AdaptiveGradClip
from keras_clip.strategies.autoclip import AutoClip
from keras_clip.strategies.base import ClipStrategy
from keras_clip.strategies.block_rms import ClipByBlockRMS
from keras_clip.strategies.compose import ByVariable, Chain
from keras_clip.strategies.fixed import ClipByGlobalNorm, ClipByNorm, ClipByValue
from keras_clip.strategies.registry import get
from keras_clip.strategies.skip import SkipSpikes
from keras_clip.strategies.zclip import ZClip

__all__ = [
    "AdaGC",
    "AdaptiveGradClip",
    "AutoClip",
    "ByVariable",
    "Chain",
    "ClipStrategy",
    "ClipByBlockRMS",
    "ClipByGlobalNorm",
    "ClipByNorm",
    "ClipByValue",
    "SkipSpikes",
    "ZClip",
    "get",
]

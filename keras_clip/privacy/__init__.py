"""Differentially private training: per-example clipping with noise (DP-SGD), and its privacy budget."""

from keras_clip.privacy.clip import PerExampleClip

__all__ = ["PerExampleClip"]

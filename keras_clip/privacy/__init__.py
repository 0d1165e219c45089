"""Differentially private training: per-example clipping with noise (DP-SGD), and its privacy budget."""

from keras_clip.privacy.accounting import epsilon, noise_multiplier_for
from keras_clip.privacy.callback import PrivacyBudget
from keras_clip.privacy.clip import PerExampleClip
from keras_clip.privacy.sampling import poisson_batches

__all__ = ["PerExampleClip", "PrivacyBudget", "epsilon", "noise_multiplier_for", "poisson_batches"]

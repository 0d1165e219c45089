"""Clipping once per real update when the optimizer accumulates gradients.

With `gradient_accumulation_steps=k`, Keras's optimizer sums k micro-batch
gradients and, on every k-th step, averages them, clips (its `_clip_gradients`)
and updates. The clip must act on that average, not on each micro-batch
(keras PR #19998), so the model's clip hook is installed at exactly that point.
"""

from __future__ import annotations

from typing import Any

import keras

from keras_clip.training import update


def inner_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer that updates the weights (the one inside a loss scaler)."""
    return optimizer.inner_optimizer if isinstance(optimizer, update.LossScaleOptimizer) else optimizer


def accumulation_steps(optimizer: keras.optimizers.Optimizer) -> int | None:
    """The optimizer's `gradient_accumulation_steps`, or None."""
    return inner_optimizer(optimizer).gradient_accumulation_steps or None


class _Variables:
    """A plain holder, so that Keras and TF trackers do not track the list."""

    def __init__(self) -> None:
        self.value: list[Any] = []


def install_clip_hook(model: Any, variables: list[Any]) -> None:
    """Routes the optimizer's clip, inside the model's step, to `model.clip_gradients`.

    The averaged gradient is clipped by the model's strategy and its statistics
    are stored in the model's clipping state, because they are computed inside
    the optimizer's update branch and cannot be returned from it. Outside the
    model's step the optimizer clips as it was configured to.
    """
    optimizer = inner_optimizer(model.optimizer)
    if getattr(optimizer, "_keras_clip_model", None) is model:
        optimizer._keras_clip_variables.value = variables
        return
    original = type(optimizer)._clip_gradients.__get__(optimizer)

    def clip_gradients(grads: list[Any]) -> list[Any]:
        if not update.gradients_reduced():
            return original(grads)
        clipped, stats = model.clip_gradients(grads, optimizer._keras_clip_variables.value)
        model._clip_state.store_update_stats(stats)
        return clipped

    optimizer._clip_gradients = clip_gradients
    optimizer._keras_clip_model = model
    optimizer._keras_clip_variables = _Variables()
    optimizer._keras_clip_variables.value = variables

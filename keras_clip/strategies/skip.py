"""SkipSpikes: do not apply an update whose gradient norm is a far outlier."""

from __future__ import annotations

import math
from typing import Any, Sequence

import keras
from keras import ops as K

from keras_clip import ops
from keras_clip.strategies import _validation
from keras_clip.strategies.autoclip import ring_append
from keras_clip.strategies.base import ClipStrategy, Stats, keep_if


def ring_mean_std(history: Any, count: Any) -> tuple[Any, Any]:
    """Mean and sample standard deviation (Bessel's correction) of a ring buffer's values.

    Args:
        history: Float32 tensor of shape `(size,)`.
        count: Integer scalar. How many values were ever appended; the buffer
            holds `min(count, size)` of them.

    Returns:
        `(mean, std)`; the std is 0 while fewer than two values are held.
    """
    size = history.shape[0]
    held = K.minimum(count, size)
    mask = K.arange(size, dtype=K.dtype(held)) < held
    k = K.cast(held, "float32")
    mean = K.sum(K.where(mask, history, 0.0)) / K.maximum(k, 1.0)
    squares = K.sum(K.where(mask, K.square(history - mean), 0.0))
    return mean, K.sqrt(squares / K.maximum(k - 1.0, 1.0))


@keras.saving.register_keras_serializable(package="keras_clip")
class SkipSpikes(ClipStrategy):
    """Skips (does not apply) an update whose global norm is a far outlier.

    Once `warmup_steps` norms have been accepted, a step whose global L2 norm
    `n` exceeds `mean + z_threshold * std` of the last `window` accepted norms
    (sample standard deviation) is not applied: the model leaves weights,
    optimizer slots and the iteration counter untouched, as for a non-finite
    gradient, and counts the step in `skipped_steps` (History and
    TensorBoard). The skipped norm does not enter the window, so a run of
    spikes cannot raise the bar for the next one. The gradient itself is
    never changed. The flip side: a lasting jump of the norm's level by more
    than `z_threshold` standard deviations at once is skipped step after
    step; a `skipped_steps` count that keeps rising means the level moved.

    This is the skip-step rule of large-model trainers (OLMo-core: a window
    of 128, 6 standard deviations, active after 64 steps). It suits rare,
    isolated bad batches in a healthy run; it does nothing for a step that
    is always too large (clip that instead, e.g.
    `Chain(SkipSpikes(), ClipByGlobalNorm(1.0))`).

    A model gates the update on the `skip` stat this strategy reports; called
    on its own, `clip` returns the gradient unchanged and the caller decides.
    Skipping needs the model's own update: it is not available with an
    optimizer's `gradient_accumulation_steps`. In a `Chain` or `ByVariable`,
    a skipped step leaves no trace in any member's state.

    State: a ring buffer of the last `window` accepted norms and an int64
    count of accepted norms, in Keras variables (saved, checkpointed and
    restored with the model). Neither a skipped nor a non-finite norm
    changes them.

    Stats: `grad_norm`, `clipped_grad_norm` (equal: nothing is clipped),
    `threshold` (the largest norm accepted this step, `inf` during warm-up)
    and `skip` (a bool scalar, True when the update is not to be applied;
    always False for a non-finite norm, which the model's `on_nonfinite`
    policy handles).

    Args:
        z_threshold: Float. Positive finite number of standard deviations
            above the mean beyond which a norm is skipped.
        window: Integer >= 2. How many recent accepted norms make the mean
            and standard deviation.
        warmup_steps: Integer >= 2. Accepted norms needed before any step
            is skipped.

    Example:

    ```python
    clipping = keras_clip.Chain(keras_clip.SkipSpikes(), keras_clip.ClipByGlobalNorm(1.0))
    model.compile(optimizer="adam", loss="mse", clipping=clipping)
    ```

    References:
        Allen Institute for AI. OLMo-core's `SkipStepOptimizer`
        (`olmo_core/optim/skip_step_optimizer.py`),
        https://github.com/allenai/OLMo-core, 2024.
    """

    def __init__(self, z_threshold: float = 6.0, window: int = 128, warmup_steps: int = 64) -> None:
        super().__init__()
        self.z_threshold = _validation.positive_finite("z_threshold", z_threshold)
        self.window = _validation.positive_int("window", window, minimum=2)
        self.warmup_steps = _validation.positive_int("warmup_steps", warmup_steps, minimum=2)
        self._history: keras.Variable | None = None
        self._count: keras.Variable | None = None

    def build(self, variables: Sequence[keras.Variable]) -> None:
        """Creates the window of accepted norms (a ring buffer) and their count."""
        if not self.built:
            self._history = self.add_state("history", [0.0] * self.window, "float32")
            self._count = self.add_state("count", 0, ops.wide("int64"))
        super().build(variables)

    def clip_present(self, grads: list[ops.Gradient], variables: list[Any]) -> tuple[list[ops.Gradient], Stats]:
        _, pre = ops.l2_norms(grads)
        history, count = self._history.value, self._count.value
        mean, std = ring_mean_std(history, count)
        active = count >= self.warmup_steps
        threshold = K.where(active, mean + self.z_threshold * std, ops.constant(math.inf))
        finite = K.isfinite(pre)
        # A non-finite norm is never skipped here: the model's non-finite policy decides about it.
        skip = K.logical_and(K.logical_and(active, finite), pre > threshold)
        accept = K.logical_and(finite, K.logical_not(skip))
        self._history.assign(keep_if(accept, ring_append(history, count, pre), history))
        self._count.assign(count + K.cast(accept, ops.wide("int64")))
        return list(grads), {"grad_norm": pre, "clipped_grad_norm": pre, "threshold": threshold, "skip": skip}

    def get_config(self) -> dict[str, Any]:
        return {"z_threshold": self.z_threshold, "window": self.window, "warmup_steps": self.warmup_steps}

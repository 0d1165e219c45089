"""AutoClip: clip the global norm to a percentile of the norms seen so far."""

from __future__ import annotations

import math
from typing import Any, Sequence

import keras
from keras import ops as K

from keras_clip import ops
from keras_clip.strategies import _validation
from keras_clip.strategies.base import ClipStrategy, Stats, keep_if


def ring_append(history: Any, count: Any, value: Any) -> Any:
    """Writes `value` at slot `count % size` of a fixed-size ring buffer.

    Args:
        history: Float32 tensor of shape `(size,)`.
        count: Int64 scalar. How many values were appended before this one.
        value: Float32 scalar.

    Returns:
        The new buffer (same shape; a select, so it compiles under XLA).
    """
    size = history.shape[0]
    slot = K.mod(count, size)
    return K.where(K.arange(size, dtype=ops.wide("int64")) == slot, value, history)


def ring_percentile(history: Any, count: Any, percentile: float) -> Any:
    """The `percentile`-th percentile of the values held by a ring buffer.

    Linear interpolation between the two nearest ranks, as numpy's default
    (`method="linear"`): with the `k` held values sorted, the value at
    fractional rank `percentile / 100 * (k - 1)`. Slots never written are
    ignored; with no value held the result is `+inf` (nothing to clip to).

    Args:
        history: Float32 tensor of shape `(size,)`.
        count: Int64 scalar. How many values were ever appended.
        percentile: Float in [0, 100].
    """
    size = history.shape[0]
    held = K.minimum(count, size)
    inf = K.full((), math.inf, dtype=history.dtype)
    ordered = K.sort(K.where(K.arange(size, dtype=ops.wide("int64")) < held, history, inf))
    last = K.maximum(held, 1) - 1
    # The fraction and the rank in float64 where the backend has it (exact, where float32 rounds).
    wide = ops.wide("float64")
    rank = K.cast(last, wide) * K.convert_to_tensor(percentile / 100.0, dtype=wide)
    low = K.cast(K.floor(rank), ops.wide("int64"))
    high = K.minimum(low + 1, last)
    fraction = K.cast(rank - K.floor(rank), history.dtype)
    low_value, high_value = K.take(ordered, low), K.take(ordered, high)
    # The select keeps inf - inf (nothing held) from turning into NaN.
    return K.where(fraction > 0, low_value + fraction * (high_value - low_value), low_value)


@keras.saving.register_keras_serializable(package="keras_clip")
class AutoClip(ClipStrategy):
    """AutoClip: the global-norm threshold is a percentile of past norms.

    Each step the global L2 norm `n` of the gradient is appended to a history
    of the last `history_size` norms (the current one included); the threshold
    is the `percentile`-th percentile of that history (linear interpolation,
    as numpy's default), and the gradient is rescaled as by
    `ClipByGlobalNorm(threshold)`. No threshold needs tuning to the model:
    it follows the gradient's own scale, and a spike far above the usual
    norms is cut back to them.

    The history is a fixed-size ring buffer in a Keras variable (plus an
    int64 step counter), so it compiles under XLA and is saved, checkpointed
    and restored with the model (`state["history"]`, `state["count"]`). A
    non-finite norm is not recorded (the model's non-finite policy decides
    about that step), nor is a zero norm (a step without gradient would
    otherwise pull a low percentile to 0 and zero the following steps). The first step is
    never clipped (its norm is the whole history).

    The threshold is relative to the run's own norms, so AutoClip cuts a
    spike back to the typical step but never makes the typical step smaller.
    It cannot rescue a learning rate at which every step is too large: on the
    seed experiment (SGD 0.07, momentum 0.8) no percentile or history size
    converges, while on spikes at a safe learning rate its defaults beat every
    other strategy (`benchmarks/adaptive_problems.py`). For a step that is
    always too large, lower the learning rate or bound every step
    (`ClipByGlobalNorm`, `AdaptiveGradClip`).

    Stats: `grad_norm`, `clipped_grad_norm`, `threshold` (this step's
    percentile, which moves every step).

    Args:
        percentile: Float in [0, 100]. Which percentile of the history is the
            threshold; lower clips more often. Defaults to 10, as in the paper.
        history_size: Integer >= 1. How many recent norms are kept; the
            paper keeps every norm, a bound keeps the state fixed-size and
            lets the threshold follow a drifting scale.

    Example:

    ```python
    model.compile(optimizer="sgd", loss="mse", clipping=keras_clip.AutoClip(10.0))
    ```

    References:
        Seetharaman, Wichern, Pardo, Le Roux. [AutoClip: Adaptive Gradient
        Clipping for Source Separation Networks](https://arxiv.org/abs/2007.14469),
        2020.
    """

    def __init__(self, percentile: float = 10.0, history_size: int = 1000) -> None:
        super().__init__()
        self.percentile = _validation.in_range("percentile", percentile, 0.0, 100.0)
        self.history_size = _validation.positive_int("history_size", history_size)
        self._history: keras.Variable | None = None
        self._count: keras.Variable | None = None

    def build(self, variables: Sequence[Any]) -> None:
        """Creates the norm history (ring buffer) and the step counter."""
        if not self.built:
            self._history = self.add_state("history", [0.0] * self.history_size, "float32")
            self._count = self.add_state("count", 0, ops.wide("int64"))
        super().build(variables)

    def rescale_present(self, grads: list[ops.Gradient], variables: list[Any]) -> tuple[list[Any], Stats]:
        _, pre = ops.l2_norms(grads)
        history, count = self._record(pre)
        threshold = ring_percentile(history, count, self.percentile)
        factor = ops.clip_factor(pre, threshold)
        return [factor] * len(grads), {"grad_norm": pre, "clipped_grad_norm": pre * factor, "threshold": threshold}

    def _record(self, norm: Any) -> tuple[Any, Any]:
        """Appends a finite, nonzero norm to the history; returns the new (history, count)."""
        history, count = self._history.value, self._count.value
        # A zero norm (a step with no gradient) would drag a low percentile to 0 and zero the next steps.
        recorded = K.isfinite(norm) & (norm > 0)
        new_history = keep_if(recorded, ring_append(history, count, norm), history)
        new_count = count + K.cast(recorded, ops.wide("int64"))
        self._history.assign(new_history)
        self._count.assign(new_count)
        return new_history, new_count

    def get_config(self) -> dict[str, Any]:
        return {"percentile": self.percentile, "history_size": self.history_size}

"""ZClip: z-score spike detection on the gradient norm, with adaptive scaling."""

from __future__ import annotations

import math
from typing import Any, Sequence

import keras
import tensorflow as tf

from keras_clip import ops
from keras_clip.strategies import _validation
from keras_clip.strategies.base import ClipStrategy, Stats, keep_if


def welford_update(count: tf.Tensor, mean: tf.Tensor, var: tf.Tensor, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Adds `x` to a running mean and population variance of `count` values.

    Welford's update: no buffer, and no cancellation between large sums.

    Returns:
        The new `(mean, var)` of `count + 1` values.
    """
    k = tf.cast(count + 1, tf.float32)
    delta = x - mean
    new_mean = mean + delta / k
    new_var = (var * (k - 1.0) + delta * (x - new_mean)) / k
    return new_mean, new_var


def ema_update(mean: tf.Tensor, var: tf.Tensor, x: tf.Tensor, alpha: float) -> tuple[tf.Tensor, tf.Tensor]:
    """ZClip's EMA: `mean <- a*mean + (1-a)*x`, `var <- a*var + (1-a)*(x - new mean)^2`."""
    new_mean = alpha * mean + (1.0 - alpha) * x
    new_var = alpha * var + (1.0 - alpha) * tf.square(x - new_mean)
    return new_mean, new_var


def zscore_threshold(
    norm: tf.Tensor, mean: tf.Tensor, var: tf.Tensor, z_threshold: float, eps: float
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """ZClip's "zscore" mode with "adaptive_scaling".

    `z = (n - mean) / (std + eps)`; a spike is `z > z_threshold`, and its
    threshold is `mean + z_threshold * std / (z / z_threshold)`: the larger the
    outlier, the closer to the mean it is pulled.

    Returns:
        `(spike, threshold, bound)`: whether `norm` is a spike, the adaptive
        threshold (meaningful only for a spike) and the largest norm that is
        not a spike, `mean + z_threshold * (std + eps)`.
    """
    std = tf.sqrt(tf.maximum(var, 0.0))
    z = (norm - mean) / (std + eps)
    spike = z > z_threshold
    safe_z = tf.where(spike, z, tf.ones_like(z))
    threshold = mean + z_threshold * std / (safe_z / z_threshold)
    return spike, threshold, mean + z_threshold * (std + eps)


def sigma_threshold(norm: tf.Tensor, mean: tf.Tensor, var: tf.Tensor, z_threshold: float) -> tuple[tf.Tensor, ...]:
    """ZClip's "percentile" mode: a spike is `norm > mean + z_threshold * std`, clipped to that bound.

    Returns:
        `(spike, threshold, bound)` as `zscore_threshold`; here the threshold
        and the bound are the same number.
    """
    bound = mean + z_threshold * tf.sqrt(tf.maximum(var, 0.0))
    return norm > bound, bound, bound


MODES = ("zscore", "percentile")


@keras.saving.register_keras_serializable(package="keras_clip")
class ZClip(ClipStrategy):
    """ZClip: clip the global norm when it is a z-score outlier of its EMA.

    Warm-up: the first `warmup_steps` global L2 norms are collected (and
    clipped only to `max_norm`, if set); after the last of them, their mean
    and population variance start an exponential moving average. After
    warm-up, each norm `n` gets `z = (n - mean) / (std + eps)`. If
    `z > z_threshold` it is a spike and its threshold is
    `mean + z_threshold * std / (z / z_threshold)` (larger spikes are pulled
    closer to the mean). The gradient is rescaled to
    `min(threshold or n, max_norm)` when larger, and the EMA is updated with
    the threshold for a spike, with `n` otherwise, so spikes do not inflate
    the statistics. This is the reference implementation's default mode
    ("zscore", "adaptive_scaling"); it scales by `effective / n` exactly
    (the reference divides by `n + 1e-6`).

    `mode="percentile"` (the reference's name; no percentile is computed)
    makes the bound fixed in standard deviations: a norm above
    `mean + z_threshold * std` is a spike and is clipped to that bound.
    `skip_update_on_spike=True` does not apply a spike's update at all (the
    model leaves weights, optimizer slots and iteration counter untouched
    and counts the step in `skipped_steps`, as `SkipSpikes` does) and keeps
    the spike out of the statistics; no spike is skipped during warm-up.

    State: an int64 step counter, the mean and the variance, in Keras
    variables (`state["count"]`, `state["mean"]`, `state["var"]`), saved, checkpointed and
    restored with the model. A non-finite norm, or a skipped spike, changes no state.

    Stats: `grad_norm`, `clipped_grad_norm`, `threshold` (the largest norm
    left unclipped this step: `min(mean + z_threshold * (std + eps),
    max_norm)`, without the `eps` in "percentile" mode; during warm-up
    `max_norm`, or `inf` when it is None), and with `skip_update_on_spike`
    `skip` (a bool scalar, True when the update is not to be applied).

    Args:
        alpha: Float in (0, 1). EMA smoothing factor; closer to 1 adapts more
            slowly.
        z_threshold: Float. Positive finite z-score above which a norm is a
            spike.
        warmup_steps: Integer >= 1. Steps whose norms start the statistics.
        max_norm: Float or None. Positive finite cap on the global norm at
            every step (the reference's `max_grad_norm`); None for no cap.
        eps: Float. Non-negative, added to the standard deviation.
        mode: String. `"zscore"` (default: adaptive scaling, larger spikes
            pulled closer to the mean) or `"percentile"` (spikes clipped to
            `mean + z_threshold * std`).
        skip_update_on_spike: Bool. Whether a spike's update is skipped
            instead of clipped and applied.

    Example:

    ```python
    model.compile(optimizer="adam", loss="mse", clipping=keras_clip.ZClip(max_norm=None))
    ```

    References:
        Kumar, Owen, Roy Chowdhury, Güra. [ZClip: Adaptive Spike Mitigation
        for LLM Pre-Training](https://arxiv.org/abs/2504.02507), 2025.
        Reference code: https://github.com/bluorion-com/ZClip.
    """

    def __init__(
        self,
        alpha: float = 0.97,
        z_threshold: float = 2.5,
        warmup_steps: int = 25,
        max_norm: float | None = 1.0,
        eps: float = 1e-6,
        mode: str = "zscore",
        skip_update_on_spike: bool = False,
    ) -> None:
        super().__init__()
        self.alpha = _validation.in_range("alpha", alpha, 0.0, 1.0, closed="neither")
        self.z_threshold = _validation.positive_finite("z_threshold", z_threshold)
        self.warmup_steps = _validation.positive_int("warmup_steps", warmup_steps)
        self.max_norm = None if max_norm is None else _validation.positive_finite("max_norm", max_norm)
        self.eps = _validation.in_range("eps", eps, 0.0, math.inf, closed="left")
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {list(MODES)}. Received: mode={mode!r}")
        self.mode = mode
        if not isinstance(skip_update_on_spike, bool):
            kind = type(skip_update_on_spike).__name__
            raise TypeError(
                "`skip_update_on_spike` must be a bool. "
                f"Received: skip_update_on_spike={skip_update_on_spike!r} (of type {kind})"
            )
        self.skip_update_on_spike = skip_update_on_spike
        self._count: keras.Variable | None = None
        self._mean: keras.Variable | None = None
        self._var: keras.Variable | None = None

    def build(self, variables: Sequence[Any]) -> None:
        """Creates the step counter and the mean and variance of the norm."""
        if not self.built:
            self._count = self.add_state("count", 0, "int64")
            self._mean = self.add_state("mean", 0.0, "float32")
            self._var = self.add_state("var", 0.0, "float32")
        super().build(variables)

    def clip_present(self, grads: list[ops.Gradient], variables: list[Any]) -> tuple[list[ops.Gradient], Stats]:
        _, pre = ops.l2_norms(grads)
        count, mean, var = self._count.value, self._mean.value, self._var.value
        past_warmup = count >= self.warmup_steps
        if self.mode == "zscore":
            spike, spike_threshold, bound = zscore_threshold(pre, mean, var, self.z_threshold, self.eps)
        else:
            spike, spike_threshold, bound = sigma_threshold(pre, mean, var, self.z_threshold)
        spike = tf.logical_and(past_warmup, spike)
        effective = tf.where(spike, spike_threshold, pre)
        threshold = tf.where(past_warmup, bound, tf.constant(math.inf))
        if self.max_norm is not None:
            effective = tf.minimum(effective, self.max_norm)
            threshold = tf.minimum(threshold, self.max_norm)
        factor = ops.clip_factor(pre, effective)
        finite = tf.math.is_finite(pre)
        # A non-finite norm is never skipped here: the model's non-finite policy decides about it.
        skip = tf.logical_and(finite, spike) if self.skip_update_on_spike else tf.constant(False)
        keep = tf.logical_and(finite, tf.logical_not(skip))
        self._update(past_warmup, tf.where(spike, spike_threshold, pre), finite=keep)
        clipped = [ops.scale(g, factor) for g in grads]
        stats = {"grad_norm": pre, "clipped_grad_norm": pre * factor, "threshold": threshold}
        if self.skip_update_on_spike:
            stats["skip"] = skip
        return clipped, stats

    def _update(self, past_warmup: tf.Tensor, x: tf.Tensor, finite: tf.Tensor) -> None:
        """Welford during warm-up, the EMA after; nothing unless `finite` (a finite norm to record)."""
        count, mean, var = self._count.value, self._mean.value, self._var.value
        warm_mean, warm_var = welford_update(count, mean, var, x)
        ema_mean, ema_var = ema_update(mean, var, x, self.alpha)
        self._mean.assign(keep_if(finite, tf.where(past_warmup, ema_mean, warm_mean), mean))
        self._var.assign(keep_if(finite, tf.where(past_warmup, ema_var, warm_var), var))
        self._count.assign(count + tf.cast(finite, tf.int64))

    def get_config(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "z_threshold": self.z_threshold,
            "warmup_steps": self.warmup_steps,
            "max_norm": self.max_norm,
            "eps": self.eps,
            "mode": self.mode,
            "skip_update_on_spike": self.skip_update_on_spike,
        }

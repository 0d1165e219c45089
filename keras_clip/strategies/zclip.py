"""ZClip: z-score spike detection on the gradient norm, with adaptive scaling."""

from __future__ import annotations

import math
from typing import Any, Sequence

import keras
from keras import ops as K

from keras_clip import ops
from keras_clip.strategies import _validation
from keras_clip.strategies.base import ClipStrategy, Stats, keep_if


def welford_update(count: Any, mean: Any, var: Any, x: Any) -> tuple[Any, Any]:
    """Adds `x` to a running mean and population variance of `count` values.

    Welford's update: no buffer, and no cancellation between large sums.

    Returns:
        The new `(mean, var)` of `count + 1` values.
    """
    k = K.cast(count + 1, "float32")
    delta = x - mean
    new_mean = mean + delta / k
    new_var = (var * (k - 1.0) + delta * (x - new_mean)) / k
    return new_mean, new_var


def ema_update(mean: Any, var: Any, x: Any, alpha: float) -> tuple[Any, Any]:
    """ZClip's EMA: `mean <- a*mean + (1-a)*x`, `var <- a*var + (1-a)*(x - new mean)^2`."""
    new_mean = alpha * mean + (1.0 - alpha) * x
    new_var = alpha * var + (1.0 - alpha) * K.square(x - new_mean)
    return new_mean, new_var


def zscore_threshold(
    norm: Any, mean: Any, var: Any, z_threshold: float, eps: float
) -> tuple[Any, Any, Any]:
    """ZClip's "zscore" mode with "adaptive_scaling".

    `z = (n - mean) / (std + eps)`; a spike is `z > z_threshold`, and its
    threshold is `mean + z_threshold * std / (z / z_threshold)`: the larger the
    outlier, the closer to the mean it is pulled.

    Returns:
        `(spike, threshold, bound)`: whether `norm` is a spike, the adaptive
        threshold (meaningful only for a spike) and the largest norm that is
        not a spike, `mean + z_threshold * (std + eps)`.
    """
    std = K.sqrt(K.maximum(var, 0.0))
    z = (norm - mean) / (std + eps)
    spike = z > z_threshold
    safe_z = K.where(spike, z, K.ones_like(z))
    threshold = mean + z_threshold * std / (safe_z / z_threshold)
    return spike, threshold, mean + z_threshold * (std + eps)


def sigma_threshold(norm: Any, mean: Any, var: Any, z_threshold: float) -> tuple[Any, Any, Any]:
    """ZClip's "percentile" mode: a spike is `norm > mean + z_threshold * std`, clipped to that bound.

    Returns:
        `(spike, threshold, bound)` as `zscore_threshold`; here the threshold
        and the bound are the same number.
    """
    bound = mean + z_threshold * K.sqrt(K.maximum(var, 0.0))
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
            self._count = self.add_state("count", 0, ops.wide("int64"))
            self._mean = self.add_state("mean", 0.0, "float32")
            self._var = self.add_state("var", 0.0, "float32")
        super().build(variables)

    def rescale_present(self, grads: list[ops.Gradient], variables: list[Any]) -> tuple[list[Any], Stats]:
        _, pre = ops.l2_norms(grads)
        count, mean, var = self._count.value, self._mean.value, self._var.value
        past_warmup = count >= self.warmup_steps
        if self.mode == "zscore":
            spike, spike_threshold, bound = zscore_threshold(pre, mean, var, self.z_threshold, self.eps)
        else:
            spike, spike_threshold, bound = sigma_threshold(pre, mean, var, self.z_threshold)
        spike = K.logical_and(past_warmup, spike)
        effective = K.where(spike, spike_threshold, pre)
        threshold = K.where(past_warmup, bound, ops.constant(math.inf))
        if self.max_norm is not None:
            effective = K.minimum(effective, self.max_norm)
            threshold = K.minimum(threshold, self.max_norm)
        factor = ops.clip_factor(pre, effective)
        finite = K.isfinite(pre)
        # A non-finite norm is never skipped here: the model's non-finite policy decides about it.
        skip = K.logical_and(finite, spike) if self.skip_update_on_spike else K.convert_to_tensor(False)
        keep = K.logical_and(finite, K.logical_not(skip))
        self._update(past_warmup, K.where(spike, spike_threshold, pre), finite=keep)
        stats = {"grad_norm": pre, "clipped_grad_norm": pre * factor, "threshold": threshold}
        if self.skip_update_on_spike:
            stats["skip"] = skip
        return [factor] * len(grads), stats

    def _update(self, past_warmup: Any, x: Any, finite: Any) -> None:
        """Welford during warm-up, the EMA after; nothing unless `finite` (a finite norm to record)."""
        count, mean, var = self._count.value, self._mean.value, self._var.value
        warm_mean, warm_var = welford_update(count, mean, var, x)
        ema_mean, ema_var = ema_update(mean, var, x, self.alpha)
        self._mean.assign(keep_if(finite, K.where(past_warmup, ema_mean, warm_mean), mean))
        self._var.assign(keep_if(finite, K.where(past_warmup, ema_var, warm_var), var))
        self._count.assign(count + K.cast(finite, ops.wide("int64")))

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

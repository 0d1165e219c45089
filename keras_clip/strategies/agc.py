"""Adaptive gradient clipping (AGC): each unit's gradient against its weight norm."""

from __future__ import annotations

import math
from typing import Any, Sequence

import keras
import tensorflow as tf

from keras_clip import ops
from keras_clip.strategies import _validation
from keras_clip.strategies._paths import matches, patterns_arg, warn_unmatched
from keras_clip.strategies.base import ClipStrategy, Stats


def unitwise_clip(grad: ops.Gradient, weight: tf.Tensor, clipping: float, eps: float) -> tuple[ops.Gradient, Stats]:
    """AGC for one gradient: each unit's norm is bounded by `clipping * max(||W_i||, eps)`.

    Args:
        grad: Tensor or IndexedSlices (deduplicated). Units are slices along the
            last axis; for slices the norm runs over the rows present (the
            others are zero), which equals the dense unit norm.
        weight: Tensor. The variable's value.
        clipping: Float. The clipping factor lambda.
        eps: Float. Floor on the weight norm (zero-initialised biases).

    Returns:
        `(clipped, parts)`: the clipped gradient and float32 scalars
        `pre_squares` and `post_squares` (its squared L2 norm before and after),
        `bound_squares` (sum of the squared unit bounds) and `clipped_units`
        (how many units were clipped).
    """
    values = ops.values_of(grad)
    g_norm = ops.unitwise_norm(values)
    bound = clipping * tf.maximum(ops.unitwise_norm(weight), eps)
    trigger = g_norm >= bound
    factor = tf.where(trigger, bound / tf.maximum(g_norm, 1e-6), tf.ones_like(g_norm))
    clipped = ops.with_values(grad, values * tf.cast(factor, values.dtype))
    parts = {
        # Both from the unit norms: the gradient is read once.
        "pre_squares": tf.reduce_sum(tf.square(g_norm)),
        "post_squares": tf.reduce_sum(tf.square(factor * g_norm)),
        "bound_squares": tf.reduce_sum(tf.square(bound)),
        "clipped_units": tf.reduce_sum(tf.cast(trigger, tf.float32)),
    }
    return clipped, parts


@keras.saving.register_keras_serializable(package="keras_clip")
class AdaptiveGradClip(ClipStrategy):
    """Adaptive gradient clipping (AGC): unit-wise, relative to the weight norm.

    For every unit `i` (one output unit: a slice along the last axis of a
    Dense `(in, out)` or Conv `(*kernel, in, out)` kernel; the whole tensor for
    a bias or scalar), with `bound_i = clipping * max(||W_i||, eps)`:
    if `||G_i|| >= bound_i` then `G_i <- G_i * bound_i / max(||G_i||, 1e-6)`.
    The threshold follows the weights, so one `clipping` factor fits every
    layer and needs no tuning to the gradient's scale.

    NFNets used `clipping=0.01` at batch size 4096 and excluded the final
    classifier layer (smaller batches tolerate larger factors). Excluded
    variables pass through unchanged; an `exclude` pattern that matches no
    variable warns once, when the strategy is built.

    Stats: `grad_norm`, `clipped_grad_norm` (global L2 norms over every
    variable), `threshold` (the L2 norm of all unit bounds of the clipped
    variables, the largest norm their gradient can keep; it grows with the
    weights) and `clipped_fraction` (share of those units clipped this step).

    Args:
        clipping: Float. Positive finite clipping factor lambda: the largest
            ratio of a unit's gradient norm to its weight norm.
        eps: Float. Positive floor on the weight norm, so zero-initialised
            units (biases) can still move. Defaults to 1e-3 as in the paper.
        exclude: String or sequence of str. `fnmatch` patterns of variable
            paths (`variable.path`, e.g. `"dense_1/*"`) left unclipped.

    Example:

    ```python
    agc = keras_clip.AdaptiveGradClip(0.01, exclude=["classifier/*"])
    model.compile(optimizer="sgd", loss="mse", clipping=agc)
    ```

    References:
        Brock, De, Smith, Simonyan. [High-Performance Large-Scale Image
        Recognition Without Normalization](https://arxiv.org/abs/2102.06171),
        2021.
    """

    def __init__(self, clipping: float, eps: float = 1e-3, exclude: str | Sequence[str] = ()) -> None:
        super().__init__()
        self.clipping = _validation.positive_finite("clipping", clipping)
        self.eps = _validation.positive_finite("eps", eps)
        self.exclude = patterns_arg("exclude", exclude)

    def build(self, variables: Sequence[keras.Variable]) -> None:
        """Checks the `exclude` patterns against the variables (warns once)."""
        if not self.built:
            warn_unmatched(type(self).__name__, self.exclude, variables)
        super().build(variables)

    def _clip(self, grads: list[ops.Gradient], variables: list[keras.Variable]) -> tuple[list[ops.Gradient], Stats]:
        clipped, pre_squares, post_squares, bound_squares, hits, units = [], [], [], [], [], 0
        for grad, variable in zip(grads, variables):
            if matches(variable.path, self.exclude):
                square = ops.sum_of_squares(grad)
                clipped.append(grad)
                pre_squares.append(square)
                post_squares.append(square)
                continue
            new, parts = unitwise_clip(grad, variable.value, self.clipping, self.eps)
            clipped.append(new)
            pre_squares.append(parts["pre_squares"])
            post_squares.append(parts["post_squares"])
            bound_squares.append(parts["bound_squares"])
            hits.append(parts["clipped_units"])
            units += _unit_count(variable)
        pre = tf.sqrt(tf.add_n(pre_squares)) if pre_squares else tf.constant(0.0)
        stats = {
            "grad_norm": pre,
            # Derived from the unit norms already measured: ||f_i G_i||^2 = f_i^2 ||G_i||^2.
            "clipped_grad_norm": tf.sqrt(tf.add_n(post_squares)) if post_squares else pre,
            "threshold": tf.sqrt(tf.add_n(bound_squares)) if bound_squares else tf.constant(math.inf),
            "clipped_fraction": tf.add_n(hits) / float(units) if hits else tf.constant(0.0),
        }
        return clipped, stats

    def get_config(self) -> dict[str, Any]:
        return {"clipping": self.clipping, "eps": self.eps, "exclude": list(self.exclude)}


def _unit_count(variable: keras.Variable) -> int:
    shape = tuple(variable.shape)
    return int(shape[-1]) if len(shape) >= 2 else 1

"""Adaptive gradient clipping (AGC): each unit's gradient against its weight norm."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import keras
from keras import ops as K

from keras_clip import ops
from keras_clip.strategies import _validation
from keras_clip.strategies._paths import matches, path_of, patterns_arg, warn_unmatched
from keras_clip.strategies.base import ClipStrategy, Stats

Axes = int | Sequence[int] | None
# MultiHeadAttention's query/key/value kernels are (in, heads, dim): one unit per (head, dim) pair.
_PER_HEAD = ("*query/kernel", "*key/kernel", "*value/kernel")
# Their biases (heads, dim) are one unit, as a Dense bias is.
_PER_HEAD_BIAS = ("*query/bias", "*key/bias", "*value/bias")


def unit_axes(path: str, shape: Sequence[int], overrides: Mapping[str, Axes] | None = None) -> tuple[int, ...]:
    """The axes AGC's unit norms run over for one variable (the unit is what the other axes index).

    The first `overrides` pattern matching `path` decides. Otherwise: a rank-3
    `query`, `key` or `value` kernel of a `MultiHeadAttention` (`(in, heads,
    dim)`) reduces axis 0 only, one unit per (head, dim) pair, and its bias
    `(heads, dim)` is one unit; any other rank >= 2 tensor reduces all axes
    but the last, one unit per output unit (Dense `(in, out)`, Conv
    `(*kernel, in, out)`, the attention output kernel `(heads, dim, out)`);
    a tensor of rank <= 1 (a bias) is one unit.

    Args:
        path: String. The variable's path, e.g. `"mha/query/kernel"`.
        shape: Sequence of int. The variable's shape.
        overrides: Dict mapping str to int, sequence of int or None.
            `fnmatch` patterns to the axes to reduce; None means the whole
            tensor.

    Raises:
        ValueError: If an override names an axis the variable does not have.
    """
    rank = len(shape)
    for pattern, axes in (overrides or {}).items():
        if matches(path, (pattern,)):
            return tuple(range(rank)) if axes is None else ops.canonical_axes(axes, rank)
    if rank == 3 and matches(path, _PER_HEAD):
        return (0,)
    if rank == 2 and matches(path, _PER_HEAD_BIAS):
        return (0, 1)
    return ops.default_unit_axes(rank)


def unitwise_factor(
    grad: ops.Gradient, weight: Any, clipping: float, eps: float, axes: tuple[int, ...] | None = None
) -> tuple[Any, Stats]:
    """AGC for one gradient: the factor bounding each unit's norm by `clipping * max(||W_i||, eps)`.

    Args:
        grad: Tensor or IndexedSlices (deduplicated). For slices whose units
            span the rows (axis 0 reduced) the norm runs over the rows present
            (the others are zero), which equals the dense unit norm; for units
            within a row, each row present is bounded by its own weights.
        weight: Tensor. The variable's value.
        clipping: Float. The clipping factor lambda.
        eps: Float. Floor on the weight norm (zero-initialised biases).
        axes: Tuple of int or None. The axes each unit's norm runs over
            (`unit_axes`); None for the default, all axes but the last.

    Returns:
        `(factor, parts)`: the per-unit factor (it broadcasts against the
        gradient's values; `ops.scale(grad, factor)` is the clipped
        gradient) and float32 scalars
        `pre_squares` and `post_squares` (its squared L2 norm before and after),
        `bound_squares` (sum of the squared unit bounds) and `clipped_units`
        (how many units were clipped).
    """
    values = ops.values_of(grad)
    g_norm = ops.unitwise_norm(values, axes)
    w_norm = ops.unitwise_norm(weight, axes)
    if ops.is_slices(grad) and axes is not None and 0 not in axes:
        w_norm = ops.gather_rows(w_norm, grad)  # One unit per row: the bounds of the rows present.
    bound = clipping * K.maximum(w_norm, eps)
    trigger = g_norm >= bound
    factor = K.where(trigger, bound / K.maximum(g_norm, 1e-6), K.ones_like(g_norm))
    parts = {
        # Both from the unit norms: the gradient is read once.
        "pre_squares": K.sum(K.square(g_norm)),
        "post_squares": K.sum(K.square(factor * g_norm)),
        "bound_squares": K.sum(K.square(bound)),
        "clipped_units": K.sum(K.cast(trigger, "float32")),
    }
    return factor, parts


@keras.saving.register_keras_serializable(package="keras_clip")
class AdaptiveGradClip(ClipStrategy):
    """Adaptive gradient clipping (AGC): unit-wise, relative to the weight norm.

    For every unit `i`, with `bound_i = clipping * max(||W_i||, eps)`:
    if `||G_i|| >= bound_i` then `G_i <- G_i * bound_i / max(||G_i||, 1e-6)`.
    The threshold follows the weights, so one `clipping` factor fits every
    layer and needs no tuning to the gradient's scale.

    A unit is chosen per layer kind (`unit_axes`): one output unit (a slice
    along the last axis) of a Dense `(in, out)`, Conv `(*kernel, in, out)`
    or attention output `(heads, dim, out)` kernel; one (head, dim) pair of a
    `MultiHeadAttention` query, key or value kernel `(in, heads, dim)`; the
    whole tensor for a bias or scalar. `axis` overrides the rule by path
    pattern.

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
        axis: Dict mapping str to int, sequence of int or None, or None.
            Variable path patterns to the axes a unit's norm runs over (None:
            the whole tensor is one unit), for layers the default rule does
            not know; the first matching pattern wins.

    Example:

    ```python
    agc = keras_clip.AdaptiveGradClip(0.01, exclude=["classifier/*"], axis={"my_einsum/kernel": 0})
    model.compile(optimizer="sgd", loss="mse", clipping=agc)
    ```

    References:
        Brock, De, Smith, Simonyan. [High-Performance Large-Scale Image
        Recognition Without Normalization](https://arxiv.org/abs/2102.06171),
        2021.
    """

    needs_variables = True

    def __init__(
        self,
        clipping: float,
        eps: float = 1e-3,
        exclude: str | Sequence[str] = (),
        axis: Mapping[str, int | Sequence[int] | None] | None = None,
    ) -> None:
        super().__init__()
        self.clipping = _validation.positive_finite("clipping", clipping)
        self.eps = _validation.positive_finite("eps", eps)
        self.exclude = patterns_arg("exclude", exclude)
        self.axis = _axis_arg(axis)

    def build(self, variables: Sequence[Any]) -> None:
        """Checks the `exclude` and `axis` patterns against the variables (warns once)."""
        if not self.built:
            warn_unmatched(type(self).__name__, [*self.exclude, *self.axis], variables)
        super().build(variables)

    def rescale_present(self, grads: list[ops.Gradient], variables: list[Any]) -> tuple[list[Any], Stats]:
        factors, pre_squares, post_squares, bound_squares, hits, units = [], [], [], [], [], 0
        for grad, variable in zip(grads, variables):
            path = path_of(variable)
            if matches(path, self.exclude):
                square = ops.sum_of_squares(grad)
                factors.append(None)
                pre_squares.append(square)
                post_squares.append(square)
                continue
            axes = unit_axes(path, tuple(variable.shape), self.axis)
            factor, parts = unitwise_factor(grad, K.convert_to_tensor(variable), self.clipping, self.eps, axes)
            factors.append(factor)
            pre_squares.append(parts["pre_squares"])
            post_squares.append(parts["post_squares"])
            bound_squares.append(parts["bound_squares"])
            hits.append(parts["clipped_units"])
            units += math.prod(int(d) for i, d in enumerate(variable.shape) if i not in axes)
        pre = ops.root_sum_squares(pre_squares)
        stats = {
            "grad_norm": pre,
            # Derived from the unit norms already measured: ||f_i G_i||^2 = f_i^2 ||G_i||^2.
            "clipped_grad_norm": ops.root_sum_squares(post_squares),
            "threshold": ops.root_sum_squares(bound_squares) if bound_squares else ops.constant(math.inf),
            "clipped_fraction": ops.add_n(hits) / float(units) if hits else ops.constant(0.0),
        }
        return factors, stats

    def get_config(self) -> dict[str, Any]:
        return {"clipping": self.clipping, "eps": self.eps, "exclude": list(self.exclude), "axis": dict(self.axis)}


def _axis_arg(value: Any) -> dict[str, int | list[int] | None]:
    """Validates `axis`: a dict of path patterns to an int, a sequence of ints or None."""
    if value is None:
        return {}
    message = (
        "`axis` must be a dict mapping variable path patterns (str) to the axes to reduce "
        f"(an int, a sequence of ints, or None for the whole tensor). Received: axis={value!r}"
    )
    if not isinstance(value, Mapping) or not all(isinstance(p, str) for p in value):
        raise TypeError(message)
    result: dict[str, int | list[int] | None] = {}
    for pattern, axes in value.items():
        if axes is None or (isinstance(axes, int) and not isinstance(axes, bool)):
            result[pattern] = axes
        elif isinstance(axes, Sequence) and all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
            result[pattern] = list(axes)
        else:
            raise TypeError(message)
    return result

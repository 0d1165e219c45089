"""Pure numerics for gradient clipping.

Every function here takes and returns TensorFlow values, works eagerly, inside
`tf.function` and under XLA, and accepts `tf.IndexedSlices` (the gradient of an
`Embedding`) without turning it into a dense tensor. Norms are accumulated in
float32 even for float16/bfloat16 gradients so that squares do not overflow.

Example:

```python
import tensorflow as tf
from keras_clip import ops

g = [tf.constant([3.0, 4.0]), tf.constant([[12.0]])]
ops.global_norm(g)                  # 13.0
ops.scale(g[0], tf.constant(0.5))   # [1.5, 2.0]
```
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import tensorflow as tf

try:  # Private modules, but the only way to tell that ops are being built for XLA.
    from tensorflow.python.framework import ops as _tf_ops
    from tensorflow.python.ops import control_flow_util as _control_flow_util
except ImportError:  # pragma: no cover - moved in some TensorFlow version
    _control_flow_util = None

Gradient = Union[tf.Tensor, tf.IndexedSlices]
NormType = Union[int, float, str]

_NORM_TYPES = (1.0, 2.0, math.inf)
# Under XLA a sum of squares first sums rows of this many entries (see `sum_of_squares`).
_ROW = 8


def canonical_norm_type(norm_type: NormType, name: str = "norm_type") -> float:
    """Validates a norm type and returns it as `1.0`, `2.0` or `math.inf`.

    Args:
        norm_type: Int, float or str. `1`, `2`, `"inf"` or `float("inf")`.
        name: String. Argument name used in the error message.

    Returns:
        The norm type as a float.

    Raises:
        ValueError: If `norm_type` is not one of the supported norms.
    """
    value = norm_type
    if isinstance(value, str):
        value = math.inf if value.strip().lower() in ("inf", "infinity") else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (float(value) not in _NORM_TYPES):
        raise ValueError(
            f"`{name}` must be one of 1, 2 or 'inf' (float('inf') is accepted). Received: {name}={norm_type!r}"
        )
    return float(value)


def values_of(grad: Gradient) -> tf.Tensor:
    """Returns the tensor holding a gradient's numbers (`values` for slices)."""
    return grad.values if isinstance(grad, tf.IndexedSlices) else grad


def dense_size(grad: Gradient) -> tf.Tensor:
    """How many entries the gradient's dense value has (float32; all rows for slices)."""
    shape = grad.dense_shape if isinstance(grad, tf.IndexedSlices) else tf.shape(grad)
    return tf.cast(tf.reduce_prod(shape), tf.float32)


def with_values(grad: Gradient, values: tf.Tensor) -> Gradient:
    """Returns `grad` with its numbers replaced by `values` (same kind)."""
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(values, grad.indices, grad.dense_shape)
    return values


def deduplicate(grad: Gradient) -> Gradient:
    """Sums the rows of an `IndexedSlices` that share an index.

    `tf.IndexedSlices` may list an index several times (a token seen twice in a
    batch); its dense value is the sum of those rows, so norms and element-wise
    clips must see the summed rows. Shapes stay static (sort + segment sum, no
    `tf.unique`), so this compiles under XLA. Unused trailing rows are zero and
    point at a valid index, which leaves the dense value unchanged. Dense
    tensors are returned as they are.

    Args:
        grad: Tensor or IndexedSlices.

    Returns:
        A gradient with the same dense value and no repeated index.
    """
    if not isinstance(grad, tf.IndexedSlices):
        return grad
    indices = grad.indices
    count = tf.shape(indices)[0]
    order = tf.argsort(indices, stable=True)
    sorted_indices = tf.gather(indices, order)
    is_new = tf.concat(
        [tf.zeros([1], tf.int32), tf.cast(sorted_indices[1:] != sorted_indices[:-1], tf.int32)],
        axis=0,
    )[:count]
    segment = tf.cumsum(is_new)
    values = tf.math.unsorted_segment_sum(tf.gather(grad.values, order), segment, count)
    first = tf.math.unsorted_segment_max(sorted_indices, segment, count)
    used = tf.range(count) <= tf.reduce_max(segment)
    fallback = tf.gather(sorted_indices, tf.zeros([count], tf.int32))
    new_indices = tf.where(used, first, fallback)
    return tf.IndexedSlices(values, new_indices, grad.dense_shape)


def sum_of_squares(grad: Gradient) -> tf.Tensor:
    """Squared L2 norm of one gradient, as a float32 scalar.

    Traced for XLA, the entries are summed in two stages: rows of 8 first,
    then the row sums (the same sum, up to float32 rounding). XLA:CPU does not fuse
    an elementwise square into a full reduction: `reduce_sum(square(g))`
    writes `g**2` to memory, then reduces it through 32 x 32 reduce-windows.
    Summing rows of 8 is one loop fusion (square and add, the gradient read
    once) and the row sums, an eighth of the size, go to a library reduction;
    the step's norm costs about a third (`benchmarks/profile_step.py`). The
    `abs` between the stages, a no-op on sums of squares (NaN and inf pass
    through), keeps XLA from merging them back into one reduction. Outside
    XLA, TensorFlow's own kernels are faster with one reduction.

    Args:
        grad: Tensor or IndexedSlices (already deduplicated).
    """
    values = tf.cast(values_of(grad), tf.float32)
    if _in_xla() and _divisible(values.shape, _ROW):
        rows = tf.reduce_sum(tf.square(tf.reshape(values, [-1, _ROW])), axis=1)
        return tf.reduce_sum(tf.abs(rows))
    return tf.reduce_sum(tf.square(values))


def _divisible(shape: tf.TensorShape, row: int) -> bool:
    # Fully known size, or (slices) an unknown number of rows of a known width.
    size = shape.num_elements() if shape.is_fully_defined() else (shape[-1] if shape.rank else None)
    return bool(size) and size % row == 0


def _in_xla() -> bool:
    """Whether the ops being built will be compiled by XLA (e.g. in a `jit_compile=True` function)."""
    if _control_flow_util is None:
        return False
    return bool(_control_flow_util.GraphOrParentsInXlaContext(_tf_ops.get_default_graph()))


def norm(grad: Gradient, norm_type: float = 2.0) -> tf.Tensor:
    """The 1-, 2- or inf-norm of one gradient as a flat vector (float32).

    Args:
        grad: Tensor or IndexedSlices (already deduplicated).
        norm_type: Float. `1.0`, `2.0` or `math.inf`.
    """
    values = tf.abs(tf.cast(values_of(grad), tf.float32))
    if norm_type == 1.0:
        return tf.reduce_sum(values)
    if norm_type == math.inf:
        # The maximum with 0 turns the -inf of an empty tensor into 0.
        return tf.maximum(tf.reduce_max(values), 0.0)
    return tf.sqrt(tf.reduce_sum(tf.square(values)))


def combine_norms(norms: Sequence[tf.Tensor], norm_type: float = 2.0) -> tf.Tensor:
    """Combines per-tensor norms into the norm of all tensors as one vector.

    For L2, the norms are divided by the largest before squaring, so norms
    above ~1.8e19 combine without overflow (the inputs are scalars: free).

    Args:
        norms: Sequence of float32 scalars, each a `norm(g, norm_type)`.
        norm_type: Float. `1.0`, `2.0` or `math.inf`.
    """
    if not norms:
        return tf.constant(0.0)
    stacked = tf.stack(list(norms))
    if norm_type == 1.0:
        return tf.reduce_sum(stacked)
    if norm_type == math.inf:
        return tf.reduce_max(stacked)
    largest = tf.reduce_max(stacked)
    safe = tf.where(tf.math.is_finite(largest) & (largest > 0), largest, tf.ones_like(largest))
    combined = safe * tf.sqrt(tf.reduce_sum(tf.square(stacked / safe)))
    # NaN anywhere stays NaN (reduce_max may drop it); inf stays inf.
    return tf.where(tf.reduce_any(tf.math.is_nan(stacked)), tf.constant(math.nan), combined)


def global_norm(grads: Sequence[Gradient | None], norm_type: float = 2.0) -> tf.Tensor:
    """Norm of all gradients concatenated into one vector; `None` is skipped.

    The L2 norm is overflow-safe (see `l2_norms`).

    Args:
        grads: Sequence of Tensor, IndexedSlices or None.
        norm_type: Float. `1.0`, `2.0` or `math.inf`.

    Returns:
        A float32 scalar.
    """
    present = [deduplicate(g) for g in grads if g is not None]
    if norm_type == 2.0:
        return l2_norms(present)[1]
    return combine_norms([norm(g, norm_type) for g in present], norm_type)


def root_sum_squares(squares: Sequence[tf.Tensor]) -> tf.Tensor:
    """`sqrt(sum(squares))`, 0 for an empty sequence: an L2 norm from squared parts.

    Args:
        squares: Sequence of float32 scalars (or broadcastable tensors), each a
            squared L2 norm of a part of one vector.
    """
    return tf.sqrt(tf.add_n(list(squares))) if squares else tf.constant(0.0)


def l2_norms(grads: Sequence[Gradient]) -> tuple[list[tf.Tensor], tf.Tensor]:
    """The L2 norm of each gradient and of all of them, overflow-safe.

    A float32 sum of squares overflows once an entry passes ~1.8e19, although
    the norm itself (up to ~3.4e38) is representable. The plain sums are
    computed first; only when their total is `inf` are the norms computed
    again from the gradients divided by their largest magnitude, inside a
    `tf.cond`, so the usual step pays one scalar test (XLA runs only the
    branch taken). A gradient holding an `inf` still has norm `inf`, and one
    holding a NaN norm NaN.

    Args:
        grads: Sequence of Tensor or IndexedSlices (already deduplicated, no
            None).

    Returns:
        `(norms, total)`: one float32 scalar per gradient and the global L2
        norm.
    """
    grads = list(grads)
    if not grads:
        return [], tf.constant(0.0)
    squares = [sum_of_squares(g) for g in grads]
    total = tf.add_n(squares)

    def plain() -> list[tf.Tensor]:
        return [tf.sqrt(s) for s in squares] + [tf.sqrt(total)]

    def rescaled() -> list[tf.Tensor]:
        norms = [_rescaled_norm(g) for g in grads]
        return norms + [combine_norms(norms)]

    result = tf.cond(tf.math.is_inf(total), rescaled, plain)
    return list(result[:-1]), result[-1]


def _rescaled_norm(grad: Gradient) -> tf.Tensor:
    """`m * ||g / m||` with `m = max |g|`: the L2 norm without overflowing squares."""
    values = tf.abs(tf.cast(values_of(grad), tf.float32))
    largest = tf.reduce_max(values)  # -inf when empty: then the plain formula gives 0.
    safe = tf.where(tf.math.is_finite(largest) & (largest > 0), largest, tf.ones_like(largest))
    rescaled = safe * tf.sqrt(tf.reduce_sum(tf.square(values / safe)))
    # An inf entry gives inf (inf / 1 squared); zero and NaN pass through the plain formula.
    return tf.where(largest > 0, rescaled, tf.sqrt(tf.reduce_sum(tf.square(values))))


def clip_factor(current_norm: tf.Tensor, max_norm: tf.Tensor | float) -> tf.Tensor:
    """The factor that brings `current_norm` down to `max_norm`, else 1.

    Equals `max_norm / current_norm` when `current_norm > max_norm` and 1
    otherwise (a zero or NaN norm gives 1, so nothing is divided by zero and a
    NaN is left for the non-finite policy to see).

    Args:
        current_norm: Float32 scalar tensor.
        max_norm: Float or float32 scalar tensor.
    """
    max_norm = tf.cast(max_norm, current_norm.dtype)
    safe = tf.where(current_norm > max_norm, current_norm, tf.ones_like(current_norm))
    return tf.where(current_norm > max_norm, max_norm / safe, tf.ones_like(current_norm))


def scale(grad: Gradient, factor: tf.Tensor) -> Gradient:
    """Multiplies a gradient by a factor, keeping its kind and dtype.

    float16 and bfloat16 gradients are multiplied in float32 and cast back:
    a factor below float16's smallest normal number (~6e-5) would otherwise
    lose precision, and one below ~3e-8 become 0, although the product is
    representable.

    Args:
        grad: Tensor or IndexedSlices.
        factor: Float tensor, a scalar or broadcastable against the
            gradient's values (per-unit factors).
    """
    values = values_of(grad)
    compute = tf.float32 if values.dtype in (tf.float16, tf.bfloat16) else values.dtype
    product = tf.cast(values, compute) * tf.cast(factor, compute)
    return with_values(grad, tf.cast(product, values.dtype))


def clip_values(grad: Gradient, clip_value: tf.Tensor | float) -> Gradient:
    """Clips every entry of a gradient to `[-clip_value, clip_value]`.

    Args:
        grad: Tensor or IndexedSlices (deduplicate slices first).
        clip_value: Positive float.
    """
    values = values_of(grad)
    bound = tf.cast(clip_value, values.dtype)
    return with_values(grad, tf.clip_by_value(values, -bound, bound))


def zero_nonfinite(grad: Gradient) -> Gradient:
    """Replaces NaN and +-inf entries of a gradient by zero."""
    values = values_of(grad)
    return with_values(grad, tf.where(tf.math.is_finite(values), values, tf.zeros_like(values)))


def all_finite(grads: Sequence[Gradient | None]) -> tf.Tensor:
    """True when no gradient holds a NaN or an infinity (a boolean scalar)."""
    checks = [tf.reduce_all(tf.math.is_finite(values_of(g))) for g in grads if g is not None]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def default_unit_axes(rank: int) -> tuple[int, ...]:
    """The axes a unit's norm runs over by default: all but the last (rank >= 2), else all.

    One unit is one output unit: a slice along the last axis of a Dense
    `(in, out)` or Conv `(*kernel, in, out)` kernel; a bias, vector or scalar
    is one unit.
    """
    return tuple(range(rank - 1)) if rank >= 2 else tuple(range(rank))


def canonical_axes(axis: int | Sequence[int], rank: int) -> tuple[int, ...]:
    """Axes as sorted, distinct, non-negative ints for a tensor of this rank.

    Raises:
        ValueError: If an axis is outside `[-rank, rank)`.
    """
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    if not all(-rank <= a < rank for a in axes):
        raise ValueError(f"`axis` must hold axes of a tensor of rank {rank}. Received: axis={axis!r}")
    return tuple(sorted({a % rank for a in axes}))


def unitwise_norm(x: tf.Tensor, axis: int | Sequence[int] | None = None) -> tf.Tensor:
    """L2 norm of each unit, broadcastable against `x` (float32).

    Args:
        x: Tensor.
        axis: Int, sequence of int or None. The axes each unit's norm runs
            over (the unit is what the other axes index). None (default):
            `default_unit_axes(rank)`, all axes but the last for rank >= 2,
            the whole tensor for rank <= 1.

    Under XLA, with the default axes, each unit's entries are summed in groups
    of 8 rows first, for the reason given in `sum_of_squares`.
    """
    x = tf.cast(x, tf.float32)
    rank = x.shape.rank
    default = default_unit_axes(rank)
    axes = default if axis is None else canonical_axes(axis, rank)
    if rank <= 1 and axes == default:
        return tf.sqrt(sum_of_squares(x))
    units, rows = x.shape[-1], x.shape[:-1].num_elements()
    if axes == default and _in_xla() and units is not None and rows and rows % _ROW == 0:
        groups = tf.reduce_sum(tf.square(tf.reshape(x, [-1, _ROW, units])), axis=1)
        squares = tf.reduce_sum(tf.abs(groups), axis=0)
        return tf.sqrt(tf.reshape(squares, [1] * (rank - 1) + [units]))
    return tf.sqrt(tf.reduce_sum(tf.square(x), axis=list(axes), keepdims=True))

"""Pure numerics for gradient clipping, written once in `keras.ops`.

Every function here takes and returns the active backend's tensors
(TensorFlow, JAX or PyTorch), works eagerly and compiled (`tf.function`,
XLA, `jax.jit`). On TensorFlow it also accepts `tf.IndexedSlices` (the
gradient of an `Embedding`) without turning it into a dense tensor; that
path, and TensorFlow's XLA reduction layout, live in `keras_clip._tf_ops`,
imported only on TensorFlow. Norms are accumulated in float32 even for
float16/bfloat16 gradients so that squares do not overflow.

Example:

```python
from keras import ops as K
from keras_clip import ops

g = [K.convert_to_tensor([3.0, 4.0]), K.convert_to_tensor([[12.0]])]
ops.global_norm(g)                  # 13.0
ops.scale(g[0], 0.5)                # [1.5, 2.0]
```
"""

from __future__ import annotations

import math
from typing import Any, Sequence, Union

import keras
from keras import ops as K

if keras.backend.backend() == "tensorflow":
    from keras_clip import _tf_ops
else:
    _tf_ops = None

# A backend tensor, or on TensorFlow a `tf.IndexedSlices`.
Gradient = Any
Tensor = Any
NormType = Union[int, float, str]

_NORM_TYPES = (1.0, 2.0, math.inf)


def wide(dtype: str) -> str:
    """`"int64"`/`"float64"` where the backend has them, else the 32-bit type.

    JAX runs without 64-bit types unless `jax_enable_x64` is set; counters and
    the recorder's buffer then use int32 and float32.
    """
    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            return {"int64": "int32", "float64": "float32"}.get(dtype, dtype)
    return dtype


def is_slices(grad: Gradient) -> bool:
    """Whether a gradient is a `tf.IndexedSlices` (always False off TensorFlow)."""
    return _tf_ops is not None and _tf_ops.is_slices(grad)


def gather_rows(x: Tensor, grad: Gradient) -> Tensor:
    """The rows of `x` that a `tf.IndexedSlices` gradient holds."""
    return _tf_ops.gather_rows(x, grad)


def constant(value: float, dtype: str = "float32") -> Tensor:
    """A scalar tensor of the active backend."""
    return K.convert_to_tensor(value, dtype=dtype)


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


def values_of(grad: Gradient) -> Tensor:
    """Returns the tensor holding a gradient's numbers (`values` for slices)."""
    return grad.values if is_slices(grad) else grad


def dense_size(grad: Gradient) -> Tensor:
    """How many entries the gradient's dense value has (float32; all rows for slices)."""
    if is_slices(grad):
        return _tf_ops.dense_size(grad)
    return K.cast(K.size(grad), "float32")


def with_values(grad: Gradient, values: Tensor) -> Gradient:
    """Returns `grad` with its numbers replaced by `values` (same kind)."""
    return _tf_ops.with_values(grad, values) if is_slices(grad) else values


def densify(grad: Gradient, shape: Sequence[int]) -> Tensor:
    """The dense value of a gradient of a variable of this shape (slices summed into rows)."""
    return _tf_ops.densify(grad, shape[0]) if is_slices(grad) else grad


def deduplicate(grad: Gradient) -> Gradient:
    """Sums the rows of an `IndexedSlices` that share an index.

    `tf.IndexedSlices` may list an index several times (a token seen twice in a
    batch); its dense value is the sum of those rows, so norms and element-wise
    clips must see the summed rows. Shapes stay static (sort + segment sum, no
    `tf.unique`), so this compiles under XLA. Unused trailing rows are zero and
    point at a valid index, which leaves the dense value unchanged. Slices
    that this function returned (or `with_values` made from them) are returned
    as they are, so a gradient that the optimizer, a strategy and each `Chain`
    member de-duplicate in turn is sorted once. Dense tensors (every gradient
    on JAX and PyTorch) are returned as they are.

    Args:
        grad: Tensor or IndexedSlices.

    Returns:
        A gradient with the same dense value and no repeated index.
    """
    return _tf_ops.deduplicate(grad) if is_slices(grad) else grad


def sum_of_squares(grad: Gradient) -> Tensor:
    """Squared L2 norm of one gradient, as a float32 scalar.

    On TensorFlow under XLA the entries are summed in two stages, rows of 8
    first (the same sum up to float32 rounding, about a third of the cost:
    see `keras_clip._tf_ops.row_sum_of_squares`).

    Args:
        grad: Tensor or IndexedSlices (already deduplicated).
    """
    values = K.cast(values_of(grad), "float32")
    if _tf_ops is not None:
        rows = _tf_ops.row_sum_of_squares(values)
        if rows is not None:
            return rows
    return K.sum(K.square(values))


def norm(grad: Gradient, norm_type: float = 2.0) -> Tensor:
    """The 1-, 2- or inf-norm of one gradient as a flat vector (float32).

    Args:
        grad: Tensor or IndexedSlices (already deduplicated).
        norm_type: Float. `1.0`, `2.0` or `math.inf`.
    """
    values = K.abs(K.cast(values_of(grad), "float32"))
    if norm_type == 1.0:
        return K.sum(values)
    if norm_type == math.inf:
        if _static_size(values) == 0:
            return constant(0.0)
        # The maximum with 0 turns the -inf of an empty tensor into 0.
        return K.maximum(K.max(values), 0.0)
    return K.sqrt(K.sum(K.square(values)))


def _static_size(x: Tensor) -> int | None:
    shape = tuple(x.shape)
    return None if any(d is None for d in shape) else math.prod(shape)


def add_n(scalars: Sequence[Tensor]) -> Tensor:
    """The sum of scalars, left to right (as `tf.add_n`)."""
    total = scalars[0]
    for s in scalars[1:]:
        total = total + s
    return total


def combine_norms(norms: Sequence[Tensor], norm_type: float = 2.0) -> Tensor:
    """Combines per-tensor norms into the norm of all tensors as one vector.

    For L2, the norms are divided by the largest before squaring, so norms
    above ~1.8e19 combine without overflow (the inputs are scalars: free).

    Args:
        norms: Sequence of float32 scalars, each a `norm(g, norm_type)`.
        norm_type: Float. `1.0`, `2.0` or `math.inf`.
    """
    if not norms:
        return constant(0.0)
    stacked = K.stack(list(norms))
    if norm_type == 1.0:
        return K.sum(stacked)
    if norm_type == math.inf:
        return K.max(stacked)
    largest = K.max(stacked)
    safe = K.where(K.isfinite(largest) & (largest > 0), largest, K.ones_like(largest))
    combined = safe * K.sqrt(K.sum(K.square(stacked / safe)))
    # NaN anywhere stays NaN (a max may drop it); inf stays inf.
    return K.where(K.any(K.isnan(stacked)), constant(math.nan), combined)


def global_norm(grads: Sequence[Gradient | None], norm_type: float = 2.0) -> Tensor:
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


def root_sum_squares(squares: Sequence[Tensor]) -> Tensor:
    """`sqrt(sum(squares))`, 0 for an empty sequence: an L2 norm from squared parts.

    Args:
        squares: Sequence of float32 scalars (or broadcastable tensors), each a
            squared L2 norm of a part of one vector.
    """
    return K.sqrt(add_n(list(squares))) if squares else constant(0.0)


def l2_norms(grads: Sequence[Gradient]) -> tuple[list[Tensor], Tensor]:
    """The L2 norm of each gradient and of all of them, overflow-safe.

    A float32 sum of squares overflows once an entry passes ~1.8e19, although
    the norm itself (up to ~3.4e38) is representable. The plain sums are
    computed first; only when their total is `inf` does a `keras.ops.cond`
    compute, for each gradient whose own sum overflowed, the sum of squares of
    the gradient times 2**-64 (finite for every norm that float32 can hold;
    entries too small to survive the factor are too small, beside one past
    ~1.8e19, to change the norm), and combine the norms without squaring them
    again. So the usual step pays one scalar test (XLA runs only the branch
    taken), and the branch it skips holds one reduction per gradient and no
    full-size temporary (on XLA:CPU the untaken conditional still costs about
    half a percent of a step: see the Backends page). A gradient holding an `inf`
    still has norm `inf`, and one holding a NaN norm NaN.

    Args:
        grads: Sequence of Tensor or IndexedSlices (already deduplicated, no
            None).

    Returns:
        `(norms, total)`: one float32 scalar per gradient and the global L2
        norm.
    """
    grads = list(grads)
    if not grads:
        return [], constant(0.0)
    squares = [sum_of_squares(g) for g in grads]
    total = add_n(squares)
    overflow = K.isinf(total)
    # The factor depends on the data, so XLA cannot fold `(g * c)**2` into `g**2 * c**2`
    # (which overflows again); it is 2**-64 wherever the branch below runs.
    factor = K.where(overflow, constant(2.0**-64), constant(1.0))

    def plain() -> list[Tensor]:
        return [K.sqrt(s) for s in squares] + [K.sqrt(total)]

    def rescaled() -> list[Tensor]:
        norms = [K.where(K.isinf(s), _prescaled_norm(g, factor), K.sqrt(s)) for g, s in zip(grads, squares)]
        return norms + [combine_norms(norms)]

    result = K.cond(overflow, rescaled, plain)
    return list(result[:-1]), result[-1]


def _prescaled_norm(grad: Gradient, factor: Tensor) -> Tensor:
    """`||g * factor|| / factor`: the L2 norm of a gradient whose plain sum of squares overflowed."""
    values = K.cast(values_of(grad), "float32")
    return K.sqrt(K.sum(K.square(values * factor))) / factor


def clip_factor(current_norm: Tensor, max_norm: Tensor | float) -> Tensor:
    """The factor that brings `current_norm` down to `max_norm`, else 1.

    Equals `max_norm / current_norm` when `current_norm > max_norm` and 1
    otherwise (a zero or NaN norm gives 1, so nothing is divided by zero and a
    NaN is left for the non-finite policy to see).

    Args:
        current_norm: Float32 scalar tensor.
        max_norm: Float or float32 scalar tensor.
    """
    max_norm = K.cast(max_norm, current_norm.dtype)
    safe = K.where(current_norm > max_norm, current_norm, K.ones_like(current_norm))
    return K.where(current_norm > max_norm, max_norm / safe, K.ones_like(current_norm))


def scale(grad: Gradient, factor: Tensor | float) -> Gradient:
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
    dtype = keras.backend.standardize_dtype(values.dtype)
    compute = "float32" if dtype in ("float16", "bfloat16") else dtype
    product = K.cast(values, compute) * K.cast(factor, compute)
    return with_values(grad, K.cast(product, dtype))


def clip_values(grad: Gradient, clip_value: Tensor | float) -> Gradient:
    """Clips every entry of a gradient to `[-clip_value, clip_value]`.

    Args:
        grad: Tensor or IndexedSlices (deduplicate slices first).
        clip_value: Positive float.
    """
    values = values_of(grad)
    bound = K.cast(clip_value, values.dtype)
    return with_values(grad, K.minimum(K.maximum(values, -bound), bound))


def zero_nonfinite(grad: Gradient) -> Gradient:
    """Replaces NaN and +-inf entries of a gradient by zero."""
    values = values_of(grad)
    return with_values(grad, K.where(K.isfinite(values), values, K.zeros_like(values)))


def all_finite(grads: Sequence[Gradient | None]) -> Tensor:
    """True when no gradient holds a NaN or an infinity (a boolean scalar)."""
    checks = [K.all(K.isfinite(values_of(g))) for g in grads if g is not None]
    return K.all(K.stack(checks)) if checks else K.convert_to_tensor(True)


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


def unitwise_norm(x: Tensor, axis: int | Sequence[int] | None = None) -> Tensor:
    """L2 norm of each unit, broadcastable against `x` (float32).

    Args:
        x: Tensor.
        axis: Int, sequence of int or None. The axes each unit's norm runs
            over (the unit is what the other axes index). None (default):
            `default_unit_axes(rank)`, all axes but the last for rank >= 2,
            the whole tensor for rank <= 1.

    On TensorFlow under XLA, with the default axes, each unit's entries are
    summed in groups of 8 rows first, for the reason given in `sum_of_squares`.
    """
    x = K.cast(x, "float32")
    rank = len(x.shape)
    default = default_unit_axes(rank)
    axes = default if axis is None else canonical_axes(axis, rank)
    if rank <= 1 and axes == default:
        return K.sqrt(sum_of_squares(x))
    if axes == default and _tf_ops is not None:
        squares = _tf_ops.row_unit_squares(x, rank)
        if squares is not None:
            return K.sqrt(squares)
    return K.sqrt(K.sum(K.square(x), axis=list(axes), keepdims=True))

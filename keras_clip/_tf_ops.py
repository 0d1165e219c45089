"""The TensorFlow-only part of the numerics: `tf.IndexedSlices` and the XLA reduction layout.

Imported by `keras_clip.ops` only when Keras runs on TensorFlow; no other
backend has sparse gradients, and only TensorFlow's XLA lowering profits from
the row-sum layout (see `row_sum_of_squares`).
"""

from __future__ import annotations

import weakref
from typing import Any

import tensorflow as tf

try:  # Private modules, but the only way to tell that ops are being built for XLA.
    from tensorflow.python.framework import ops as _tf_ops
    from tensorflow.python.ops import control_flow_util as _control_flow_util
except ImportError:  # pragma: no cover - moved in some TensorFlow version
    _control_flow_util = None

# Under XLA a sum of squares first sums rows of this many entries (see `row_sum_of_squares`).
ROW = 8

# Slices known to list each index once: `deduplicate`'s results and slices with their numbers
# replaced (`with_values`). `deduplicate` returns these as they are, so a gradient that the
# optimizer, a strategy and each member of a `Chain` de-duplicate in turn is sorted once.
_UNIQUE: weakref.WeakSet = weakref.WeakSet()


def is_slices(grad: Any) -> bool:
    """Whether a gradient is a `tf.IndexedSlices`."""
    return isinstance(grad, tf.IndexedSlices)


def with_values(grad: tf.IndexedSlices, values: tf.Tensor) -> tf.IndexedSlices:
    """The slices with their numbers replaced by `values` (free of repeats if `grad` was)."""
    result = tf.IndexedSlices(values, grad.indices, grad.dense_shape)
    if grad in _UNIQUE:
        _UNIQUE.add(result)
    return result


def dense_size(grad: tf.IndexedSlices) -> tf.Tensor:
    """How many entries the dense value of the slices has (float32)."""
    return tf.cast(tf.reduce_prod(grad.dense_shape), tf.float32)


def deduplicate(grad: tf.IndexedSlices) -> tf.IndexedSlices:
    """Sums the rows of an `IndexedSlices` that share an index (see `keras_clip.ops.deduplicate`)."""
    if grad in _UNIQUE:
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
    result = tf.IndexedSlices(values, new_indices, grad.dense_shape)
    _UNIQUE.add(result)
    return result


def gather_rows(x: tf.Tensor, grad: tf.IndexedSlices) -> tf.Tensor:
    """The rows of `x` that the slices hold."""
    return tf.gather(x, grad.indices)


def densify(grad: Any, rows: int) -> tf.Tensor:
    """The dense value of a gradient (slices summed into `rows` rows)."""
    if is_slices(grad):
        return tf.math.unsorted_segment_sum(grad.values, grad.indices, num_segments=rows)
    return grad


def in_xla() -> bool:
    """Whether the ops being built will be compiled by XLA (e.g. in a `jit_compile=True` function)."""
    if _control_flow_util is None:
        return False
    return bool(_control_flow_util.GraphOrParentsInXlaContext(_tf_ops.get_default_graph()))


def divisible(shape: tf.TensorShape, row: int = ROW) -> bool:
    """Fully known size, or (slices) an unknown number of rows of a known width, divisible by `row`."""
    shape = tf.TensorShape(shape)
    size = shape.num_elements() if shape.is_fully_defined() else (shape[-1] if shape.rank else None)
    return bool(size) and size % row == 0


def row_sum_of_squares(values: tf.Tensor) -> tf.Tensor | None:
    """Under XLA, the sum of squares in two stages (rows of 8, then the row sums); else None.

    XLA:CPU does not fuse an elementwise square into a full reduction:
    `reduce_sum(square(g))` writes `g**2` to memory, then reduces it through
    32 x 32 reduce-windows. Summing rows of 8 is one loop fusion (square and
    add, the gradient read once) and the row sums, an eighth of the size, go to
    a library reduction; the step's norm costs about a third
    (`benchmarks/profile_step.py`). The `abs` between the stages, a no-op on
    sums of squares (NaN and inf pass through), keeps XLA from merging them
    back into one reduction. Outside XLA, TensorFlow's own kernels are faster
    with one reduction.
    """
    if not (in_xla() and divisible(values.shape)):
        return None
    rows = tf.reduce_sum(tf.square(tf.reshape(values, [-1, ROW])), axis=1)
    return tf.reduce_sum(tf.abs(rows))


def row_unit_squares(x: tf.Tensor, rank: int) -> tf.Tensor | None:
    """Under XLA, each unit's sum of squares (default axes) in groups of 8 rows; else None."""
    units, rows = x.shape[-1], x.shape[:-1].num_elements()
    if not (in_xla() and units is not None and rows and rows % ROW == 0):
        return None
    groups = tf.reduce_sum(tf.square(tf.reshape(x, [-1, ROW, units])), axis=1)
    squares = tf.reduce_sum(tf.abs(groups), axis=0)
    return tf.reshape(squares, [1] * (rank - 1) + [units])

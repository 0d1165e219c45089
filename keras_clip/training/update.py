"""How a clipped gradient reaches the optimizer: aggregation, unscaling, apply.

The model clips once, on the gradient of the whole (global) batch, after the
loss scale is removed. Keras's optimizer would otherwise all-reduce and unscale
inside `apply()`; the helpers here do those steps first and then hand the
optimizer a gradient it only has to apply.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, Sequence

import keras
import tensorflow as tf

from keras_clip import ops

LossScaleOptimizer = keras.optimizers.LossScaleOptimizer


def all_reduce(grads: Sequence[ops.Gradient | None]) -> list[ops.Gradient | None]:
    """Sums gradients across replicas (one all-reduce), a no-op on one device.

    Args:
        grads: Sequence of Tensor, IndexedSlices or None.

    Returns:
        The gradient of the global batch on every replica.
    """
    grads = list(grads)
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return grads
    positions = [i for i, g in enumerate(grads) if g is not None]
    reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in positions])
    for i, g in zip(positions, reduced):
        grads[i] = g
    return grads


def loss_scale(optimizer: keras.optimizers.Optimizer) -> tf.Tensor | float | None:
    """The factor the loss was multiplied by, or None when it was not."""
    if isinstance(optimizer, LossScaleOptimizer):
        return optimizer.dynamic_scale
    return optimizer.loss_scale_factor


def rescale(grads: Sequence[ops.Gradient | None], factor: Any, *, divide: bool) -> list[ops.Gradient | None]:
    """Divides (or multiplies) every gradient by a scalar loss-scale factor.

    Loss scales are powers of two, so dividing and multiplying back is exact.
    """
    if factor is None:
        return list(grads)
    factor = tf.convert_to_tensor(factor, tf.float32)
    factor = 1.0 / factor if divide else factor
    return [None if g is None else ops.scale(g, factor) for g in grads]


class _ReducedGradients:
    """Counts the steps being traced whose gradients are already all-reduced.

    MirroredStrategy traces each replica's step in its own thread, so the
    switch is a counter under a lock, not a flag that one thread could clear
    while another still needs it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0

    @property
    def active(self) -> bool:
        return self._depth > 0

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        with self._lock:
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1


_REDUCED = _ReducedGradients()


def gradients_reduced() -> bool:
    """True while a clipping model's step hands all-reduced gradients to an optimizer."""
    return _REDUCED.active


def _skip_reduction_when_reduced(optimizer: keras.optimizers.Optimizer) -> None:
    if getattr(optimizer, "_keras_clip_wrapped", False):
        return
    original = optimizer._all_reduce_sum_gradients

    def all_reduce_sum_gradients(grads_and_vars: Any) -> Any:
        return list(grads_and_vars) if _REDUCED.active else original(grads_and_vars)

    optimizer._all_reduce_sum_gradients = all_reduce_sum_gradients
    optimizer._keras_clip_wrapped = True


@contextlib.contextmanager
def apply_as_given(optimizer: keras.optimizers.Optimizer) -> Iterator[None]:
    """While tracing, the optimizer applies gradients without all-reducing them.

    The model already summed the gradients across replicas; Keras's optimizer
    would sum them again. Outside the model's step the optimizer all-reduces
    as usual, so it can still be shared with other code.
    """
    inner = optimizer.inner_optimizer if isinstance(optimizer, LossScaleOptimizer) else optimizer
    _skip_reduction_when_reduced(inner)
    with _REDUCED.entered():
        yield


def run_if(pred: tf.Tensor, fn: Callable[..., None], args: tuple = ()) -> None:
    """Runs `fn(*args)` (which updates variables) only where `pred` is true.

    Under a `tf.distribute` strategy that needs merge calls, the condition is
    taken in cross-replica context, as Keras's `LossScaleOptimizer` does,
    because a replica-context `cond` may not contain a merge call. `pred` must
    be identical on every replica (it is computed from all-reduced values).
    """
    if tf.distribute.has_strategy() and not tf.__internal__.distribute.strategy_supports_no_merge_call():

        def merge_fn(distribution: tf.distribute.Strategy, pred: Any, *args: Any) -> None:
            first = distribution.experimental_local_results(pred)[0]

            def apply() -> None:
                distribution.extended.call_for_each_replica(fn, args=args)

            tf.cond(first, apply, lambda: None)

        tf.distribute.get_replica_context().merge_call(merge_fn, args=(pred, *args))
    else:
        tf.cond(pred, lambda: fn(*args), lambda: None)

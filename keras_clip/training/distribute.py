"""The TensorFlow seam of the update: one all-reduce, a replica-safe condition, an apply.

`ClippingOptimizer` clips the gradient of the global batch, so under a
`tf.distribute` strategy it sums the replicas' gradients itself, once, before
clipping. Keras's TF optimizer would sum them again inside `apply()` (its
`_backend_update_step` all-reduces after `_clip_gradients`, which is why its
own clipping is per replica). `apply_reduced` hands the inner optimizer a
gradient it only has to apply. Nothing here patches an optimizer.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
import tensorflow as tf
from keras.src import backend as keras_backend

from keras_clip import ops


def replicas() -> int:
    """Replicas summing gradients in the current replica context (1 outside any strategy)."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def all_reduce(grads: Sequence[ops.Gradient | None]) -> list[ops.Gradient | None]:
    """Sums gradients across replicas (one all-reduce), a no-op on one device.

    Args:
        grads: Sequence of Tensor, IndexedSlices or None.

    Returns:
        The gradient of the global batch on every replica.
    """
    grads = list(grads)
    if replicas() == 1:
        return grads
    positions = [i for i, g in enumerate(grads) if g is not None]
    reduced = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in positions])
    for i, g in zip(positions, reduced):
        grads[i] = g
    return grads


def run_if(pred: tf.Tensor, fn: Callable[[], None]) -> None:
    """Runs `fn()` (which updates variables) only where `pred` is true.

    Under a `tf.distribute` strategy that needs merge calls, the condition is
    taken in cross-replica context, as Keras's `LossScaleOptimizer` does,
    because a replica-context `cond` may not contain a merge call. `pred` must
    be identical on every replica (it is computed from all-reduced values).
    """
    if tf.distribute.has_strategy() and not tf.__internal__.distribute.strategy_supports_no_merge_call():

        def merge_fn(distribution: tf.distribute.Strategy, pred: Any) -> None:
            first = distribution.experimental_local_results(pred)[0]
            tf.cond(first, lambda: distribution.extended.call_for_each_replica(fn), lambda: None)

        tf.distribute.get_replica_context().merge_call(merge_fn, args=(pred,))
    else:
        tf.cond(pred, fn, lambda: None)


def apply_reduced(optimizer: keras.optimizers.Optimizer, grads: list[Any], variables: list[Any]) -> None:
    """`optimizer.apply(grads, variables)` for a gradient already summed across replicas.

    On one replica this is `optimizer.apply`. On several it follows Keras's
    `BaseOptimizer.apply` step by step (empty gradients, overwrite-with-gradient
    variables, loss-scale factor, weight decay, the update, EMA, constraints,
    the iteration counter) and leaves out the one all-reduce that
    `TFOptimizer._backend_update_step` adds. `tests/test_optimizer_seam.py`
    pins the Keras methods this mirrors. The optimizer must not clip nor
    accumulate gradients itself (`ClippingOptimizer` owns both).
    """
    if replicas() == 1:
        optimizer.apply(grads, variables)
        return
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        _apply_loss_scaled(optimizer, grads, variables)
        return
    if not optimizer.built:
        with keras_backend.name_scope(optimizer.name, caller=optimizer):
            optimizer.build(variables)
        optimizer.built = True
    with keras_backend.name_scope(optimizer.name, caller=optimizer):
        grads, variables = optimizer._filter_empty_gradients(grads, variables)
        grads, variables = optimizer._overwrite_variables_directly_with_gradients(grads, variables)
        if grads:
            if optimizer.loss_scale_factor is not None:
                grads = [g / optimizer.loss_scale_factor for g in grads]
            optimizer._apply_weight_decay(variables)
            pairs = list(zip(grads, [v.value if isinstance(v, keras.Variable) else v for v in variables]))
            tf.__internal__.distribute.interim.maybe_merge_call(
                optimizer._distributed_tf_update_step, optimizer._distribution_strategy, pairs, optimizer.learning_rate
            )
            _moving_average(optimizer)
            for variable in variables:
                if variable.constraint is not None:
                    variable.assign(variable.constraint(variable))
    optimizer._iterations.assign_add(1)


def _moving_average(optimizer: keras.optimizers.Optimizer) -> None:
    if not optimizer.use_ema:
        return
    optimizer._update_model_variables_moving_average(optimizer._trainable_variables)
    if optimizer.ema_overwrite_frequency:
        overwrite = (optimizer.iterations + 1) % optimizer.ema_overwrite_frequency == 0
        keras.ops.cond(
            overwrite,
            lambda: optimizer._overwrite_model_variables_with_average_value(optimizer._trainable_variables),
            lambda: None,
        )


def _apply_loss_scaled(optimizer: keras.optimizers.LossScaleOptimizer, grads: list[Any], variables: list[Any]) -> None:
    """`LossScaleOptimizer.apply` on several replicas, its inner update through `apply_reduced`.

    Follows Keras's `_stateful_handle_finite_grads` / `_non_finite_grads`:
    an overflow skips the update and halves the scale; every
    `dynamic_growth_steps` finite updates double it. `finite` is computed from
    the all-reduced gradient, so every replica takes the same branch.
    """
    finite = optimizer.check_finite(grads)

    def upscale() -> None:
        optimizer.step_counter.assign(0)
        optimizer.dynamic_scale.assign(optimizer.dynamic_scale * 2.0)

    def increment() -> None:
        optimizer.step_counter.assign_add(1)

    def finite_update() -> None:
        factor = 1.0 / tf.convert_to_tensor(optimizer.dynamic_scale, tf.float32)
        apply_reduced(optimizer.inner_optimizer, [ops.scale(g, factor) for g in grads], variables)
        grow = keras.ops.equal(optimizer.step_counter, optimizer.dynamic_growth_steps - 1)
        keras.ops.cond(grow, upscale, increment)

    run_if(finite, finite_update)
    run_if(tf.logical_not(finite), optimizer._stateful_handle_non_finite_grads)

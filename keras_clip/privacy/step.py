"""The training step of per-example clipping: per-example losses, norms, the clipped sum, the update."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import keras
import tensorflow as tf

from keras_clip.privacy import ghost, gradients
from keras_clip.privacy.clip import PerExampleClip
from keras_clip.training.distribute import replicas


def check_compiled(model: keras.Model, clip: PerExampleClip) -> None:
    """Refuses, at `compile()`, what per-example clipping cannot do.

    Raises:
        ValueError: For a missing loss or several losses, a layer that mixes
            the examples of a batch (trainable BatchNormalization), a loss
            scaler (mixed precision) or gradient accumulation on the optimizer.
    """
    loss = getattr(model, "loss", None)
    if loss is None or isinstance(loss, (list, tuple, dict)):
        raise ValueError(
            "PerExampleClip needs one loss (a name, a function or a keras.losses.Loss) that gives one value "
            f"per example; several outputs' losses are not supported. Received: loss={loss!r}"
        )
    mixing = [layer.name for layer in model._flatten_layers(include_self=False) if _mixes_examples(layer)]
    if mixing:
        raise ValueError(
            "PerExampleClip needs each example's loss to depend on that example alone, but batch "
            "normalization mixes the examples of a batch. Use LayerNormalization or GroupNormalization "
            f"instead. Received: layers {mixing}"
        )
    inner = model.optimizer.inner_optimizer
    if isinstance(inner, keras.optimizers.LossScaleOptimizer):
        raise ValueError(
            "PerExampleClip does not support loss scaling (mixed precision): per-example gradients are "
            f"computed in float32 without a loss scale. Received: optimizer={inner!r}"
        )
    if model.optimizer.accumulation_steps:
        raise ValueError(
            "PerExampleClip adds noise once per update of the global batch; accumulating gradients over "
            "micro-batches would add it per micro-batch. Use a larger batch instead. Received: "
            f"gradient_accumulation_steps={model.optimizer.accumulation_steps}"
        )


def _mixes_examples(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization) and layer.trainable


def per_example_losses(loss: Any, y: Any, y_pred: Any, sample_weight: Any = None) -> tf.Tensor:
    """The loss of each example, shape `(batch,)`, whatever the loss's `reduction`.

    Args:
        loss: A loss name, function or `keras.losses.Loss`.
        y: Tensor. The targets.
        y_pred: Tensor. The model's outputs.
        sample_weight: Tensor or None. Per-example weights (shape `(batch,)`
            or `(batch, ...)`), multiplied into each example's loss.

    Raises:
        ValueError: When the loss returns a scalar (it averaged over the
            examples, so no example's loss can be told apart).
    """
    fn: Callable[..., Any] = keras.losses.get(loss) if isinstance(loss, (str, dict)) else loss
    if isinstance(fn, keras.losses.Loss):
        fn = fn.call  # unreduced: DP-SGD fixes its own reduction
    values = tf.cast(fn(y, y_pred), tf.float32)
    if values.shape.rank == 0:
        raise ValueError(
            "PerExampleClip needs the loss to return one value per example (shape (batch,) or "
            "(batch, ...)), but it returned a scalar: it averages over the examples and hides them. "
            f"Use an unreduced loss function. Received: loss={loss!r}"
        )
    values = _mean_but_first(values)
    if sample_weight is not None:
        values = values * _mean_but_first(tf.cast(sample_weight, tf.float32))
    return values


def _mean_but_first(values: tf.Tensor) -> tf.Tensor:
    if values.shape.rank is None or values.shape.rank == 1:
        return values
    return tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))


def train_step(model: keras.Model, data: Any) -> dict[str, Any]:
    """One DP-SGD step: clip each example's gradient, sum, add noise once, divide, update.

    Runs in each replica's context (like Keras's own `train_step`); the
    optimizer all-reduces the clipped sums, and the strategy adds the noise.
    """
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    optimizer = model.optimizer
    clip: PerExampleClip = optimizer.clipping
    variables = list(model.trainable_variables)
    with tf.GradientTape(persistent=True) as tape:
        with _recording(model, tape, clip.ghost_norms) as recording:
            y_pred = model(x, training=True) if model._call_has_training_arg else model(x)
        losses = per_example_losses(model.loss, y, y_pred, sample_weight)
    if model.losses:
        raise ValueError(
            "PerExampleClip does not support losses added by layers (weight or activity regularizers, "
            "add_loss): an activity regularizer depends on the batch as a whole. Use the optimizer's "
            f"weight_decay instead. Received: {len(model.losses)} added losses"
        )
    norms, clipped = gradients.clipped_sum(tape, losses, variables, clip.l2_norm_clip, recording)
    del tape
    local_batch = tf.shape(losses)[0]
    if clip.expected_batch_size is not None:
        global_batch = tf.constant(float(clip.expected_batch_size))
    else:
        global_batch = _sum_replicas(tf.cast(local_batch, tf.float32))
    clip.stage(_figures(_gather_replicas(norms), clip.l2_norm_clip), global_batch)
    model._loss_tracker.update_state(tf.reduce_mean(losses), sample_weight=local_batch)
    optimizer.apply([g / global_batch for g in clipped], variables)
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _recording(model: keras.Model, tape: tf.GradientTape, enabled: bool) -> Any:
    return ghost.recording(model, tape) if enabled else contextlib.nullcontext()


def _figures(norms: tf.Tensor, l2_norm_clip: float) -> dict[str, tf.Tensor]:
    """Median and max of the per-example norms, and the fraction of examples clipped."""
    count = tf.size(norms)
    ordered = tf.concat([tf.sort(norms), tf.zeros([1], norms.dtype)], 0)  # an empty batch reports zeros
    median = 0.5 * (ordered[tf.maximum(count - 1, 0) // 2] + ordered[count // 2])
    clipped = tf.math.divide_no_nan(
        tf.reduce_sum(tf.cast(norms > l2_norm_clip, tf.float32)), tf.cast(count, tf.float32)
    )
    return {
        "example_norm_median": median,
        "example_norm_max": ordered[tf.maximum(count - 1, 0)],
        "clipped_fraction": clipped,
    }


def _sum_replicas(value: tf.Tensor) -> tf.Tensor:
    if replicas() == 1:
        return value
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, value)


def _gather_replicas(values: tf.Tensor) -> tf.Tensor:
    if replicas() == 1:
        return values
    return tf.distribute.get_replica_context().all_gather(values, axis=0)

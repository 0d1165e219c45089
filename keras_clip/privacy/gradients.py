"""Per-example gradient norms and the sum of clipped per-example gradients (TensorFlow)."""

from __future__ import annotations

from typing import Any, Sequence

import tensorflow as tf

from keras_clip.privacy import ghost

# Below this norm an example's gradient is zero and its factor is 1 (no division by zero).
_TINY = 1e-30


def clip_factors(norms: tf.Tensor, l2_norm_clip: float) -> tf.Tensor:
    """min(1, C / norm) per example: 1 where the norm is within the bound (norm == C included).

    Args:
        norms: Float tensor, shape `(batch,)`. Each example's gradient norm.
        l2_norm_clip: Float. The bound C.
    """
    bound = tf.constant(l2_norm_clip, norms.dtype)
    return tf.where(norms > bound, bound / tf.maximum(norms, _TINY), tf.ones_like(norms))


def per_example_gradients(tape: tf.GradientTape, losses: tf.Tensor, variables: Sequence[Any]) -> list[tf.Tensor]:
    """Each example's gradient of each variable, shape `(batch, *variable.shape)`.

    Vectorized over the batch (`tf.GradientTape.jacobian` with `pfor`), so
    it runs in one graph (and under XLA) without a Python loop. The tape
    must be persistent and have recorded `losses`.
    """
    jacobians = tape.jacobian(
        losses, list(variables), unconnected_gradients=tf.UnconnectedGradients.ZERO, experimental_use_pfor=True
    )
    return [tf.convert_to_tensor(j) for j in jacobians]


def squared_norms(per_example: Sequence[tf.Tensor]) -> tf.Tensor:
    """Sum over variables of each example's squared gradient norm, shape `(batch,)`."""
    total = 0.0
    for g in per_example:
        g = tf.reshape(tf.cast(g, tf.float32), [tf.shape(g)[0], -1])
        total += tf.reduce_sum(tf.square(g), axis=1)
    return total


def clipped_sum(
    tape: tf.GradientTape,
    losses: tf.Tensor,
    variables: Sequence[Any],
    l2_norm_clip: float,
    recording: ghost.Recording | None = None,
) -> tuple[tf.Tensor, list[tf.Tensor]]:
    """Each example's gradient norm, and the sum over the batch of the clipped gradients.

    Without a `recording`, every variable's per-example gradient is formed
    (vectorized) and the clipped ones are summed. With one, the variables of
    the recorded layers get their norms and clipped sums from `ghost` (no
    per-example gradient, no second backward pass); the other variables get
    their norms from vectorized per-example gradients and their clipped sum
    from one more backward pass, each example's loss weighted by its clip
    factor.

    Returns:
        `(norms, sums)`: norms of shape `(batch,)` and, per variable, the sum
        of `g_i * min(1, C / ||g_i||)` over the examples.
    """
    variables = list(variables)
    records = recording.records() if recording is not None else []
    if not records:
        per_example = per_example_gradients(tape, losses, variables)
        norms = tf.sqrt(squared_norms(per_example))
        factors = clip_factors(norms, l2_norm_clip)
        return norms, [tf.tensordot(tf.cast(factors, g.dtype), g, axes=1) for g in per_example]
    covered = {id(v) for r in records for v in r.layer.trainable_weights}
    output_grads = tape.gradient(losses, [r.probe for r in records], output_gradients=tf.ones_like(losses))
    squared = recording.squared_norms(records, output_grads)
    others = [v for v in variables if id(v) not in covered]
    if others:
        squared += squared_norms(per_example_gradients(tape, losses, others))
    norms = tf.sqrt(squared)
    factors = tf.stop_gradient(clip_factors(norms, l2_norm_clip))
    sums = recording.clipped_sums(records, output_grads, factors)
    rest = [v for v in variables if id(v) not in sums]
    if rest:
        zero = tf.UnconnectedGradients.ZERO
        sums.update(
            zip(map(id, rest), tape.gradient(losses, rest, output_gradients=factors, unconnected_gradients=zero))
        )
    return norms, [sums[id(v)] for v in variables]

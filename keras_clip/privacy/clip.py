"""`PerExampleClip`: per-example clipping with Gaussian noise (DP-SGD), as a clipping strategy."""

from __future__ import annotations

import secrets
import threading
from typing import Any

import keras
import tensorflow as tf

from keras_clip import ops
from keras_clip.strategies.base import ClipStrategy, Stats

# Philox, named: TensorFlow's default ("auto_select") is Philox too on CPU without XLA, but under
# XLA:CPU it draws about 20x slower per number (`benchmarks/bench_dp.py --generators`); ThreeFry has
# no kernel outside XLA.
_ALGORITHM = "philox"


@keras.saving.register_keras_serializable(package="keras_clip")
class PerExampleClip(ClipStrategy):
    """Clips each example's gradient, then adds Gaussian noise once per update (DP-SGD).

    Given as `compile(clipping=PerExampleClip(...))` to a `ClippingModel`,
    `ClippingSequential` or `ClippingMixin` model, it changes the model's
    training step: the step computes each example's gradient g_i (vectorized
    over the batch, no Python loop), scales it to at most `l2_norm_clip`,
    sums over the global batch, adds noise N(0, (noise_multiplier *
    l2_norm_clip)^2) once per coordinate, and divides by the global batch
    size B (or `expected_batch_size`). The update's noise therefore has standard deviation
    `noise_multiplier * l2_norm_clip / B` whatever the number of replicas:
    the replicas' clipped sums are all-reduced first and every replica then
    adds the same noise (a stateless generator keyed by the seed and the
    update count).

    Per-example gradients are computed in the step, before any optimizer
    sees them; a summed gradient cannot be clipped per example. The loss
    must give one value per example (see `docs/privacy.md`): the step
    computes `loss(y_true, y_pred)` unreduced and ignores the loss's
    `reduction`, because DP-SGD fixes its own (sum of clipped gradients over
    the batch size).

    Figures reported to the optimizer's report (and by `GradientNormLogger`
    as `clipping/<name>`): `example_norm_median`, `example_norm_max`,
    `clipped_fraction` (examples whose norm exceeded the bound),
    `l2_norm_clip` and `noise_std` (the update's noise standard deviation).
    `grad_norm` is the norm of the averaged clipped gradient before noise and
    `clipped_grad_norm` the norm of the update after it.

    Args:
        l2_norm_clip: Float. The bound on each example's gradient L2 norm
            (all trainable variables together); must be positive.
        noise_multiplier: Float. The noise's standard deviation in units of
            `l2_norm_clip`; 0 (default) adds none (clipping only, no privacy).
        seed: Int or None. Seed of the noise. None (default) draws one from
            the operating system when the strategy is created; pass one only
            for reproducible experiments.
        ghost_norms: Bool. True (default): Dense, EinsumDense, Embedding and
            LayerNormalization layers get each example's gradient norm from
            their inputs and output gradients, without forming per-example
            gradients (other layers: vectorized per-example gradients).
            False: vectorized per-example gradients for every layer. Both
            give the same norms; ghost norms are faster and use less memory.
        expected_batch_size: Int or None. What the clipped sum (and noise) is
            divided by. None (default): the global batch's actual size, right
            for fixed-size batches. With Poisson sampling
            (`keras_clip.privacy.poisson_batches`) pass the expected size
            `sample_rate * dataset size`: the actual size of a Poisson batch
            depends on the data, so dividing by it is not covered by the
            accounting.

    Example:

    ```python
    model = keras_clip.ClippingSequential([...])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  clipping=keras_clip.PerExampleClip(l2_norm_clip=1.0, noise_multiplier=1.1))
    model.fit(x, y, batch_size=256, epochs=10)
    keras_clip.privacy.epsilon(1.1, sample_rate=256 / len(x), steps=10 * len(x) // 256, delta=1e-5)
    ```

    References:
        - Abadi et al., [Deep Learning with Differential Privacy](https://arxiv.org/abs/1607.00133), 2016.
        - Goodfellow, [Efficient Per-Example Gradient Computations](https://arxiv.org/abs/1510.01799), 2015.
        - Li et al., [Large Language Models Can Be Strong Differentially Private
          Learners](https://arxiv.org/abs/2110.05679), 2022.
    """

    def __init__(
        self,
        l2_norm_clip: float,
        noise_multiplier: float = 0.0,
        seed: int | None = None,
        ghost_norms: bool = True,
        expected_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if not l2_norm_clip > 0:
            raise ValueError(f"`l2_norm_clip` must be positive. Received: l2_norm_clip={l2_norm_clip}")
        if not noise_multiplier >= 0:
            raise ValueError(f"`noise_multiplier` must be >= 0. Received: noise_multiplier={noise_multiplier}")
        if seed is not None and not isinstance(seed, int):
            raise ValueError(f"`seed` must be an int or None. Received: seed={seed!r}")
        self.l2_norm_clip = float(l2_norm_clip)
        self.noise_multiplier = float(noise_multiplier)
        self.seed = seed
        self.ghost_norms = bool(ghost_norms)
        if expected_batch_size is not None and not (isinstance(expected_batch_size, int) and expected_batch_size > 0):
            raise ValueError(
                "`expected_batch_size` must be a positive int or None. "
                f"Received: expected_batch_size={expected_batch_size!r}"
            )
        self.expected_batch_size = expected_batch_size
        self._noise_seed = seed if seed is not None else secrets.randbits(31)
        self._staged = threading.local()

    def build(self, variables: Any) -> None:
        """Creates the update counter that keys the noise."""
        self.add_state("noise_steps", 0, "int64")
        super().build(variables)

    def stage(self, figures: dict[str, tf.Tensor], global_batch: tf.Tensor) -> None:
        """Hands the step's per-example figures and global batch size to the next `clip` (same thread)."""
        self._staged.value = (figures, global_batch)

    def clip_present(self, grads: list[ops.Gradient], variables: list[Any]) -> tuple[list[ops.Gradient], Stats]:
        """Adds the noise to the averaged clipped gradient the step computed, and reports."""
        staged = getattr(self._staged, "value", None)
        if staged is None:
            raise ValueError(
                "PerExampleClip clips each example's gradient inside the model's training step, so it "
                "cannot clip a gradient that was already summed over the batch. Compile a "
                "keras_clip.ClippingModel, ClippingSequential or ClippingMixin model with "
                "clipping=PerExampleClip(...) and train it with fit(). Received: a summed gradient "
                "given to the optimizer directly."
            )
        self._staged.value = None
        figures, global_batch = staged
        grads = [tf.convert_to_tensor(g) for g in grads]  # noise touches every row of an embedding
        norm = ops.global_norm(grads)
        std = tf.constant(self.noise_multiplier * self.l2_norm_clip, tf.float32) / tf.cast(global_batch, tf.float32)
        if self.noise_multiplier > 0:
            counter = self.state["noise_steps"]
            grads = [g + _noise(g, std, self._noise_seed + k, counter) for k, g in enumerate(grads)]
            counter.assign_add(1)
        stats = {"grad_norm": norm, "clipped_grad_norm": ops.global_norm(grads)}
        stats.update(figures)
        stats.update(l2_norm_clip=tf.constant(self.l2_norm_clip, tf.float32), noise_std=std)
        return grads, stats

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments."""
        return {
            "l2_norm_clip": self.l2_norm_clip,
            "noise_multiplier": self.noise_multiplier,
            "seed": self.seed,
            "ghost_norms": self.ghost_norms,
            "expected_batch_size": self.expected_batch_size,
        }


def _noise(grad: tf.Tensor, std: tf.Tensor, key: int, counter: Any) -> tf.Tensor:
    """Gaussian noise like `grad`, identical on every replica for the same key and counter."""
    seed = tf.stack([tf.constant(key, tf.int64), tf.convert_to_tensor(counter, tf.int64)])
    noise = tf.random.stateless_normal(tf.shape(grad), seed=seed, dtype=tf.float32, alg=_ALGORITHM) * std
    return tf.cast(noise, grad.dtype)

"""Poisson sampling for a `tf.data` pipeline: the sampling the privacy accounting assumes."""

from __future__ import annotations

import tensorflow as tf


def poisson_batches(
    dataset: tf.data.Dataset, sample_rate: float, steps: int, seed: int | None = None
) -> tf.data.Dataset:
    """Batches in which every example appears independently with probability `sample_rate`.

    Each of the `steps` batches passes over the whole (finite) dataset and
    keeps each example with probability `sample_rate`, so batch sizes vary
    (expected size: `sample_rate * len(dataset)`; a batch may be empty).
    This is the sampling `keras_clip.privacy.epsilon` assumes. Varying sizes
    retrace the step for each new size under `jit_compile=True`: compile
    with `jit_compile=False` or accept the recompiles.

    Args:
        dataset: tf.data.Dataset of single examples (not batched), finite.
        sample_rate: Float. The probability q in (0, 1].
        steps: Int. The number of batches to produce (use `steps_per_epoch`
            in `fit`, e.g. `round(1 / sample_rate)` for one epoch's worth).
        seed: Int or None. Seed of the sampling.

    Example:

    ```python
    examples = tf.data.Dataset.from_tensor_slices((x, y))
    batches = keras_clip.privacy.poisson_batches(examples, sample_rate=256 / len(x), steps=len(x) // 256)
    model.fit(batches, epochs=1)
    ```
    """
    if not 0 < sample_rate <= 1:
        raise ValueError(f"`sample_rate` must be in (0, 1]. Received: sample_rate={sample_rate}")
    size = int(dataset.cardinality())
    if size < 0:
        raise ValueError(
            "poisson_batches needs a finite dataset of known size (every batch passes over all of it). "
            f"Received: a dataset of cardinality {size}"
        )
    seeds = tf.data.Dataset.random(seed=seed).take(steps)

    def one_batch(step_seed: tf.Tensor) -> tf.data.Dataset:
        def keep(index: tf.Tensor, example: object) -> tf.Tensor:
            return tf.random.stateless_uniform([], seed=tf.stack([step_seed, index])) < sample_rate

        sampled = dataset.enumerate().filter(keep).map(lambda _, example: example)
        return sampled.batch(max(size, 1))

    return seeds.flat_map(one_batch)

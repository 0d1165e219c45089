"""Poisson sampling for a `tf.data` pipeline: the sampling the privacy accounting assumes."""

from __future__ import annotations

import tensorflow as tf


def poisson_batches(
    dataset: tf.data.Dataset, sample_rate: float, steps: int, seed: int | None = None
) -> tf.data.Dataset:
    """Batches in which every example appears independently with probability `sample_rate`.

    Each of the `steps` batches draws one uniform number per example of the
    (finite) dataset and keeps the examples whose number is below
    `sample_rate`, so batch sizes vary (expected size: `sample_rate *
    len(dataset)`; a batch may be empty). This is the sampling
    `keras_clip.privacy.epsilon` assumes. The dataset is held in memory as
    one batch (cached), and each step's draw is one vectorized op. Give
    `PerExampleClip(..., expected_batch_size=round(sample_rate *
    len(dataset)))` so that the update is divided by the expected size.
    Under `jit_compile=True` every new batch size compiles the step again:
    compile with `jit_compile=False` (or accept the recompiles).

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
            "poisson_batches needs a finite dataset of known size (every batch draws from all of it). "
            f"Received: a dataset of cardinality {size}"
        )
    everything = dataset.batch(max(size, 1)).cache().repeat()
    seeds = tf.data.Dataset.random(seed=seed).take(steps)

    def sample(step_seed: tf.Tensor, examples: object) -> object:
        keep = tf.random.stateless_uniform([size], seed=tf.stack([step_seed, 0])) < sample_rate
        return tf.nest.map_structure(lambda t: tf.boolean_mask(t, keep), examples)

    return tf.data.Dataset.zip((seeds, everything)).map(sample)

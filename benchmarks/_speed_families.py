"""The three model families of `clipping_speed.py`: data, model, loss, grids and target.

The two regression families are the ones of `keras_clip.experiments.problems`
(the seed regression and the IRNN sum task); the third is a small
Transformer classifier on synthetic tokens, so that embedding gradients
(sparse rows in TensorFlow) go through the clip too.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import keras
import numpy as np

import keras_clip as kc
from keras_clip.experiments import problems

VOCAB = 64
CLASSES = 4
TOKENS = 16


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family and the grid it is swept over.

    Args:
        name: String. Short name, used in tables and the JSON.
        build_model: Callable returning a fresh, uncompiled `ClippingModel` (initial weights follow the global seed).
        data: Tuple `(x, y)` of numpy arrays.
        loss: String. The Keras loss.
        batch_size: Integer.
        epochs: Integer. The epoch budget of every run.
        momentum: Float. SGD momentum of every run.
        learning_rates: Tuple of floats, log-spaced.
        max_norms: Tuple of floats. The `ClipByGlobalNorm` thresholds.
        reference_lr: Float. The learning rate of the short run `suggest` reads its norms from.
        baseline: Float. The loss of the best constant prediction.
        target_fraction: Float. A run reaches the target when its epoch loss is at most `target_fraction * baseline`.
        jit_compile: Boolean. Compile the train step with XLA (off in `--quick`: compiling costs more than its runs).
    """

    name: str
    build_model: Callable[[], keras.Model]
    data: tuple[np.ndarray, np.ndarray]
    loss: str
    batch_size: int
    epochs: int
    momentum: float
    learning_rates: tuple[float, ...]
    max_norms: tuple[float, ...]
    reference_lr: float
    baseline: float
    target_fraction: float
    jit_compile: bool = True

    @property
    def target(self) -> float:
        """The target loss."""
        return self.target_fraction * self.baseline

    @property
    def steps_per_epoch(self) -> int:
        """Steps of one epoch (every batch is whole)."""
        return len(self.data[0]) // self.batch_size


def token_data(n: int = 1024, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Random token sequences; the label is the most common class (`token % 4`) among their tokens.

    Args:
        n: Integer. Number of sequences.
        seed: Integer. Random seed.

    Returns:
        `(x, y)`: int32 arrays of shapes `(n, 16)` and `(n,)`, labels in [0, 4), ties to the smallest class.
    """
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCAB, size=(n, TOKENS)).astype("int32")
    counts = np.stack([(x % CLASSES == c).sum(axis=1) for c in range(CLASSES)], axis=1)
    return x, counts.argmax(axis=1).astype("int32")


def transformer_model(dim: int = 32, heads: int = 2) -> kc.ClippingModel:
    """Embedding → one post-norm Transformer block → mean pool → `Dense(4)` logits, uncompiled."""
    tokens = keras.Input((TOKENS,), dtype="int32")
    h = keras.layers.Embedding(VOCAB, dim, name="embedding")(tokens)
    attended = keras.layers.MultiHeadAttention(heads, dim // heads, name="attention")(h, h)
    h = keras.layers.LayerNormalization(name="norm1")(h + attended)
    ffn = keras.layers.Dense(dim, name="ffn_out")(keras.layers.Dense(2 * dim, activation="relu", name="ffn_in")(h))
    h = keras.layers.LayerNormalization(name="norm2")(h + ffn)
    logits = keras.layers.Dense(CLASSES, name="out")(keras.layers.GlobalAveragePooling1D()(h))
    return kc.ClippingModel(tokens, logits, name="transformer")


def _class_entropy(y: np.ndarray) -> float:
    p = np.bincount(y, minlength=CLASSES) / len(y)
    return float(-(p[p > 0] * np.log(p[p > 0])).sum())


def _log_grid(low: float, count: int) -> tuple[float, ...]:
    """`count` learning rates from `low`, half a decade apart (1, 3, 10, ...), to two significant digits."""
    return tuple(float(f"{low * 10 ** (k / 2):.2g}") for k in range(count))


def families(quick: bool = False) -> list[Family]:
    """The three families; `quick`: tiny data, three learning rates, few epochs."""
    n = 256 if quick else 1024  # whole batches: an epoch is one execution of equal steps
    seed_data = problems.regression_data(n=n)
    rnn_data = problems.integrator_data(n=n, steps=20 if quick else 40)
    tokens = token_data(n=n)
    steps = rnn_data[0].shape[1]

    def grid(low: float) -> tuple[float, ...]:  # quick: the ends and the middle of the same range
        return _log_grid(low, 7)[::3] if quick else _log_grid(low, 7)

    return [
        Family(
            "seed regression", problems.seed_model, seed_data, "mse", problems.SEED_BATCH_SIZE,
            epochs=4 if quick else 20, momentum=problems.SEED_MOMENTUM,
            learning_rates=grid(1e-3),
            max_norms=(1.0, 10.0, 100.0), reference_lr=problems.SEED_LEARNING_RATE,
            baseline=float(np.var(seed_data[1])), target_fraction=0.01, jit_compile=not quick,
        ),
        Family(
            "IRNN sum", lambda: problems.rnn_model(steps=steps), rnn_data, "mse", problems.RNN_BATCH_SIZE,
            epochs=3 if quick else 15, momentum=problems.RNN_MOMENTUM,
            learning_rates=grid(1e-4),
            max_norms=(0.1, 1.0, 10.0), reference_lr=problems.RNN_LEARNING_RATE,
            baseline=float(np.var(rnn_data[1])), target_fraction=0.1, jit_compile=not quick,
        ),
        Family(
            "transformer", transformer_model, tokens, "sparse_categorical_crossentropy_logits", 64,
            epochs=3 if quick else 15, momentum=0.9,
            learning_rates=grid(3e-3),
            max_norms=(0.1, 1.0, 10.0), reference_lr=0.1,
            baseline=_class_entropy(tokens[1]), target_fraction=0.25, jit_compile=not quick,
        ),
    ]


def keras_loss(name: str) -> Any:
    """The Keras loss of a family's `loss` name."""
    if name == "sparse_categorical_crossentropy_logits":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return name


def kinds(family: Family) -> dict[str, Callable[[], kc.ClipStrategy | None]]:
    """Label -> strategy factory: no clipping, each threshold, then the adaptive rules at their defaults."""
    fixed = {f"ClipByGlobalNorm({t:g})": (lambda t=t: kc.ClipByGlobalNorm(t)) for t in family.max_norms}
    return {
        "none": lambda: None,
        **fixed,
        "AutoClip()": kc.AutoClip,
        "ZClip()": kc.ZClip,
        "AdaptiveGradClip(0.01)": lambda: kc.AdaptiveGradClip(0.01),
    }


def kind_of(label: str) -> str:
    """The kind of a strategy label: `ClipByGlobalNorm(10)` -> `ClipByGlobalNorm`."""
    return label.split("(")[0]

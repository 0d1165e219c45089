"""Two problems where clipping decides the outcome: the seed regression and an IRNN.

Both are synthetic and seeded, so a run needs no download and gives the same
numbers every time on one machine (XLA's code, hence the last digits, differs
between CPUs; outcomes and orders of magnitude do not).
"""

from __future__ import annotations

import keras
import numpy as np

from keras_clip.training import ClippingModel

SEED_LEARNING_RATE = 0.07
SEED_MOMENTUM = 0.8
SEED_BATCH_SIZE = 128
RNN_LEARNING_RATE = 0.01
RNN_MOMENTUM = 0.9
RNN_BATCH_SIZE = 64


def regression_data(
    n: int = 1000, features: int = 20, informative: int = 10, seed: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """`sklearn.datasets.make_regression`-like data, without scikit-learn.

    `y = x @ coef + noise`: standard normal inputs, coefficients uniform in
    [0, 100) on the first `informative` features and 0 elsewhere, noise with
    standard deviation 0.1. The large coefficients give the seed model its
    first gradients in the thousands.

    Args:
        n: Integer. Number of samples.
        features: Integer. Number of input features.
        informative: Integer. How many features the target depends on.
        seed: Integer. Random seed.

    Returns:
        `(x, y)`: float32 arrays of shapes `(n, features)` and `(n, 1)`.

    Example:

    >>> x, y = regression_data(n=4)
    >>> x.shape, y.shape
    ((4, 20), (4, 1))
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    coef = np.zeros((features, 1), "float32")
    coef[:informative, 0] = rng.uniform(0, 100, size=informative)
    y = x @ coef + rng.normal(scale=0.1, size=(n, 1)).astype("float32")
    return x, y.astype("float32")


def with_outliers(y: np.ndarray, count: int = 5, factor: float = 10.0, seed: int = 0) -> np.ndarray:
    """A copy of the targets `y` with `count` of them, chosen at random, times `factor`.

    At a learning rate that is safe on the clean data, the batches holding an
    outlier give gradient spikes: the case adaptive clipping is made for.

    Args:
        y: Float array of shape `(n, 1)`. Left unchanged.
        count: Integer. How many targets to corrupt.
        factor: Float. What they are multiplied by.
        seed: Integer. Random seed of the choice.

    Returns:
        The corrupted copy, same shape and dtype as `y`.
    """
    noisy = y.copy()
    noisy[np.random.default_rng(seed).choice(len(y), count, replace=False)] *= factor
    return noisy


def integrator_data(n: int = 1000, steps: int = 40, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Sequences whose target is the scaled sum of all their steps.

    The output depends as much on the first step as on the last, so the
    gradient must travel back through every step of the recurrence: a
    long-range task in its simplest form.

    Args:
        n: Integer. Number of sequences.
        steps: Integer. Length of each sequence.
        seed: Integer. Random seed.

    Returns:
        `(x, y)`: float32 arrays of shapes `(n, steps, 1)` (standard normal)
        and `(n, 1)` with `y = sum(x) / sqrt(steps)` (unit variance).
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, steps, 1)).astype("float32")
    return x, (x.sum(axis=1) / np.sqrt(steps)).astype("float32")


def seed_model(features: int = 20) -> ClippingModel:
    """The seed experiment's network: `Dense(25, relu, he_uniform)` → `Dense(1)`, uncompiled.

    Trained on `regression_data()` with `sgd(SEED_LEARNING_RATE, SEED_MOMENTUM)`,
    MSE and batch 128, it turns NaN within its first epoch unless the gradient
    is clipped. The layers are named `hidden` and `out`, so variable paths are
    `hidden/kernel`, `hidden/bias`, `out/kernel`, `out/bias`. The initial
    weights follow Keras's global seed (`keras.utils.set_random_seed`).

    Args:
        features: Integer. Number of input features.

    Returns:
        A fresh `ClippingModel`; compile it with the `clipping=` of your choice.

    Example:

    >>> model = seed_model()
    >>> [v.path for v in model.trainable_variables]
    ['hidden/kernel', 'hidden/bias', 'out/kernel', 'out/bias']

    References:
        Brownlee, [How to Avoid Exploding Gradients With Gradient Clipping](
        https://machinelearningmastery.com/how-to-avoid-exploding-gradients-in-neural-networks-with-gradient-clipping/),
        2019.
    """
    inputs = keras.Input((features,))
    hidden = keras.layers.Dense(25, activation="relu", kernel_initializer="he_uniform", name="hidden")(inputs)
    return ClippingModel(inputs, keras.layers.Dense(1, name="out")(hidden), name="seed_mlp")


def rnn_model(steps: int = 40, units: int = 16) -> ClippingModel:
    """An IRNN: a ReLU `SimpleRNN` whose recurrent kernel starts as the identity, then `Dense(1)`.

    It learns long-range tasks, but only with the gradient clipped: its
    recurrent weights sit at the edge of stability, and one step past it
    makes the gradient grow geometrically with the sequence length.

    Args:
        steps: Integer. Sequence length.
        units: Integer. Recurrent units.

    Returns:
        A fresh, uncompiled `ClippingModel` (layers `irnn` and `out`).

    References:
        Le, Jaitly, Hinton, [A Simple Way to Initialize Recurrent Networks of
        Rectified Linear Units](https://arxiv.org/abs/1504.00941), 2015.
    """
    inputs = keras.Input((steps, 1))
    recurrent = keras.layers.SimpleRNN(units, activation="relu", recurrent_initializer="identity", name="irnn")
    return ClippingModel(inputs, keras.layers.Dense(1, name="out")(recurrent(inputs)), name="irnn")


def sgd(learning_rate: float, momentum: float) -> keras.optimizers.SGD:
    """Plain SGD with momentum and no clipping of its own.

    Args:
        learning_rate: Float. The learning rate.
        momentum: Float in [0, 1). The momentum.
    """
    return keras.optimizers.SGD(learning_rate, momentum=momentum)

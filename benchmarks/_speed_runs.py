"""Training the runs of `clipping_speed.py`: one compiled model per strategy, reset between runs.

Compiling (XLA) costs far more than a run of these tiny models, so each
(family, strategy) pair is compiled once; before every run the weights are
set to the seed's initial weights, every optimizer variable (slots, the
iteration counter, the strategy's state) to its value before the first
step, and the learning rate (a variable of the traced step) to the run's.
`check_reuse` compares such a run with a freshly built and compiled model.
"""

from __future__ import annotations

import tempfile
from typing import Callable

import keras
import numpy as np
from _speed_families import Family, keras_loss

import keras_clip as kc
from keras_clip.cli import suggest as suggest_cli
from keras_clip.experiments import problems


def compiled(family: Family, clipping: kc.ClipStrategy | None, steps_per_execution: int) -> keras.Model:
    """A family's model compiled with `clipping`, SGD with the family's momentum, XLA unless the family says not."""
    model = family.build_model()
    model.compile(
        optimizer=problems.sgd(family.learning_rates[0], family.momentum),
        loss=keras_loss(family.loss),
        clipping=clipping,
        on_nonfinite="propagate",
        jit_compile=family.jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return model


class EpochLoss(keras.callbacks.Callback):
    """Keeps each execution's mean loss, then resets the running mean so the next one is its own."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.losses.append(float((logs or {})["loss"]))
        self.model.reset_metrics()


class Runner:
    """Trains one family with one strategy at any learning rate and seed, on one compiled model.

    A run is one `fit()` over the data repeated `epochs` times, shuffled per
    epoch by the seed (`numpy`), one execution per epoch: so a run costs one
    call into Keras, not one per epoch, and its epoch losses are exact means.

    Args:
        family: Family. What to train.
        make_clipping: Callable returning the strategy (or None).
    """

    def __init__(self, family: Family, make_clipping: Callable[[], kc.ClipStrategy | None]) -> None:
        self.family = family
        keras.utils.set_random_seed(0)
        self.model = compiled(family, make_clipping(), family.steps_per_epoch)
        self.model.optimizer.build(self.model.trainable_variables)
        self._initial = [np.array(v.numpy()) for v in self.model.optimizer.variables]

    def run(self, learning_rate: float, seed: int, epochs: int | None = None, callbacks: list | None = None) -> list:
        """Epoch losses (NaN/inf kept) of one run from the seed's initial weights."""
        self.model.set_weights(initial_weights(self.family, seed))
        for variable, value in zip(self.model.optimizer.variables, self._initial):
            variable.assign(value)
        self.model.optimizer.learning_rate = learning_rate
        x, y = epochs_of_data(self.family, seed, epochs or self.family.epochs)
        recorder = EpochLoss()
        self.model.fit(
            x, y, batch_size=self.family.batch_size, epochs=1, shuffle=False, verbose=0,
            callbacks=[recorder, *(callbacks or [])],
        )
        return recorder.losses


_CACHE: dict[tuple, object] = {}


def initial_weights(family: Family, seed: int) -> list[np.ndarray]:
    """The weights a fresh model of `family` has after `keras.utils.set_random_seed(seed)`."""
    key = ("weights", family.name, seed)
    if key not in _CACHE:
        keras.utils.set_random_seed(seed)
        _CACHE[key] = family.build_model().get_weights()
    return _CACHE[key]


def epochs_of_data(family: Family, seed: int, epochs: int) -> tuple[np.ndarray, np.ndarray]:
    """The data `epochs` times over, each epoch in its own order drawn from `seed`."""
    key = ("data", family.name, seed, epochs)
    if key not in _CACHE:
        rng = np.random.default_rng(seed)
        x, y = family.data
        order = np.concatenate([rng.permutation(len(x)) for _ in range(epochs)])
        _CACHE[key] = (x[order], y[order])
    return _CACHE[key]


def check_reuse(runner: Runner, make_clipping: Callable, learning_rate: float, seed: int) -> float:
    """Largest relative difference between a reused run (after another run) and one on a fresh model."""
    runner.run(runner.family.learning_rates[-1], seed + 1)  # dirty every variable first
    reused = np.array(runner.run(learning_rate, seed))
    fresh = np.array(Runner(runner.family, make_clipping).run(learning_rate, seed))
    return float(np.max(np.abs(reused - fresh) / np.maximum(np.abs(fresh), 1e-12)))


def short_run_norms(unclipped: Runner, epochs: int, seed: int = 0) -> list[float]:
    """Every step's pre-clip norm of a short unclipped run at the family's reference learning rate.

    The run is logged by `GradientNormLogger` and read back by `keras-clip
    suggest`'s reader, as a user's run would be.

    Args:
        unclipped: Runner. The family's runner without clipping.
        epochs: Integer. Length of the short run.
        seed: Integer. Its seed.
    """
    with tempfile.TemporaryDirectory() as logdir:
        callbacks = [kc.GradientNormLogger(logdir)]
        unclipped.run(unclipped.family.reference_lr, seed, epochs=epochs, callbacks=callbacks)
        return suggest_cli.read_norms(logdir)


"""The seed-style regression for a fixed number of steps on the active backend.

`python tests/backends/seed_run.py OUT.npz` (with `KERAS_BACKEND` set) writes,
for each strategy in `STRATEGIES`, the weights after `STEPS` steps and the
loss of each step. The backend suite compares every backend against the file
this writes under TensorFlow.
"""

from __future__ import annotations

import sys

import keras
import numpy as np

import keras_clip as kc
from keras_clip.experiments.problems import regression_data

STEPS = 20
BATCH = 128
# Factories: a stateful strategy belongs to one model.
STRATEGIES = {
    "none": lambda: None,
    "ClipByGlobalNorm": lambda: kc.ClipByGlobalNorm(1.0),
    "ClipByValue": lambda: kc.ClipByValue(1.0),
    "AdaptiveGradClip": lambda: kc.AdaptiveGradClip(0.05),
    # Alone, AutoClip's threshold follows norms that grow at this learning rate and the run diverges
    # (docs/strategies.md); after a global bound its percentile and ring buffer still decide every step.
    "AutoClip": lambda: kc.Chain(kc.ClipByGlobalNorm(1.0), kc.AutoClip(10.0, history_size=8)),
    "ZClip": lambda: kc.ZClip(warmup_steps=5),
    "ZClipPercentileSkip": lambda: kc.ZClip(warmup_steps=5, mode="percentile", skip_update_on_spike=True),
    "AdaGC": lambda: kc.AdaGC(warmup_steps=3),
    "ClipByBlockRMS": lambda: kc.ClipByBlockRMS(0.05),
    # A short window so that the 20 steps reach skips; the chain puts its state back on a skip.
    "SkipSpikes": lambda: kc.Chain(kc.SkipSpikes(1.0, window=4, warmup_steps=3), kc.ClipByGlobalNorm(1.0)),
}


def initial_weights(seed: int = 0) -> list[np.ndarray]:
    """Glorot-uniform kernels and zero biases for Dense(25) -> Dense(1) on 20 features, from numpy."""
    rng = np.random.default_rng(seed)

    def glorot(fan_in: int, fan_out: int) -> np.ndarray:
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, (fan_in, fan_out)).astype("float32")

    return [glorot(20, 25), np.zeros(25, "float32"), glorot(25, 1), np.zeros(1, "float32")]


def data() -> tuple[np.ndarray, np.ndarray]:
    """`STEPS` batches of the seed regression (the 1000 samples repeated)."""
    x, y = regression_data()
    reps = -(-STEPS * BATCH // len(x))
    return np.tile(x, (reps, 1))[: STEPS * BATCH], np.tile(y, (reps, 1))[: STEPS * BATCH]


def run(name: str, epochs: int = 1, jit_compile: bool | str = "auto") -> tuple[list[np.ndarray], np.ndarray]:
    """Trains `epochs` times `STEPS` steps with one strategy; returns the weights and each step's logged loss."""
    model = compiled_model(STRATEGIES[name](), jit_compile)
    x, y = data()
    losses = LossesPerStep()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=[losses])
    return [np.asarray(w) for w in model.get_weights()], np.asarray(losses.losses)


def compiled_model(clipping: kc.ClipStrategy | None, jit_compile: bool | str = "auto") -> kc.ClippingModel:
    """Dense(25, relu) -> Dense(1) with `initial_weights()`, SGD(0.07, momentum 0.8), MSE, `clipping`."""
    inputs = keras.Input((20,))
    hidden = keras.layers.Dense(25, activation="relu")(inputs)
    model = kc.ClippingModel(inputs, keras.layers.Dense(1)(hidden))
    model.set_weights(initial_weights())
    model.compile(
        optimizer=keras.optimizers.SGD(0.07, momentum=0.8),
        loss="mse",
        clipping=clipping,
        on_nonfinite="propagate",
        jit_compile=jit_compile,
    )
    return model


def relative_difference(weights: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """The worst variable's L2 norm of `weights - reference` over the norm of `reference`."""
    return max(float(np.linalg.norm(w - r) / max(np.linalg.norm(r), 1e-30)) for w, r in zip(weights, reference))


class LossesPerStep(keras.callbacks.Callback):
    """Keeps the loss Keras logs after each batch (its running mean over the epoch)."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.losses.append(float(logs["loss"]))


def main(path: str) -> None:
    arrays = {}
    for name in STRATEGIES:
        weights, losses = run(name)
        arrays.update({f"{name}/w{i}": w for i, w in enumerate(weights)})
        arrays[f"{name}/loss"] = losses
    np.savez(path, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])

"""`bench_step.py --backend jax|torch`: `ClipByGlobalNorm` against plain Keras on another backend.

The same MLP (256 -> 512 relu -> 512 relu -> 10, Adam, batch 256, XLA/jit
where the backend compiles) is trained as a plain `keras.Model` and as a
`ClippingModel` with `ClipByGlobalNorm(1.0)`, from the same weights, in
interleaved rounds of one `fit()` epoch each. Prints the median CPU time per
step of each and the median, min and max of the per-round ratio. Imports no
TensorFlow.
"""

from __future__ import annotations

import statistics
import time

import keras
import numpy as np

import keras_clip as kc


def _model(cls: type, weights: list | None) -> keras.Model:
    inputs = keras.Input((256,))
    h = keras.layers.Dense(512, activation="relu")(inputs)
    h = keras.layers.Dense(512, activation="relu")(h)
    model = cls(inputs, keras.layers.Dense(10)(h))
    if weights is not None:
        model.set_weights(weights)
    return model


def _cpu_per_step(model: keras.Model, x: np.ndarray, y: np.ndarray, batch: int) -> float:
    start = time.process_time()
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    return (time.process_time() - start) / (len(x) // batch)


def main(rounds: int = 9, steps: int = 64, batch: int = 256) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * batch, 256)).astype("float32")
    y = rng.integers(0, 10, size=(steps * batch,))
    plain = _model(keras.Model, None)
    clipped = _model(kc.ClippingModel, plain.get_weights())
    plain.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile="auto")
    clipped.compile(
        optimizer="adam", loss="sparse_categorical_crossentropy", clipping=kc.ClipByGlobalNorm(1.0), jit_compile="auto"
    )
    for model in (plain, clipped):  # Warm-up: the first epoch traces and compiles.
        _cpu_per_step(model, x, y, batch)
    times: dict[str, list[float]] = {"keras": [], "ClipByGlobalNorm": []}
    for i in range(rounds):
        order = [("keras", plain), ("ClipByGlobalNorm", clipped)]
        for name, model in order if i % 2 == 0 else order[::-1]:
            times[name].append(_cpu_per_step(model, x, y, batch))
    ratio = [c / p for c, p in zip(times["ClipByGlobalNorm"], times["keras"])]
    print(f"backend {keras.backend.backend()}, MLP 256-512-512-10, Adam, batch {batch}, {rounds} x {steps} steps")
    print(f"{'variant':<20}{'CPU ms/step':>12}{'ratio':>8}{'min':>7}{'max':>7}")
    print(f"{'keras.Model':<20}{statistics.median(times['keras']) * 1e3:>12.3f}{1.0:>8.3f}")
    print(
        f"{'ClipByGlobalNorm':<20}{statistics.median(times['ClipByGlobalNorm']) * 1e3:>12.3f}"
        f"{statistics.median(ratio):>8.3f}{min(ratio):>7.3f}{max(ratio):>7.3f}"
    )

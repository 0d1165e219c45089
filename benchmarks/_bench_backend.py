"""`bench_step.py --backend jax|torch`: `ClipByGlobalNorm` against plain Keras on another backend.

The same MLP (256 -> 512 relu -> 512 relu -> 10, Adam, batch 256, XLA/jit
where the backend compiles) is trained as a plain `keras.Model` (twice: the
second copy, `keras_again`, shows the noise floor), with Keras's own
`global_clipnorm=1.0`, and as a `ClippingModel` with `ClipByGlobalNorm(1.0)`,
from the same weights, in interleaved rounds of one `fit()` epoch each.
Prints the median CPU time per step of each and the median, min and max of
its per-round ratio to plain Keras. Imports no TensorFlow.

With `--compiled` (JAX), it times the compiled step alone instead: each
model's `train_step` under `jax.jit` with the state donated, as `fit` compiles
it, called in interleaved chunks of 20 steps; no `fit` loop around it (whose
Python costs ~1.5 ms per step here and varies from round to round), so the
ratios are about ten times tighter. Prints the median ratio and its
interquartile range.
"""

from __future__ import annotations

import gc
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
    gc.collect()  # Every round starts without an earlier round's garbage to collect.
    start = time.process_time()
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    return (time.process_time() - start) / (len(x) // batch)


def _variants(weights: list) -> dict[str, keras.Model]:
    """The compared models, from the same weights: a plain model twice (the noise floor), Keras's clip, ours."""
    loss = "sparse_categorical_crossentropy"
    models = {}
    for name in ("keras", "keras_again"):
        models[name] = _model(keras.Model, weights)
        models[name].compile(optimizer="adam", loss=loss, jit_compile="auto")
    models["keras_global_clipnorm"] = _model(keras.Model, weights)
    models["keras_global_clipnorm"].compile(
        optimizer=keras.optimizers.Adam(global_clipnorm=1.0), loss=loss, jit_compile="auto"
    )
    models["ClipByGlobalNorm"] = _model(kc.ClippingModel, weights)
    models["ClipByGlobalNorm"].compile(
        optimizer="adam", loss=loss, clipping=kc.ClipByGlobalNorm(1.0), jit_compile="auto"
    )
    return models


def compiled_main(chunks: int = 250, per_chunk: int = 20, batch: int = 256) -> None:
    """The compiled steps alone, in interleaved chunks (see the module docstring)."""
    import jax

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(batch, 256)).astype("float32"), rng.integers(0, 10, size=(batch,))
    data = (jax.numpy.asarray(x), jax.numpy.asarray(y))
    models = _variants(_model(keras.Model, None).get_weights())
    steps, states = {}, {}
    for name, model in models.items():
        model.fit(*data, batch_size=batch, epochs=1, verbose=0)  # Builds the optimizer and the figures.
        steps[name] = jax.jit(model.train_step, donate_argnums=0)
        states[name] = model._get_jax_state(True, True, True, True)
        for _ in range(5):  # Compiles and warms up.
            _, states[name] = steps[name](states[name], data)
    times: dict[str, list[float]] = {name: [] for name in models}
    order = list(models)
    for i in range(chunks):
        for name in order[i % len(order) :] + order[: i % len(order)]:
            start, state = time.process_time(), states[name]
            for _ in range(per_chunk):
                _, state = steps[name](state, data)
            states[name] = jax.block_until_ready(state)
            times[name].append((time.process_time() - start) / per_chunk)
    print(f"backend jax, compiled train_step, MLP 256-512-512-10, Adam, batch {batch}, {chunks} x {per_chunk} steps")
    print(f"{'variant':<24}{'CPU ms/step':>12}{'ratio':>8}{'q1':>7}{'q3':>7}")
    for name in order:
        ratio = sorted(t / p for t, p in zip(times[name], times["keras"]))
        q1, q3 = ratio[len(ratio) // 4], ratio[3 * len(ratio) // 4]
        median = statistics.median(times[name]) * 1e3
        print(f"{name:<24}{median:>12.3f}{statistics.median(ratio):>8.3f}{q1:>7.3f}{q3:>7.3f}")


def main(rounds: int = 40, steps: int = 128, batch: int = 256) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * batch, 256)).astype("float32")
    y = rng.integers(0, 10, size=(steps * batch,))
    models = _variants(_model(keras.Model, None).get_weights())
    for model in models.values():  # Warm-up: the first epoch traces and compiles.
        _cpu_per_step(model, x, y, batch)
    times: dict[str, list[float]] = {name: [] for name in models}
    order = list(models)
    for i in range(rounds):  # Interleaved rounds, the starting variant rotating.
        for name in order[i % len(order) :] + order[: i % len(order)]:
            times[name].append(_cpu_per_step(models[name], x, y, batch))
    print(f"backend {keras.backend.backend()}, MLP 256-512-512-10, Adam, batch {batch}, {rounds} x {steps} steps")
    print(f"{'variant':<24}{'CPU ms/step':>12}{'ratio':>8}{'min':>7}{'max':>7}")
    for name in order:
        ratio = [t / p for t, p in zip(times[name], times["keras"])]
        print(
            f"{name:<24}{statistics.median(times[name]) * 1e3:>12.3f}"
            f"{statistics.median(ratio):>8.3f}{min(ratio):>7.3f}{max(ratio):>7.3f}"
        )

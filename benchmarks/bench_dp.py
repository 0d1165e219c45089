"""What per-example clipping with noise (DP-SGD) costs per training step.

For each model, trains one copy per variant (same architecture, initial
weights and data; SGD; XLA on): plain `keras.Sequential` without privacy
(the baseline), `ClippingSequential` without clipping (the wrapper's own
cost), `PerExampleClip` with ghost norms without noise (per-example clipping
alone) and with noise (sigma = 1), and `PerExampleClip` with vectorized
per-example gradients for every layer. Each copy is warmed up (the
first epoch traces and compiles), then interleaved rounds of one `fit()`
epoch each are timed (`_timing.interleaved`, rotating the order). For every
variant it prints the median wall-clock and CPU time per step (CPU: all
threads of this process) and the median, min and max over the rounds of the
CPU-time ratio to the baseline timed in the same round. No figure is
asserted: this script measures.

With `--generators` it times instead, for each model, the noise alone: one
XLA-compiled function that adds Gaussian noise to tensors of the shapes of
the model's trainable variables, for each way of drawing it (TensorFlow's
stateless algorithms, `tf.random.Generator`, one flat draw split over the
variables, bfloat16, the inverse-CDF transform), with the CPU-time ratio
to the draw `PerExampleClip` uses (`stateless_normal` with Philox named).
With `--profile` it records one epoch of each variant with the TensorFlow
profiler and lists the XLA thunks that took the most time per step (see
`profile_step.py`).

    python benchmarks/bench_dp.py                   # every model (a few minutes)
    python benchmarks/bench_dp.py --models mlp --rounds 9
    python benchmarks/bench_dp.py --generators --models mlp,embedding
    python benchmarks/bench_dp.py --profile --models embedding   # XLA thunk times per step
    python benchmarks/bench_dp.py --tiny            # smoke test, < 60 s
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _timing import interleaved, machine_description, summary, time_epoch  # noqa: E402

import keras_clip as kc  # noqa: E402

CLASSES = 10
VARIANTS = ("keras", "kc_no_clip", "dp_ghost_no_noise", "dp_ghost", "dp_vectorized")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: its layers (after the input), its input, its batch size."""

    name: str
    layers: Callable[[bool], list[keras.layers.Layer]]
    inputs: Callable[[int, np.random.Generator], np.ndarray]
    input_shape: tuple
    input_dtype: str
    batch_size: int


def _mlp(tiny: bool) -> list[keras.layers.Layer]:
    width = 32 if tiny else 256
    return [
        keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(CLASSES),
    ]


def _embedding(tiny: bool) -> list[keras.layers.Layer]:
    return [
        keras.layers.Embedding(200 if tiny else 5000, 16 if tiny else 64),
        keras.layers.Dense(16 if tiny else 64, activation="relu"),  # on each of the positions
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(CLASSES),
    ]


def _conv(tiny: bool) -> list[keras.layers.Layer]:
    return [
        keras.layers.Conv2D(4 if tiny else 16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(CLASSES),
    ]


MODELS = {
    "mlp": ModelSpec("mlp", _mlp, lambda n, rng: rng.normal(size=(n, 64)).astype("float32"), (64,), "float32", 256),
    "embedding": ModelSpec(
        "embedding", _embedding, lambda n, rng: rng.integers(0, 200, (n, 32)).astype("int32"), (32,), "int32", 256
    ),
    "conv": ModelSpec(
        "conv", _conv, lambda n, rng: rng.normal(size=(n, 16, 16, 1)).astype("float32"), (16, 16, 1), "float32", 64
    ),
}


def build(spec: ModelSpec, variant: str, tiny: bool) -> keras.Model:
    keras.utils.set_random_seed(0)
    cls = keras.Sequential if variant == "keras" else kc.ClippingSequential
    model = cls([keras.Input(spec.input_shape, dtype=spec.input_dtype), *spec.layers(tiny)])
    kwargs: dict[str, Any] = {}
    if variant.startswith("dp_"):
        sigma = 0.0 if variant.endswith("no_noise") else 1.0
        ghost = variant.startswith("dp_ghost")
        kwargs["clipping"] = kc.PerExampleClip(1.0, noise_multiplier=sigma, seed=0, ghost_norms=ghost)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy", jit_compile=True, **kwargs
    )
    return model


def bench_model(spec: ModelSpec, rounds: int, steps: int, tiny: bool, variants: tuple = VARIANTS) -> list[str]:
    rng = np.random.default_rng(0)
    n = spec.batch_size * steps
    data = (spec.inputs(n, rng), rng.integers(0, CLASSES, (n,)).astype("int32"))
    models = {v: build(spec, v, tiny) for v in variants}
    for model in models.values():
        time_epoch(model, data, spec.batch_size, [])  # traces and compiles
    wall, cpu, load = interleaved(
        variants, rounds, lambda v: time_epoch(models[v], data, spec.batch_size, []), rotate=True
    )
    lines = [
        f"{spec.name} (batch {spec.batch_size}, {steps} steps per round, {rounds} rounds, "
        f"load {statistics.median(load):.2f})"
    ]
    lines.append(f"  {'variant':<20}{'wall ms':>9}{'cpu ms':>9}{'cpu ratio':>11}{'min':>7}{'max':>7}")
    for v in variants:
        median, mid, low, high = summary(cpu[v], cpu["keras"])
        lines.append(
            f"  {v:<20}{statistics.median(wall[v]) * 1e3:>9.2f}{median * 1e3:>9.2f}{mid:>11.2f}{low:>7.2f}{high:>7.2f}"
        )
    return lines


def _draws() -> dict[str, Callable[[list, tf.Tensor], list]]:
    """Ways of drawing standard normal noise for tensors of the given shapes, from a `(2,)` seed."""

    def stateless(alg: str, dtype: Any = tf.float32) -> Callable[[list, tf.Tensor], list]:
        def draw(shapes: list, seed: tf.Tensor) -> list:
            return [
                tf.cast(tf.random.stateless_normal(s, seed=seed + k, dtype=dtype, alg=alg), tf.float32)
                for k, s in enumerate(shapes)
            ]

        return draw

    def flat(shapes: list, seed: tf.Tensor) -> list:
        sizes = [int(np.prod(s)) for s in shapes]
        numbers = tf.random.stateless_normal([sum(sizes)], seed=seed, alg="philox")
        return [tf.reshape(n, s) for n, s in zip(tf.split(numbers, sizes), shapes)]

    def erfinv(shapes: list, seed: tf.Tensor) -> list:
        low = float(np.nextafter(np.float32(-1), np.float32(0)))
        return [
            np.float32(np.sqrt(2)) * tf.math.erfinv(tf.random.stateless_uniform(s, seed + k, low, 1.0, alg="philox"))
            for k, s in enumerate(shapes)
        ]

    def generator(alg: str) -> Callable[[list, tf.Tensor], list]:
        state = tf.random.Generator.from_seed(0, alg=alg)
        return lambda shapes, seed: [state.normal(s) for s in shapes]

    return {
        "philox": stateless("philox"),
        "auto_select (default)": stateless("auto_select"),
        "threefry": stateless("threefry"),
        "philox, one flat draw": flat,
        "philox, bfloat16": stateless("philox", tf.bfloat16),
        "philox, erfinv(uniform)": erfinv,
        "Generator philox": generator("philox"),
        "Generator threefry": generator("threefry"),
        "no noise (the add alone)": lambda shapes, seed: [tf.zeros(s) for s in shapes],
    }


def bench_generators(spec: ModelSpec, rounds: int, reps: int, tiny: bool) -> list[str]:
    """CPU time of adding noise to the model's gradients, per way of drawing it, under XLA."""
    shapes = [tuple(v.shape) for v in build(spec, "keras", tiny).trainable_variables]
    numbers = sum(int(np.prod(s)) for s in shapes)
    grads = [tf.ones(s) for s in shapes]
    functions = {}
    for name, draw in _draws().items():
        fn = tf.function(
            lambda gs, seed, draw=draw: [g + 0.01 * n for g, n in zip(gs, draw(shapes, seed))], jit_compile=True
        )
        fn(grads, tf.constant([0, 0], tf.int64))  # traces and compiles
        functions[name] = fn

    def timed(name: str) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for step in range(reps):
            out = functions[name](grads, tf.constant([1, step], tf.int64))
        out[0].numpy()
        return (time.perf_counter() - wall) / reps, (time.process_time() - cpu) / reps

    wall, cpu, load = interleaved(list(functions), rounds, timed, rotate=True)
    lines = [
        f"{spec.name}: noise for {numbers} numbers ({len(shapes)} variables), {rounds} rounds of {reps} draws, "
        f"load {statistics.median(load):.2f}"
    ]
    lines.append(f"  {'draw':<28}{'cpu ms':>9}{'ns/number':>11}{'ratio':>8}{'min':>7}{'max':>7}")
    for name in functions:
        median, mid, low, high = summary(cpu[name], cpu["philox"])
        lines.append(
            f"  {name:<28}{median * 1e3:>9.3f}{median * 1e9 / numbers:>11.1f}{mid:>8.2f}{low:>7.2f}{high:>7.2f}"
        )
    return lines


def profile_model(spec: ModelSpec, steps: int, tiny: bool, variants: tuple, top: int = 8) -> list[str]:
    """Per variant, the milliseconds per step of the XLA thunks that took the most time."""
    from profile_step import _WRAPPERS, thunk_times  # the profiler's protobufs load only for this

    rng = np.random.default_rng(0)
    n = spec.batch_size * steps
    x, y = spec.inputs(n, rng), rng.integers(0, CLASSES, (n,)).astype("int32")
    lines = []
    for variant in variants:
        model = build(spec, variant, tiny)
        model.fit(x, y, batch_size=spec.batch_size, epochs=2, shuffle=False, verbose=0)
        with tempfile.TemporaryDirectory() as trace_dir:
            tf.profiler.experimental.start(trace_dir)
            model.fit(x, y, batch_size=spec.batch_size, epochs=1, shuffle=False, verbose=0)
            tf.profiler.experimental.stop()
            times = thunk_times(trace_dir, steps)
        work = {k: v for k, v in times.items() if not _WRAPPERS.match(k)}
        lines.append(f"{spec.name} / {variant}: {sum(work.values()):.2f} ms of XLA thunks per step (all threads)")
        lines += [f"  {ms:8.3f}  {name}" for name, ms in sorted(work.items(), key=lambda kv: -kv[1])[:top]]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed epoch")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, keras first")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="small models, keras/dp_ghost/dp_vectorized, 2 rounds of 2 steps (smoke test)",
    )
    parser.add_argument("--generators", action="store_true", help="time the ways of drawing the noise alone")
    parser.add_argument("--profile", action="store_true", help="XLA thunk times per step of each variant")
    args = parser.parse_args()
    if args.generators:
        print(machine_description())
        for name in args.models.split(","):
            print("\n".join(bench_generators(MODELS[name], args.rounds, 20, args.tiny)))
        return
    if args.profile:
        for name in args.models.split(","):
            print("\n".join(profile_model(MODELS[name], args.steps, args.tiny, tuple(args.variants.split(",")))))
        return
    rounds, steps = (2, 2) if args.tiny else (args.rounds, args.steps)
    variants = ("keras", "dp_ghost", "dp_vectorized") if args.tiny else tuple(args.variants.split(","))
    print(machine_description())
    for name in args.models.split(","):
        print("\n".join(bench_model(MODELS[name], rounds, steps, args.tiny, variants)))


if __name__ == "__main__":
    main()

"""What clipping costs per training step, side by side with plain Keras and Keras's own clipping.

For each model and `steps_per_execution`, trains one copy of the model per
variant (same architecture, same initial weights, same data, Adam, XLA on),
warms each up (the first epoch traces and compiles), then runs interleaved
rounds (A B C ... B C ... A, rotating the start so no variant always follows
the same neighbour) of one `fit()` epoch each. For every variant it prints the
median wall-clock and CPU time per step (CPU: all threads of this process)
and the median, min and max over the rounds of its ratio to plain
`keras.Model` without clipping timed in the same round. The ratios are
per-round, so drift in the machine's load cancels; the load average is
printed with them. No figure is asserted: this script measures.

Then, unless `--no-memory`, each variant of the MLP (`--memory-models` for
others) is trained once more in a fresh subprocess (steps_per_execution=1)
to measure its first epoch (trace + XLA compile + a few steps) and its peak
resident memory.

    python benchmarks/bench_step.py                       # everything (about 15 minutes)
    python benchmarks/bench_step.py --models mlp --spe 1 --rounds 15
    python benchmarks/bench_step.py --variants keras,kc,kc_propagate --no-memory
    python benchmarks/bench_step.py --tiny                # smoke test, < 60 s
    python benchmarks/bench_step.py --backend jax         # ClipByGlobalNorm vs plain Keras on JAX (or torch), 40 epochs
    python benchmarks/bench_step.py --backend jax --compiled --rounds 250   # the compiled step alone, 250 chunks
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if "--backend" in sys.argv[:-1] and sys.argv[sys.argv.index("--backend") + 1] != "tensorflow":
    # Another backend: its own, TensorFlow-free comparison (set before Keras is imported).
    os.environ["KERAS_BACKEND"] = sys.argv[sys.argv.index("--backend") + 1]
    import _bench_backend

    if "--compiled" in sys.argv:
        if os.environ["KERAS_BACKEND"] != "jax":
            backend = os.environ["KERAS_BACKEND"]
            raise SystemExit(f"--compiled times jax.jit steps: it needs --backend jax. Received: --backend {backend}")
        chunks = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv[:-1] else 250
        _bench_backend.compiled_main(chunks=chunks)
    else:
        rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv[:-1] else 40
        _bench_backend.main(rounds=rounds)
    sys.exit(0)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _timing import interleaved, machine_description, steal_seconds, summary, time_epoch  # noqa: E402

import keras_clip as kc  # noqa: E402
from keras_clip import ops  # noqa: E402

CLASSES = 10


# ---------------------------------------------------------------- models


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: how to build it, its data, its batch size."""

    description: str
    build: Callable[[type, bool], keras.Model]
    data: Callable[[np.random.Generator, int, bool], np.ndarray]
    batch_size: int
    steps: int  # per round by default


def _mlp(cls: type, tiny: bool) -> keras.Model:
    features, width = (32, 64) if tiny else (784, 1024)
    inputs = keras.Input((features,))
    hidden = inputs
    for _ in range(4):
        hidden = keras.layers.Dense(width, activation="relu")(hidden)
    return cls(inputs, keras.layers.Dense(CLASSES)(hidden))


def _mlp_data(rng: np.random.Generator, n: int, tiny: bool) -> np.ndarray:
    return rng.normal(size=(n, 32 if tiny else 784)).astype("float32")


def _lstm(cls: type, tiny: bool) -> keras.Model:
    steps, units = (8, 16) if tiny else (28, 128)
    inputs = keras.Input((steps, steps))
    hidden = keras.layers.LSTM(units, return_sequences=True)(inputs)
    hidden = keras.layers.LSTM(units)(hidden)
    return cls(inputs, keras.layers.Dense(CLASSES)(hidden))


def _lstm_data(rng: np.random.Generator, n: int, tiny: bool) -> np.ndarray:
    side = 8 if tiny else 28
    return rng.normal(size=(n, side, side)).astype("float32")


# (sequence length, vocabulary, model width, heads, feed-forward width, blocks)
_TRANSFORMER = {False: (32, 1000, 128, 4, 256, 2), True: (8, 50, 16, 2, 32, 1)}


class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding of each position to a `(batch, length, width)` input."""

    def build(self, input_shape: tuple) -> None:
        self.positions = self.add_weight(shape=tuple(input_shape[1:]), initializer="zeros", name="positions")

    def call(self, x: Any) -> Any:
        return x + self.positions


def _transformer(cls: type, tiny: bool) -> keras.Model:
    length, vocabulary, width, heads, ff, blocks = _TRANSFORMER[tiny]
    inputs = keras.Input((length,), dtype="int32")
    x = PositionEmbedding()(keras.layers.Embedding(vocabulary, width)(inputs))
    for _ in range(blocks):
        attention = keras.layers.MultiHeadAttention(heads, width // heads)(x, x)
        x = keras.layers.LayerNormalization()(x + attention)
        hidden = keras.layers.Dense(ff, activation="relu")(x)
        x = keras.layers.LayerNormalization()(x + keras.layers.Dense(width)(hidden))
    pooled = keras.layers.GlobalAveragePooling1D()(x)
    return cls(inputs, keras.layers.Dense(CLASSES)(pooled))


def _transformer_data(rng: np.random.Generator, n: int, tiny: bool) -> np.ndarray:
    length, vocabulary = _TRANSFORMER[tiny][:2]
    return rng.integers(0, vocabulary, size=(n, length)).astype("int32")


MODELS = {
    "mlp": ModelSpec("784 -> 4 x Dense(1024, relu) -> Dense(10)", _mlp, _mlp_data, 64, 32),
    "lstm": ModelSpec("28 x 28 sequences -> LSTM(128) -> LSTM(128) -> Dense(10)", _lstm, _lstm_data, 32, 32),
    "transformer": ModelSpec(
        "32 tokens of 1000 -> Embedding(128) + positions -> 2 x [MHA(4 x 32), FFN(256), LayerNorm] -> Dense(10)",
        _transformer,
        _transformer_data,
        32,
        32,
    ),
}


# -------------------------------------------------------------- variants


class HandClippedModel(keras.Model):
    """The usual recipe: a hand-written `train_step` calling `tf.clip_by_global_norm`."""

    def train_step(self, data: Any) -> dict[str, Any]:
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred)
        variables = self.trainable_variables
        grads = tape.gradient(loss, variables)
        grads, norm = tf.clip_by_global_norm(grads, 1.0)
        self.optimizer.apply_gradients(zip(grads, variables))
        for metric in self.metrics:
            metric.update_state(loss) if metric.name == "loss" else metric.update_state(y, y_pred)
        return {"loss": self.metrics[0].result(), "grad_norm": norm}


class BarrierOnly(kc.ClipStrategy):
    """Control, not a clip: every update waits for one scalar read from every gradient.

    It has the data dependency of any global-norm clip (no variable can be
    updated before the last gradient is known) without the norm: it reads one
    entry per gradient and multiplies by a factor that is 1 for a finite
    gradient. The gap between it and plain Keras is what the dependency alone
    costs; the gap between it and `kc_propagate` is what the norm costs.
    """

    def clip_present(self, grads: list, variables: list) -> tuple[list, dict]:
        probe = tf.add_n([tf.reshape(ops.values_of(g), [-1])[0] for g in grads])
        factor = tf.where(tf.math.is_finite(probe), 1.0, 0.5)
        return [ops.scale(g, factor) for g in grads], {"grad_norm": probe, "clipped_grad_norm": probe}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of training: the model class, its compile arguments, its callbacks."""

    description: str
    model_class: type = keras.Model
    optimizer: dict = dataclasses.field(default_factory=dict)
    clipping: Callable[[], Any] | None = None
    on_nonfinite: str | None = None
    logger: dict | None = None


VARIANTS = {
    "keras": Variant("plain `keras.Model`, no clipping (baseline)"),
    "keras_again": Variant("a second copy of the baseline (control: its ratio shows the noise)"),
    "keras_clipnorm": Variant("`keras.Model`, `Adam(global_clipnorm=1.0)`", optimizer={"global_clipnorm": 1.0}),
    "handwritten": Variant("`keras.Model`, hand-written `train_step` with `tf.clip_by_global_norm`", HandClippedModel),
    "kc": Variant(
        "`ClippingModel`, `ClipByGlobalNorm(1.0)`", kc.ClippingModel, clipping=lambda: kc.ClipByGlobalNorm(1.0)
    ),
    "kc_propagate": Variant(
        '... `on_nonfinite="propagate"` (no skip condition)',
        kc.ClippingModel,
        clipping=lambda: kc.ClipByGlobalNorm(1.0),
        on_nonfinite="propagate",
    ),
    "barrier": Variant(
        "control: `ClippingModel` whose strategy only makes every update wait for one entry of every gradient "
        '(no norm; see `BarrierOnly`), `on_nonfinite="propagate"`',
        kc.ClippingModel,
        clipping=BarrierOnly,
        on_nonfinite="propagate",
    ),
    "kc_logger": Variant(
        "... + `GradientNormLogger` every step", kc.ClippingModel, clipping=lambda: kc.ClipByGlobalNorm(1.0), logger={}
    ),
    "kc_logger_pv": Variant(
        "... + `GradientNormLogger(per_variable=True)`",
        kc.ClippingModel,
        clipping=lambda: kc.ClipByGlobalNorm(1.0),
        logger={"per_variable": True},
    ),
    "kc_agc": Variant(
        "`ClippingModel`, `AdaptiveGradClip(0.01)`", kc.ClippingModel, clipping=lambda: kc.AdaptiveGradClip(0.01)
    ),
    "kc_autoclip": Variant("`ClippingModel`, `AutoClip()`", kc.ClippingModel, clipping=lambda: kc.AutoClip()),
    "kc_zclip": Variant("`ClippingModel`, `ZClip()`", kc.ClippingModel, clipping=lambda: kc.ZClip()),
}
BASELINE = "keras"
CHILD_STEPS = 8  # steps of the first epoch timed in a fresh process


def build(model: str, variant: str, spe: int, tiny: bool) -> keras.Model:
    """The model with the variant's class and compile arguments; same initial weights for every variant."""
    spec, v = MODELS[model], VARIANTS[variant]
    keras.utils.set_random_seed(0)
    net = spec.build(v.model_class, tiny)
    kwargs: dict[str, Any] = {}
    if v.clipping is not None:
        kwargs["clipping"] = v.clipping()
    if v.on_nonfinite is not None:
        kwargs["on_nonfinite"] = v.on_nonfinite
    net.compile(
        optimizer=keras.optimizers.Adam(1e-3, **v.optimizer),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=spe,
        jit_compile=True,
        **kwargs,
    )
    return net


def dataset(model: str, tiny: bool, batches: int = 16) -> tf.data.Dataset:
    """`batches` distinct batches of synthetic data, cached, repeated forever."""
    spec = MODELS[model]
    rng = np.random.default_rng(0)
    n = spec.batch_size * batches
    x = spec.data(rng, n, tiny)
    y = rng.integers(0, CLASSES, size=(n,)).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(spec.batch_size, drop_remainder=True)
    return data.cache().repeat().prefetch(2)


def callbacks_for(variant: str, log_dir: str) -> list[keras.callbacks.Callback]:
    logger = VARIANTS[variant].logger
    return [] if logger is None else [kc.GradientNormLogger(log_dir, **logger)]


# ----------------------------------------------------------------- timing


@dataclasses.dataclass
class GroupResult:
    """The measurements of one model at one steps_per_execution."""

    model: str
    spe: int
    steps: int
    rounds: int
    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    first_epoch: dict[str, float]
    load: list[float]
    steal: float
    weights: int


def run_group(model: str, spe: int, variants: list[str], args: argparse.Namespace, log_root: str) -> GroupResult:
    """Builds and warms up every variant, then times interleaved rounds."""
    steps = args.steps or max(MODELS[model].steps, spe)
    steps = -(-steps // spe) * spe  # whole executions
    data = dataset(model, args.tiny)
    runs = {}
    first_epoch = {}
    for variant in variants:
        net = build(model, variant, spe, args.tiny)
        log_dir = os.path.join(log_root, f"{model}_{spe}_{variant}")
        start = time.perf_counter()
        time_epoch(net, data, None, callbacks_for(variant, log_dir), steps_per_epoch=steps, shuffle=False)
        first_epoch[variant] = time.perf_counter() - start
        runs[variant] = (net, log_dir)
    weights = runs[BASELINE][0].count_params()

    def measure(variant: str) -> tuple[float, float]:
        net, log_dir = runs[variant]
        return time_epoch(net, data, None, callbacks_for(variant, log_dir), steps_per_epoch=steps, shuffle=False)

    steal = steal_seconds()
    wall, cpu, load = interleaved(variants, args.rounds, measure, rotate=True)
    steal = steal_seconds() - steal
    runs.clear()
    keras.backend.clear_session()
    gc.collect()
    return GroupResult(model, spe, steps, args.rounds, wall, cpu, first_epoch, load, steal, weights)


# ----------------------------------------------------------------- memory


def _status_kb(field: str) -> int | None:
    """A `VmRSS`/`VmHWM`-style field of /proc/self/status, in kB (None where there is no /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark (VmHWM) of this process (Linux: `5 > clear_refs`)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> None:
    """Subprocess entry: one variant, one first epoch; prints JSON with time and memory.

    Memory: the resident set size once TensorFlow is imported and the data
    made, and the peak resident set size from then to the end of the first
    epoch (the kernel's high-water mark, reset first; `ru_maxrss`, a peak
    since the process started, where that is not possible).
    """
    model, variant = args.child
    data = dataset(model, args.tiny)
    steps = args.steps or CHILD_STEPS
    reset = _reset_peak_rss()
    before = _status_kb("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    net = build(model, variant, 1, args.tiny)
    with tempfile.TemporaryDirectory() as log_dir:
        callbacks = callbacks_for(variant, log_dir)
        net.fit(data, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0, callbacks=callbacks)
        first = time.perf_counter() - start
    peak = _status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"first_epoch": first, "rss_before_kb": before, "rss_peak_kb": peak, "peak_reset": reset}))


def run_memory(model: str, variants: list[str], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Each variant's first epoch in a fresh process (steps_per_execution=1)."""
    results = {}
    for variant in variants:
        command = [sys.executable, os.path.abspath(__file__), "--child", model, variant]
        command += ["--tiny"] if args.tiny else []
        command += ["--steps", str(args.steps)] if args.steps else []
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


# ----------------------------------------------------------------- output


def print_group(result: GroupResult, args: argparse.Namespace) -> None:
    spec = MODELS[result.model]
    print(
        f"\n### {result.model}, steps_per_execution={result.spe}\n\n"
        f"{'(--tiny: reduced sizes) ' if args.tiny else ''}{spec.description}, "
        f"{result.weights / 1e6:.2f}M weights; batch {spec.batch_size}, "
        f"{result.steps} steps per round, {result.rounds} rounds; 1-min load average during the rounds "
        f"{min(result.load):.2f}-{max(result.load):.2f}, CPU time stolen by the host {result.steal:.1f} s\n"
    )
    print(
        "| variant | wall ms/step | wall ratio median (min-max) | CPU ms/step | CPU ratio median (min-max) "
        "| first epoch s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for variant in result.wall:
        wall = summary(result.wall[variant], result.wall[BASELINE])
        cpu = summary(result.cpu[variant], result.cpu[BASELINE])
        print(
            f"| {variant} | {wall[0] * 1e3:.2f} | {wall[1]:.3f} ({wall[2]:.3f}-{wall[3]:.3f}) "
            f"| {cpu[0] * 1e3:.2f} | {cpu[1]:.3f} ({cpu[2]:.3f}-{cpu[3]:.3f}) | {result.first_epoch[variant]:.1f} |"
        )
    sys.stdout.flush()


def print_memory(memory: dict[str, dict[str, dict[str, float]]]) -> None:
    print(
        f"\n### First epoch and peak memory, each variant in a fresh process (steps_per_execution=1)\n\n"
        f"first epoch: wall seconds from building the model to the end of its first epoch of {CHILD_STEPS} "
        "steps (trace, XLA compile, the steps). peak RSS: the process's peak resident set size over that "
        "span (the kernel's VmHWM, reset once TensorFlow is imported and the data made); growth: that "
        "peak minus the resident size at the reset, i.e. what building, compiling and training added "
        "at most.\n"
    )
    print("| model | variant | first epoch s | peak RSS MB | growth MB |")
    print("| --- | --- | ---: | ---: | ---: |")
    for model, rows in memory.items():
        for variant, row in rows.items():
            growth = (row["rss_peak_kb"] - row["rss_before_kb"]) / 1024
            peak = row["rss_peak_kb"] / 1024
            print(f"| {model} | {variant} | {row['first_epoch']:.1f} | {peak:.0f} | {growth:.0f} |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help=f"comma-separated, of {','.join(MODELS)} (default: all; mlp with --tiny)")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, of {','.join(VARIANTS)} (keras is always run)"
    )
    parser.add_argument("--spe", default="1,32", help="comma-separated steps_per_execution values")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=0, help="steps per round (default: per model, >= spe)")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process first-epoch/memory pass")
    parser.add_argument(
        "--memory-models", default="mlp", help="models of the memory pass, comma-separated or 'all' (default: mlp)"
    )
    parser.add_argument("--tiny", action="store_true", help="smoke test: tiny models, spe 1, 2 rounds, < 60 s")
    parser.add_argument("--backend", default="tensorflow", help="tensorflow (default), jax or torch")
    parser.add_argument("--json", help="also write the raw measurements to this file")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.models, args.spe, args.rounds, args.steps = args.models or "mlp", "1", 2, args.steps or 4
    args.models = args.models or ",".join(MODELS)
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    models = [m for m in args.models.split(",") if m]
    variants = [BASELINE] + [v for v in args.variants.split(",") if v and v != BASELINE]
    unknown = [m for m in models if m not in MODELS] + [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown model or variant: {unknown}")
    spes = [int(s) for s in args.spe.split(",")]
    print(f"machine: {machine_description()}; XLA on (jit_compile=True), Adam(1e-3)")
    print(f"load average at start: {os.getloadavg()}")
    print("command: python " + " ".join(sys.argv))
    print("\nvariants:\n" + "\n".join(f"- {name}: {v.description}" for name, v in VARIANTS.items() if name in variants))
    log_root = tempfile.mkdtemp(prefix="bench_step_")
    results, memory = [], {}
    try:
        for model in models:
            for spe in spes:
                result = run_group(model, spe, variants, args, log_root)
                results.append(result)
                print_group(result, args)
        if not args.no_memory:
            # A smoke test checks the memory pass runs; two variants are enough.
            measured = variants[:2] if args.tiny else variants
            chosen = models if args.memory_models == "all" else args.memory_models.split(",")
            memory = {model: run_memory(model, measured, args) for model in models if model in chosen}
            print_memory(memory)
    finally:
        shutil.rmtree(log_root, ignore_errors=True)
    print(f"\nload average at end: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": [dataclasses.asdict(r) for r in results], "memory": memory}, f, indent=1)


if __name__ == "__main__":
    main()

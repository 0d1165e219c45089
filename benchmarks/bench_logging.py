"""What logging every step with GradientNormLogger costs, against no logging.

Trains one model per variant (same architecture, same data, XLA on), warms
each up, then runs interleaved rounds (A B C ... A B C ...) of one epoch each
and reports the median wall-clock and CPU time per step of every variant and the ratio to the
no-logging variant with the same `steps_per_execution`, per round (median,
min, max). No variant is timed twice in a row, so drift in the machine's load
hits all of them alike.

    python benchmarks/bench_logging.py                 # 11 rounds of 128 steps
    python benchmarks/bench_logging.py --rounds 5 --samples 8192
    python benchmarks/bench_logging.py --tiny          # smoke test, a few seconds
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _timing import interleaved, machine_description, report, time_epoch  # noqa: E402

import keras_clip as kc  # noqa: E402

# name -> (steps_per_execution, logger keyword arguments or None for no logger)
VARIANTS = {
    "none, spe=1": (1, None),
    "logger, spe=1": (1, {}),
    "logger per_variable, spe=1": (1, {"per_variable": True}),
    "none, spe=8": (8, None),
    "logger, spe=8": (8, {}),
}


def build(steps_per_execution: int, features: int, width: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((features,))
    hidden = keras.layers.Dense(width, activation="relu")(inputs)
    hidden = keras.layers.Dense(width, activation="relu")(hidden)
    model = kc.ClippingModel(inputs, keras.layers.Dense(1)(hidden))
    model.compile(
        optimizer="adam",
        loss="mse",
        clipping=kc.ClipByGlobalNorm(1.0),
        steps_per_execution=steps_per_execution,
        jit_compile=True,
    )
    return model


def prepare(args: argparse.Namespace, data: tuple) -> dict:
    """One warmed-up model per variant, with a factory for its callbacks."""
    log_root = tempfile.mkdtemp(prefix="bench_logging_")
    runs = {}
    for i, (name, (spe, logger_kwargs)) in enumerate(VARIANTS.items()):
        model = build(spe, args.features, args.width)

        def callbacks(log_dir: str = os.path.join(log_root, f"variant{i}"), kwargs: dict | None = logger_kwargs):
            return [] if kwargs is None else [kc.GradientNormLogger(log_dir, **kwargs)]

        time_epoch(model, data, args.batch_size, callbacks())  # warm-up: trace and compile
        runs[name] = (model, callbacks)
    return runs


def print_results(args: argparse.Namespace, load_before: tuple, wall: dict, cpu: dict) -> None:
    steps = args.samples // args.batch_size
    print(f"machine: {machine_description()}, XLA on")
    print(f"load average before/after: {load_before} / {os.getloadavg()}")
    print(
        f"model: {args.features} -> Dense({args.width}) -> Dense({args.width}) -> Dense(1), Adam, "
        f"ClipByGlobalNorm(1.0); {steps} steps of batch {args.batch_size} per round; {args.rounds} rounds"
    )
    for label, times in (("wall-clock", wall), ("CPU time (all threads)", cpu)):
        print(f"\n{label}: ms/step (median) and ratio to no logging, same steps_per_execution")
        print(f"{'variant':<30}{'ms/step':>9}{'median':>8}{'min':>7}{'max':>7}")
        for name, (spe, _) in VARIANTS.items():
            print(report(name, times[name], times[f"none, spe={spe}"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--tiny", action="store_true", help="smoke test: 2 rounds of 8 small steps")
    args = parser.parse_args()
    if args.tiny:
        args.rounds, args.samples, args.batch_size, args.features, args.width = 2, 256, 32, 8, 16

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.samples, args.features)).astype("float32")
    data = (x, (x[:, :1] * 3.0).astype("float32"))
    load_before = os.getloadavg()
    runs = prepare(args, data)

    def measure(name: str) -> tuple[float, float]:
        model, callbacks = runs[name]
        return time_epoch(model, data, args.batch_size, callbacks())

    wall, cpu, _ = interleaved(list(VARIANTS), args.rounds, measure)
    print_results(args, load_before, wall, cpu)


if __name__ == "__main__":
    main()

"""Every adaptive strategy on the two problems clipping is for: a cliff and spikes.

Prints two Markdown tables, one row per strategy, same model, seed and data
for every row (`keras_clip.experiments`):

1. the seed experiment (`problems.seed_model`, SGD 0.07, momentum 0.8, 50
   epochs): first batch's loss, peak and final epoch loss, largest pre-clip
   norm and the outcome (`RunResult.outcome`);
2. the same data with five outlier targets (`problems.with_outliers`), SGD
   0.001, momentum 0.8, 30 epochs: the trained model's MSE on the clean
   targets and its ratio to no clipping.

What the tables show, and the figures measured, are in docs/strategies.md.

    python benchmarks/adaptive_problems.py            # 35 + 9 runs
    python benchmarks/adaptive_problems.py --tiny     # smoke test: 2 epochs, a few runs
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_clip as kc  # noqa: E402
from keras_clip.experiments import RunResult, RunSpec, problems, train  # noqa: E402

PERCENTILES = (0.0, 1.0, 5.0, 10.0, 25.0, 50.0)
HISTORY_SIZES = (10, 100, 1000)
OUTLIER_LEARNING_RATE = 0.001
OUTLIER_EPOCHS = 30


def seed_strategies(tiny: bool) -> dict[str, kc.ClipStrategy | None]:
    """Label -> strategy for the seed experiment: the fixed references, then each adaptive grid."""
    fixed = {"none": None, "ClipByGlobalNorm(1.0)": kc.ClipByGlobalNorm(1.0)}
    if tiny:
        return {**fixed, "AutoClip()": kc.AutoClip(), "ZClip()": kc.ZClip()}
    autoclip = {
        f"AutoClip({p:g}, history_size={n})": kc.AutoClip(p, history_size=n)
        for p, n in itertools.product(PERCENTILES, HISTORY_SIZES)
    }
    others = {
        "ZClip()": kc.ZClip(),
        "ZClip(max_norm=None)": kc.ZClip(max_norm=None),
        "ZClip(z_threshold=1.0, max_norm=None)": kc.ZClip(z_threshold=1.0, max_norm=None),
        "AdaptiveGradClip(0.01)": kc.AdaptiveGradClip(0.01),
        "AdaptiveGradClip(0.05)": kc.AdaptiveGradClip(0.05),
        "ClipByGlobalNorm(30.0)": kc.ClipByGlobalNorm(30.0),
        "Chain(ClipByGlobalNorm(3.0), AutoClip())": kc.Chain(kc.ClipByGlobalNorm(3.0), kc.AutoClip()),
        "Chain(ClipByGlobalNorm(30.0), AutoClip())": kc.Chain(kc.ClipByGlobalNorm(30.0), kc.AutoClip()),
        "Chain(ClipByGlobalNorm(100.0), AutoClip())": kc.Chain(kc.ClipByGlobalNorm(100.0), kc.AutoClip()),
    }
    return {**fixed, **autoclip, **others}


def outlier_strategies(tiny: bool) -> dict[str, kc.ClipStrategy | None]:
    """Label -> strategy for the outlier problem: one of each kind at its default or usual setting."""
    if tiny:
        return {"none": None, "AutoClip()": kc.AutoClip()}
    return {
        "none": None,
        "ClipByGlobalNorm(1.0)": kc.ClipByGlobalNorm(1.0),
        "ClipByGlobalNorm(30.0)": kc.ClipByGlobalNorm(30.0),
        "AutoClip()": kc.AutoClip(),
        "ZClip()": kc.ZClip(),
        "ZClip(max_norm=None)": kc.ZClip(max_norm=None),
        "AdaptiveGradClip(0.05)": kc.AdaptiveGradClip(0.05),
        "Chain(ClipByGlobalNorm(3.0), AutoClip())": kc.Chain(kc.ClipByGlobalNorm(3.0), kc.AutoClip()),
        "Chain(ClipByGlobalNorm(30.0), AutoClip())": kc.Chain(kc.ClipByGlobalNorm(30.0), kc.AutoClip()),
    }


def seed_row(label: str, result: RunResult) -> str:
    return (
        f"| {label} | {result.first_loss:.4g} | {max(result.epoch_loss):.4g} | {result.final_loss:.4g} "
        f"| {result.max_pre_clip:.4g} | {result.outcome} |"
    )


def seed_table(args: argparse.Namespace, epochs: int) -> None:
    data = problems.regression_data()
    print(
        f"### 1. Seed experiment, SGD({problems.SEED_LEARNING_RATE}, momentum={problems.SEED_MOMENTUM}), "
        f"{epochs} epochs, seed {args.seed}\n"
    )
    print("| strategy | first batch loss | peak epoch loss | final epoch loss | max pre-clip norm | outcome |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, clipping in seed_strategies(args.tiny).items():
        spec = RunSpec(
            name=label,
            build_model=problems.seed_model,
            build_optimizer=lambda: problems.sgd(problems.SEED_LEARNING_RATE, problems.SEED_MOMENTUM),
            data=data,
            clipping=clipping,
            label=label,
            epochs=epochs,
            batch_size=problems.SEED_BATCH_SIZE,
        )
        print(seed_row(label, train(spec, callbacks=[], seed=args.seed)), flush=True)


def clean_error(clipping: kc.ClipStrategy | None, data: tuple, noisy: np.ndarray, epochs: int, seed: int) -> float:
    """Trains on the noisy targets; returns the MSE on the clean ones."""
    keras.utils.set_random_seed(seed)
    model = problems.seed_model()
    optimizer = problems.sgd(OUTLIER_LEARNING_RATE, problems.SEED_MOMENTUM)
    model.compile(optimizer=optimizer, loss="mse", clipping=clipping, jit_compile=True, steps_per_execution=8)
    model.fit(data[0], noisy, batch_size=problems.SEED_BATCH_SIZE, epochs=epochs, verbose=0)
    return float(model.evaluate(*data, verbose=0))


def outlier_table(args: argparse.Namespace, epochs: int) -> None:
    data = problems.regression_data()
    noisy = problems.with_outliers(data[1])
    print(
        f"\n### 2. Five outlier targets (x10), SGD({OUTLIER_LEARNING_RATE}, momentum={problems.SEED_MOMENTUM}), "
        f"{epochs} epochs, seed {args.seed}\n"
    )
    print("| strategy | MSE on the clean targets | ratio to none |")
    print("| --- | --- | --- |")
    baseline = None
    for label, clipping in outlier_strategies(args.tiny).items():
        error = clean_error(clipping, data, noisy, epochs, args.seed)
        baseline = error if baseline is None else baseline
        print(f"| {label} | {error:.4g} | {error / baseline:.3g} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="2 epochs and a few runs: a smoke test")
    args = parser.parse_args()
    start = time.perf_counter()
    seed_table(args, epochs=2 if args.tiny else 50)
    outlier_table(args, epochs=2 if args.tiny else OUTLIER_EPOCHS)
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()

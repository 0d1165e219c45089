"""Every adaptive strategy on the seed experiment, over its own parameters.

The seed experiment (DESIGN.md §2): Dense(25, relu) -> Dense(1) on the
make_regression-like data, SGD(0.07, momentum=0.8), MSE, batch 128, 50
epochs. Without clipping it turns NaN in the first epoch. This script trains
the fixed-threshold references and a grid of each adaptive strategy's
parameters side by side (same seed, same data) and prints one table row per
run: first batch's loss, peak and final epoch loss, and the outcome by the
demo's rule (`diverged`: NaN/inf or an epoch loss above 10x the first batch's;
`converged`: final at most 10% of it; else `stalled`).

    python benchmarks/seed_adaptive.py            # the full grid, 24 runs, about 1.5 minutes
    python benchmarks/seed_adaptive.py --tiny     # smoke test: 2 epochs, 4 runs
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

import keras_clip as kc  # noqa: E402
from keras_clip.cli import problems  # noqa: E402
from keras_clip.cli.runs import RunResult, RunSpec, train  # noqa: E402

PERCENTILES = (0.0, 1.0, 5.0, 10.0, 25.0, 50.0)
HISTORY_SIZES = (10, 100, 1000)


def strategies(tiny: bool) -> dict[str, kc.ClipStrategy | None]:
    """Label -> strategy: the fixed references, then each adaptive grid."""
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
        "Chain(ClipByGlobalNorm(100.0), AutoClip())": kc.Chain(kc.ClipByGlobalNorm(100.0), kc.AutoClip()),
    }
    return {**fixed, **autoclip, **others}


def row(label: str, result: RunResult) -> str:
    peak = max(result.epoch_loss)
    return (
        f"| {label} | {result.first_loss:.4g} | {peak:.4g} | {result.final_loss:.4g} "
        f"| {result.max_pre_clip:.4g} | {result.outcome} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="2 epochs and 4 runs: a smoke test")
    args = parser.parse_args()
    epochs = 2 if args.tiny else args.epochs
    data = problems.regression_data()
    print(
        f"### Seed experiment, SGD({problems.SEED_LEARNING_RATE}, momentum={problems.SEED_MOMENTUM}), "
        f"{epochs} epochs, seed {args.seed}\n"
    )
    print("| strategy | first batch loss | peak epoch loss | final epoch loss | max pre-clip norm | outcome |")
    print("| --- | --- | --- | --- | --- | --- |")
    start = time.perf_counter()
    for label, clipping in strategies(args.tiny).items():
        spec = RunSpec(
            name=label,
            build_model=problems.seed_model,
            build_optimizer=lambda: keras.optimizers.SGD(problems.SEED_LEARNING_RATE, momentum=problems.SEED_MOMENTUM),
            data=data,
            clipping=clipping,
            label=label,
            epochs=epochs,
            batch_size=128,
        )
        print(row(label, train(spec, callbacks=[], seed=args.seed)), flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()

"""Every adaptive strategy on the problems clipping is for: a cliff, spikes, and late spikes.

Prints three Markdown tables, one row per strategy, same model, seed and data
for every row (`keras_clip.experiments`):

1. **The seed experiment** (`problems.seed_model`, SGD 0.07, momentum 0.8, 50
   epochs). Without clipping it turns NaN in the first epoch. One row per run:
   first batch's loss, peak and final epoch loss, largest pre-clip norm and the
   outcome (`RunResult.outcome`).
2. **Outliers** (`problems.with_outliers`): five targets made 10x too large,
   SGD 0.001, momentum 0.8, 30 epochs: the trained model's MSE on the clean
   targets and its ratio to no clipping.
3. **Late spikes**: a long healthy run, SGD(0.003, momentum=0.8) on the clean
   data, then a few poisoned batches (targets x30) among 64 more steps: the MSE
   after the healthy steps and at the end, the same strategy's final MSE without
   the poisoned batches, and the harm (their ratio; 1: as if never seen).

What the tables show, and the figures measured, are in docs/strategies.md.

    python benchmarks/adaptive_problems.py                    # 53 + 18 + 2 x 16 runs, 6 to 15 minutes
    python benchmarks/adaptive_problems.py --problems late    # one problem only
    python benchmarks/adaptive_problems.py --tiny             # smoke test: 2 epochs, a few runs
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
LATE_LEARNING_RATE = 0.003
HEALTHY_STEPS = 304  # 38 executions of 8 steps
POISON_OFFSETS = (0, 16, 32)  # poisoned batches among the last 64 steps
LATE_STEPS = 64
POISON_FACTOR = 30.0


def spike_strategies() -> dict[str, kc.ClipStrategy | None]:
    """The rules made for spikes in long runs, at their defaults and a setting or two."""
    return {
        "AdaGC()": kc.AdaGC(),
        "AdaGC(absolute=100.0)": kc.AdaGC(absolute=100.0),
        "SkipSpikes()": kc.SkipSpikes(),
        "Chain(SkipSpikes(), ClipByGlobalNorm(1.0))": kc.Chain(kc.SkipSpikes(), kc.ClipByGlobalNorm(1.0)),
        "ClipByBlockRMS(0.1)": kc.ClipByBlockRMS(0.1),
        "ClipByBlockRMS(1.0)": kc.ClipByBlockRMS(1.0),
        "ZClip(mode='percentile')": kc.ZClip(mode="percentile"),
        "ZClip(mode='percentile', max_norm=None)": kc.ZClip(mode="percentile", max_norm=None),
        "ZClip(max_norm=None, skip_update_on_spike=True)": kc.ZClip(max_norm=None, skip_update_on_spike=True),
    }


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
    return {**fixed, **autoclip, **others, **spike_strategies()}


def spike_references() -> dict[str, kc.ClipStrategy | None]:
    """Label -> strategy: the fixed and earlier adaptive rules every spike problem is measured with."""
    return {
        "none": None,
        "ClipByGlobalNorm(1.0)": kc.ClipByGlobalNorm(1.0),
        "ClipByGlobalNorm(30.0)": kc.ClipByGlobalNorm(30.0),
        "AutoClip()": kc.AutoClip(),
        "ZClip()": kc.ZClip(),
        "ZClip(max_norm=None)": kc.ZClip(max_norm=None),
        "AdaptiveGradClip(0.05)": kc.AdaptiveGradClip(0.05),
    }


def outlier_strategies(tiny: bool) -> dict[str, kc.ClipStrategy | None]:
    """Label -> strategy for the outlier problem: one of each kind at its default or usual setting."""
    if tiny:
        return {"none": None, "AutoClip()": kc.AutoClip()}
    return {
        **spike_references(),
        "Chain(ClipByGlobalNorm(3.0), AutoClip())": kc.Chain(kc.ClipByGlobalNorm(3.0), kc.AutoClip()),
        "Chain(ClipByGlobalNorm(30.0), AutoClip())": kc.Chain(kc.ClipByGlobalNorm(30.0), kc.AutoClip()),
        **spike_strategies(),
    }


def late_strategies(tiny: bool) -> dict[str, kc.ClipStrategy | None]:
    """Label -> strategy for the late spikes: the references and every rule made for spikes."""
    if tiny:
        return {"none": None, "SkipSpikes(window=8, warmup_steps=4)": kc.SkipSpikes(window=8, warmup_steps=4)}
    return {
        **spike_references(),
        **spike_strategies(),
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


def late_batches(healthy: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The batches of a long run, one after another: reshuffled epochs of the clean data.

    Returns:
        `(x, y, poisoned)`: `healthy + LATE_STEPS` batches of 128 rows, the
        targets of the batches at `healthy + POISON_OFFSETS` multiplied by
        `POISON_FACTOR`, and a mask of the poisoned rows.
    """
    x, y = problems.regression_data()
    steps, per_epoch = healthy + LATE_STEPS, len(x) // 128
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(x))[: per_epoch * 128] for _ in range(steps // per_epoch + 1)])
    xs, ys = x[order[: steps * 128]], y[order[: steps * 128]].copy()
    poisoned = np.zeros(len(xs), bool)
    for offset in POISON_OFFSETS:
        poisoned[(healthy + offset) * 128 : (healthy + offset + 1) * 128] = True
    ys[poisoned] *= POISON_FACTOR
    return xs, ys, poisoned


def late_errors(clipping: kc.ClipStrategy | None, batches: tuple, healthy: int, seed: int) -> tuple[float, float, int]:
    """Trains through the healthy steps, then the poisoned tail; clean MSE after each, and skipped steps."""
    x, y = problems.regression_data()
    xs, ys, keep = batches
    keras.utils.set_random_seed(seed)
    model = problems.seed_model()
    optimizer = problems.sgd(LATE_LEARNING_RATE, problems.SEED_MOMENTUM)
    model.compile(optimizer=optimizer, loss="mse", clipping=clipping, jit_compile=True, steps_per_execution=8)
    split = healthy * 128
    model.fit(xs[:split], ys[:split], batch_size=128, epochs=1, shuffle=False, verbose=0)
    before = float(model.evaluate(x, y, verbose=0))
    history = model.fit(xs[split:][keep[split:]], ys[split:][keep[split:]], batch_size=128, shuffle=False, verbose=0)
    skipped = int(history.history.get("skipped_steps", [0])[-1])
    return before, float(model.evaluate(x, y, verbose=0)), skipped


def late_table(args: argparse.Namespace) -> None:
    healthy = 16 if args.tiny else HEALTHY_STEPS
    xs, ys, poisoned = late_batches(healthy, args.seed)
    print(
        f"\n### 3. Late spikes: {healthy} healthy steps, then {len(POISON_OFFSETS)} poisoned batches (targets "
        f"x{POISON_FACTOR:g}) in {LATE_STEPS} more, SGD({LATE_LEARNING_RATE}, momentum={problems.SEED_MOMENTUM}), "
        f"seed {args.seed}\n"
    )
    print(
        "| strategy | clean MSE before the poison | at the end | at the end, without the poisoned batches "
        "| harm (ratio) | skipped steps |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    everything = np.ones(len(xs), bool)
    # Fresh strategies (fresh state) for the second run of each.
    unpoisoned = late_strategies(args.tiny)
    for label, clipping in late_strategies(args.tiny).items():
        before, end, skipped = late_errors(clipping, (xs, ys, everything), healthy, args.seed)
        _, clean_end, _ = late_errors(unpoisoned[label], (xs, ys, ~poisoned), healthy, args.seed)
        print(
            f"| {label} | {before:.4g} | {end:.4g} | {clean_end:.4g} | {end / clean_end:.3g} | {skipped} |", flush=True
        )


PROBLEMS = ("cliff", "spikes", "late")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="2 epochs and a few runs: a smoke test")
    parser.add_argument(
        "--problems", default=",".join(PROBLEMS), help=f"comma-separated, from {', '.join(PROBLEMS)} (default: all)"
    )
    args = parser.parse_args()
    chosen = args.problems.split(",")
    unknown = sorted(set(chosen) - set(PROBLEMS))
    if unknown:
        parser.error(f"unknown problems {unknown}; choose from {list(PROBLEMS)}")
    start = time.perf_counter()
    if "cliff" in chosen:
        seed_table(args, epochs=2 if args.tiny else 50)
    if "spikes" in chosen:
        outlier_table(args, epochs=2 if args.tiny else OUTLIER_EPOCHS)
    if "late" in chosen:
        late_table(args)
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()

"""`keras-clip lr-sweep`: does clipping let you raise the learning rate?"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Sequence

import keras_clip
from keras_clip.cli import plots, report
from keras_clip.cli.progress import Progress
from keras_clip.experiments import RunResult, RunSpec, problems, train


def specs(learning_rate: float, args: argparse.Namespace, data: tuple) -> list[RunSpec]:
    """The seed model at one learning rate: unclipped, then clipped at each global norm."""
    variants = [(None, "none")] + [
        (keras_clip.ClipByGlobalNorm(max_norm), f"ClipByGlobalNorm({max_norm:g})") for max_norm in args.max_norms
    ]
    return [
        RunSpec(
            name=f"lr={learning_rate:g}/{label}",
            build_model=problems.seed_model,
            build_optimizer=lambda: problems.sgd(learning_rate, args.momentum),
            data=data,
            clipping=clipping,
            label=label,
            epochs=args.epochs,
            batch_size=problems.SEED_BATCH_SIZE,
        )
        for clipping, label in variants
    ]


def epochs_to(result: RunResult, fraction: float = 0.01) -> str:
    """The first epoch whose loss is at most `fraction` of the first batch's loss."""
    for epoch, loss in enumerate(result.epoch_loss, start=1):
        if not math.isfinite(loss):
            break
        if loss <= fraction * result.first_loss:
            return str(epoch)
    return "-"


def cell(result: RunResult) -> str:
    """Final loss, outcome and (when reached) the epochs to 1% of the first loss."""
    reached = epochs_to(result)
    speed = f", 1% at epoch {reached}" if reached != "-" else ""
    return f"{report.number(result.final_loss)} ({result.outcome}{speed})"


def sweep_table(learning_rates: Sequence[float], results: dict[str, list[RunResult]]) -> str:
    """One row per learning rate, one column per variant."""
    columns = ["learning rate", *results]
    rows = [[f"{lr:g}", *(cell(runs[i]) for runs in results.values())] for i, lr in enumerate(learning_rates)]
    return report.table(columns, rows)


def run(args: argparse.Namespace) -> int:
    """Runs the sweep, prints its table and draws its figure; returns the exit status."""
    logdir = Path(args.logdir)
    start = time.perf_counter()
    data = problems.regression_data(seed=args.seed)
    all_specs = [spec for lr in args.learning_rates for spec in specs(lr, args, data)]
    variants = len(all_specs) // len(args.learning_rates)
    print(f"Training {len(all_specs)} runs ({len(args.learning_rates)} learning rates x {variants}).", flush=True)
    width = max(len(s.name) for s in all_specs)
    results: dict[str, list[RunResult]] = {}
    for i, spec in enumerate(all_specs, start=1):
        result = train(spec, [Progress(f"[{i}/{len(all_specs)}] {spec.name:<{width}}", spec.epochs)], args.seed)
        results.setdefault(spec.label, []).append(result)
    figure = plots.sweep_figure(args.learning_rates, results, logdir / "lr_sweep.png", args.epochs)
    payload = [{"learning_rate": lr, **runs[i].as_dict()} for runs in results.values() for i, lr in
               enumerate(args.learning_rates)]
    report.write_json(logdir / "results.json", payload)
    print()
    print(sweep_table(args.learning_rates, results))
    print()
    print(summary(args.learning_rates, results))
    print(f"Figure: {figure}   Summary: {logdir / 'results.json'}   ({time.perf_counter() - start:.0f}s)")
    return 0


def summary(learning_rates: Sequence[float], results: dict[str, list[RunResult]]) -> str:
    """One sentence per variant: the largest learning rate that did not diverge."""
    lines = []
    for label, runs in results.items():
        stable = [lr for lr, r in zip(learning_rates, runs) if r.outcome != "diverged"]
        diverged = [f"{lr:g}" for lr, r in zip(learning_rates, runs) if r.outcome == "diverged"]
        best = f"largest stable learning rate {max(stable):g}" if stable else "no stable learning rate"
        lines.append(f"{label}: {best}; diverged at: {', '.join(diverged) or 'none'}.")
    return "\n".join(lines)

"""`keras-clip demo`: the seed experiment and an exploding recurrent network."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import numpy as np

import keras_clip
from keras_clip.cli import plots, report
from keras_clip.cli.progress import Progress
from keras_clip.experiments import RunResult, RunSpec, problems, train


def _specs(
    variants: Sequence[tuple[str, Any, str]],
    build_model: Callable[[], keras.Model],
    optimizer: tuple[float, float],
    data: tuple[np.ndarray, np.ndarray],
    epochs: int,
    batch_size: int,
) -> list[RunSpec]:
    """One `RunSpec` per `(name, strategy, label)`, all else equal."""
    return [
        RunSpec(
            name=name,
            build_model=build_model,
            build_optimizer=lambda: problems.sgd(*optimizer),
            data=data,
            clipping=clipping,
            label=label,
            epochs=epochs,
            batch_size=batch_size,
        )
        for name, clipping, label in variants
    ]


def seed_specs(epochs: int, seed: int) -> list[RunSpec]:
    """The seed experiment: no clipping, by value, by global norm, adaptive (AGC)."""
    variants = [
        ("seed/none", None, "none"),
        ("seed/value", keras_clip.ClipByValue(1.0), "ClipByValue(1.0)"),
        ("seed/global-norm", keras_clip.ClipByGlobalNorm(1.0), "ClipByGlobalNorm(1.0)"),
        ("seed/agc", keras_clip.AdaptiveGradClip(0.1), "AdaptiveGradClip(0.1)"),
    ]
    optimizer = (problems.SEED_LEARNING_RATE, problems.SEED_MOMENTUM)
    data = problems.regression_data(seed=seed)
    return _specs(variants, problems.seed_model, optimizer, data, epochs, problems.SEED_BATCH_SIZE)


def rnn_specs(epochs: int, seed: int) -> list[RunSpec]:
    """The recurrent case: an IRNN on the integrator task, without and with clipping."""
    variants = [
        ("rnn/none", None, "none"),
        ("rnn/global-norm", keras_clip.ClipByGlobalNorm(1.0), "ClipByGlobalNorm(1.0)"),
    ]
    optimizer = (problems.RNN_LEARNING_RATE, problems.RNN_MOMENTUM)
    data = problems.integrator_data(seed=seed)
    return _specs(variants, problems.rnn_model, optimizer, data, epochs, problems.RNN_BATCH_SIZE)


def tensorboard_callbacks(run_dir: Path) -> list[keras.callbacks.Callback]:
    """Keras's TensorBoard (loss per epoch) beside keras_clip's norm logger (every step)."""
    return [
        keras.callbacks.TensorBoard(log_dir=str(run_dir), write_graph=False),
        keras_clip.GradientNormLogger(str(run_dir), update_freq="batch"),
    ]


def clear_events(run_dir: Path) -> int:
    """Deletes the TensorBoard event files a previous run left in `run_dir`; returns how many.

    Only files named `events.out.tfevents.*` are removed, so re-running the
    demo into the same directory does not draw two curves per run.
    """
    removed = 0
    if run_dir.is_dir():
        for path in run_dir.rglob("events.out.tfevents.*"):
            path.unlink()
            removed += 1
    return removed


def run_all(specs: Sequence[RunSpec], logdir: Path, seed: int) -> list[RunResult]:
    """Trains every run in turn, logging each under `logdir/<run name>`."""
    results = []
    width = max(len(s.name) for s in specs)
    for i, spec in enumerate(specs, start=1):
        run_dir = logdir / spec.name
        clear_events(run_dir)
        label = f"[{i}/{len(specs)}] {spec.name:<{width}}"
        callbacks = [Progress(label, spec.epochs), *tensorboard_callbacks(run_dir)]
        results.append(train(spec, callbacks, seed))
    return results


def run(args: argparse.Namespace) -> int:
    """Runs the demo and prints its table; returns the exit status."""
    backend = getattr(args, "backend", None)
    if backend is not None and backend != keras.backend.backend():
        # `keras-clip demo --backend X` sets KERAS_BACKEND before Keras loads; here Keras was loaded already.
        raise SystemExit(
            f"--backend {backend} must be chosen before Keras is imported: run `keras-clip demo --backend {backend}` "
            f"or set KERAS_BACKEND={backend}. Keras is using {keras.backend.backend()!r}."
        )
    logdir = Path(args.logdir)
    start = time.perf_counter()
    seed_runs = seed_specs(args.epochs, args.seed)
    rnn_runs = rnn_specs(args.epochs, args.seed)
    print(f"Training {len(seed_runs) + len(rnn_runs)} runs; TensorBoard logs go to {logdir}/<run>.", flush=True)
    results = run_all([*seed_runs, *rnn_runs], logdir, args.seed)
    seed_results, rnn_results = results[: len(seed_runs)], results[len(seed_runs) :]
    figure = plots.demo_figure(
        [
            (f"seed MLP, SGD({problems.SEED_LEARNING_RATE}, {problems.SEED_MOMENTUM})", seed_results),
            (f"IRNN, SGD({problems.RNN_LEARNING_RATE}, {problems.RNN_MOMENTUM})", rnn_results),
        ],
        logdir / "demo.png",
    )
    report.write_json(logdir / "results.json", [r.as_dict() for r in results])
    print()
    print(report.demo_table(results))
    print()
    print(f"Figure: {figure}   Summary: {logdir / 'results.json'}   ({time.perf_counter() - start:.0f}s)")
    print(f"To see every step's pre- and post-clip gradient norm: tensorboard --logdir {logdir}")
    return 0

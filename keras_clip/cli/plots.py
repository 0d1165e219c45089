"""Figures for the CLI, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import matplotlib.transforms

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from keras_clip.experiments.runs import RunResult  # noqa: E402


def _finite(values: Sequence[float]) -> tuple[list[int], list[float]]:
    pairs = [(i, v) for i, v in enumerate(values) if math.isfinite(v) and v > 0]
    return [i for i, _ in pairs], [v for _, v in pairs]


def _mark_divergence(ax: Any, values: Sequence[float], color: str) -> None:
    """Draws an x where a curve stops being finite (at the top if it never was)."""
    xs, ys = _finite(values)
    if len(xs) == len(values):
        return
    if xs:
        ax.plot(xs[-1] + 1, ys[-1], "x", color=color, markersize=10, markeredgewidth=2)
    else:
        top = matplotlib.transforms.blended_transform_factory(ax.transData, ax.transAxes)
        ax.plot(1, 0.95, "x", color=color, markersize=10, markeredgewidth=2, transform=top)


def _loss_panel(ax: Any, results: Sequence[RunResult], title: str) -> None:
    for i, result in enumerate(results):
        color = f"C{i}"
        xs, ys = _finite(result.epoch_loss)
        ax.plot([x + 1 for x in xs], ys, color=color, label=f"{result.clipping} ({result.outcome})")
        _mark_divergence(ax, result.epoch_loss, color)
    ax.set(title=title, xlabel="epoch", ylabel="training loss (MSE)", yscale="log")
    ax.plot([], [], "kx", label="turned NaN/inf")
    ax.legend(fontsize="x-small")


def _norm_panel(ax: Any, result: RunResult, color: str) -> None:
    xs, ys = _finite(result.pre_clip)
    ax.plot([x + 1 for x in xs], ys, color=color, alpha=0.45, linewidth=0.8, label="pre-clip")
    _mark_divergence(ax, result.pre_clip, color)
    if result.clipping != "none":
        xs, ys = _finite(result.post_clip)
        ax.plot([x + 1 for x in xs], ys, color="black", linestyle="--", linewidth=1.0, label="post-clip")
    bad = next((i for i, v in enumerate(result.pre_clip) if not math.isfinite(v)), None)
    if bad is not None:
        ax.text(0.5, 0.5, f"NaN/inf from step {bad + 1}", transform=ax.transAxes, ha="center", color="darkred")
    ax.set(xlabel="step", ylabel="global gradient norm", yscale="log", xlim=(0, len(result.pre_clip) + 1))
    ax.set_title(f"{result.name}: {result.clipping}", fontsize="medium")
    ax.legend(fontsize="x-small", loc="upper right")


def _share_y(axes: Sequence[Any]) -> None:
    """Gives panels the union of their y ranges, so norms compare at a glance."""
    limits = [ax.get_ylim() for ax in axes]
    for ax in axes:
        ax.set_ylim(min(low for low, _ in limits), max(high for _, high in limits))


def demo_figure(groups: Sequence[tuple[str, Sequence[RunResult]]], path: Path) -> Path:
    """One row per problem: its loss per epoch, then each run's pre/post-clip norm per step.

    An x marks the last finite point of a run that turned NaN or infinite.
    """
    columns = 1 + max(len(results) for _, results in groups)
    fig, axes = plt.subplots(len(groups), columns, figsize=(3.4 * columns, 3.3 * len(groups)), squeeze=False)
    for row, (title, results) in zip(axes, groups):
        _loss_panel(row[0], results, title)
        for i, result in enumerate(results):
            _norm_panel(row[i + 1], result, f"C{i}")
        _share_y(row[1 : len(results) + 1])
        for ax in row[len(results) + 1 :]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def sweep_figure(
    learning_rates: Sequence[float], results: dict[str, list[RunResult]], path: Path, epochs: int
) -> Path:
    """Final loss against learning rate, one line per variant; x where it diverged."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, runs) in enumerate(results.items()):
        color = f"C{i}"
        finals = [r.final_loss for r in runs]
        ok = [(lr, f) for lr, f in zip(learning_rates, finals) if math.isfinite(f)]
        ax.plot([lr for lr, _ in ok], [f for _, f in ok], "o-", color=color, label=label)
        bad = [lr for lr, r in zip(learning_rates, runs) if r.outcome == "diverged"]
        top = max([f for _, f in ok] + [r.first_loss for r in runs if math.isfinite(r.first_loss)] + [1.0])
        ax.plot(bad, [top * 2] * len(bad), "x", color=color, markersize=10, markeredgewidth=2)
    ax.plot([], [], "kx", label="diverged (NaN/inf, or loss > 10x its start)")
    ax.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="final training loss")
    ax.set_title(f"Final loss after {epochs} epochs, with and without clipping")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path

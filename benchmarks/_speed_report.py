"""Summaries, tables and the figure of `clipping_speed.py`, from its per-run records.

A record is one run: `{"family", "label", "kind", "lr", "seed", "losses"}`,
`losses` the epoch losses. A configuration is a (label, learning rate) pair;
its score is the median over seeds of the final loss (NaN and inf rank last).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
from _speed_families import Family, kind_of

Record = dict[str, Any]


def _final(losses: Sequence[float]) -> float:
    return losses[-1] if losses and math.isfinite(losses[-1]) else math.inf


def steps_to(losses: Sequence[float], target: float, steps_per_epoch: int) -> float:
    """Steps until the first epoch whose mean loss is at most `target` (inf if none; NaN stops the count)."""
    for epoch, loss in enumerate(losses, start=1):
        if not math.isfinite(loss):
            break
        if loss <= target:
            return float(epoch * steps_per_epoch)
    return math.inf


def configurations(records: Sequence[Record], family: Family) -> dict[tuple[str, float], dict[str, Any]]:
    """(label, lr) -> median final loss and steps to target over seeds, and the per-seed values."""
    grouped: dict[tuple[str, float], list[Record]] = defaultdict(list)
    for record in records:
        grouped[(record["label"], record["lr"])].append(record)
    out = {}
    for key, runs in grouped.items():
        finals = [_final(r["losses"]) for r in runs]
        steps = [steps_to(r["losses"], family.target, family.steps_per_epoch) for r in runs]
        out[key] = {
            "final": float(np.median(finals)), "finals": finals,
            "steps": float(np.median(steps)), "all_steps": steps, "kind": kind_of(key[0]),
        }
    return out


def best_per_kind(configs: dict[tuple[str, float], dict[str, Any]], family: Family) -> list[dict[str, Any]]:
    """One row per kind: its best configuration, how fast it reached the target, over which learning rates."""
    rows = []
    for kind in dict.fromkeys(c["kind"] for c in configs.values()):
        mine = {key: c for key, c in configs.items() if c["kind"] == kind}
        (label, lr), best = min(mine.items(), key=lambda item: (item[1]["final"], item[1]["steps"]))
        reaching = sorted({key[1] for key, c in mine.items() if c["final"] <= family.target})
        fastest = min(c["steps"] for c in mine.values())
        rows.append({
            "kind": kind, "label": label, "lr": lr, "final": best["final"], "finals": best["finals"],
            "steps": best["steps"], "fastest_steps": fastest, "reaching": reaching,
        })
    top = min(row["final"] for row in rows)
    for row in rows:
        row["ratio"] = row["final"] / top if math.isfinite(row["final"]) and top > 0 else math.inf
    return rows


def number(value: float) -> str:
    """Four significant digits; `nan/inf` for a run that diverged."""
    return f"{value:.4g}" if math.isfinite(value) else "nan/inf"


def _steps(value: float) -> str:
    return f"{value:.0f}" if math.isfinite(value) else "not reached"


def _spread(values: Sequence[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if len(values) < 2:
        return "one seed"
    if len(finite) < len(values):
        return f"{len(values) - len(finite)} of {len(values)} seeds non-finite"
    return f"{number(min(finite))}–{number(max(finite))}"


def _lr_range(reaching: Sequence[float], grid: Sequence[float]) -> str:
    if not reaching:
        return f"none of {len(grid)}"
    return f"{min(reaching):g}–{max(reaching):g} ({len(reaching)} of {len(grid)})"


def kind_table(rows: Sequence[dict[str, Any]], family: Family) -> str:
    """The Markdown table of one family: one row per kind."""
    lines = [
        "| kind | best configuration | final loss (median) | ratio to best | steps to target (median) | "
        "fastest to target | learning rates reaching target | final loss over seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['label']}, lr {r['lr']:g} | {number(r['final'])} | {r['ratio']:.2f} | "
            f"{_steps(r['steps'])} | {_steps(r['fastest_steps'])} | "
            f"{_lr_range(r['reaching'], family.learning_rates)} | {_spread(r['finals'])} |"
        )
    return "\n".join(lines)


def suggest_line(row: dict[str, Any], best: float) -> str:
    """One sentence: what the rule suggested and how its run compares with the best tuned run."""
    if row.get("threshold") is None:
        return f"- suggest (percentile {row['percentile']:g}): {row['why']}"
    ratio = row["final"] / best if math.isfinite(row["final"]) else math.inf
    verdict = "within" if ratio <= 1.5 else "NOT within"
    return (
        f"- suggest (percentile {row['percentile']:g}): ClipByGlobalNorm({row['threshold']:g}) at lr "
        f"{row['lr']:g} (the short run's): final loss {number(row['final'])} (seeds {_spread(row['finals'])}), "
        f"{ratio:.3g}x the best tuned run: {verdict} 1.5x"
    )


def figure(results: Sequence[dict[str, Any]], path: str) -> None:
    """Median final loss vs learning rate, one line per kind, one panel per family (non-finite drawn at the top)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2))
    for ax, result in zip(np.atleast_1d(axes), results):
        family, configs = result["family"], result["configs"]
        ceiling = 10 * family.baseline
        for kind in dict.fromkeys(c["kind"] for c in configs.values()):
            finals = [min((c["final"] for (lab, lr), c in configs.items() if c["kind"] == kind and lr == grid_lr),
                          default=math.inf) for grid_lr in family.learning_rates]
            shown = [min(v, ceiling) for v in finals]
            line, = ax.plot(family.learning_rates, shown, "o-", label=kind)
            off = [lr for lr, v in zip(family.learning_rates, finals) if v > ceiling]
            ax.plot(off, [ceiling] * len(off), "x", color=line.get_color(), markersize=9)
        ax.axhline(family.target, color="gray", linestyle="--", linewidth=1, label="target")
        ax.set(xscale="log", yscale="log", xlabel="learning rate (SGD)", title=f"{family.name} (x: diverged)")
    np.atleast_1d(axes)[0].set_ylabel("final loss, median over seeds")
    np.atleast_1d(axes)[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

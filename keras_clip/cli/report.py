"""Plain-text tables and the JSON summary the CLI writes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from keras_clip.experiments.runs import RunResult

DEMO_COLUMNS = ("run", "clipping", "final loss", "max pre-clip norm", "steps clipped", "non-finite steps", "outcome")


def number(value: float) -> str:
    """Four significant digits; NaN and infinities spelled out."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, aligned so it also reads well in a terminal."""
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def demo_table(results: Sequence[RunResult]) -> str:
    """The demo's table: one row per run."""
    rows = [
        (
            r.name,
            r.clipping,
            number(r.final_loss),
            number(r.max_pre_clip),
            f"{r.steps_clipped}/{len(r.pre_clip)}",
            str(r.nonfinite_steps),
            r.outcome,
        )
        for r in results
    ]
    return table(DEMO_COLUMNS, rows)


def write_json(path: Path, payload: object) -> Path:
    """Writes `payload` as indented JSON."""
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path

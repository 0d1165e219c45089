"""`keras-clip suggest`: what a run's logged pre-clip norms show, and a percentile of them as a threshold.

It reports; it does not tune. Measured on three model families (see the
"Does clipping make training faster?" page of the docs), a threshold read
off a short run and used at that run's learning rate does not reliably
come close to the best tuned run: the learning rate has to be tuned with
the threshold, because while every step is clipped only their product
matters.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.util import tensor_util

from keras_clip.callbacks import layout

EVENT_GLOB = "events.out.tfevents.*"
# Norms whose last quarter's median is this many times their first quarter's describe a diverging run.
GROWTH_DIVERGING = 10.0


class LogdirError(ValueError):
    """`--logdir` holds no pre-clip norms to read; the message says what it holds instead."""


def _event_dir(logdir: Path) -> Path:
    """`logdir/train` (where `GradientNormLogger` writes), or `logdir` itself if it holds the event files."""
    if not logdir.is_dir():
        raise LogdirError(f"no such directory: {str(logdir)!r}")
    for candidate in (logdir / "train", logdir):
        if candidate.is_dir() and any(candidate.glob(EVENT_GLOB)):
            return candidate
    runs = sorted(str(p.parent.relative_to(logdir)) for p in logdir.glob("**/train") if any(p.glob(EVENT_GLOB)))
    hint = f"; it holds these runs, pass one: {', '.join(runs)}" if runs else ""
    raise LogdirError(f"no TensorBoard event files in {str(logdir / 'train')!r} or {str(logdir)!r}{hint}")


def read_norms(logdir: str | Path, tag: str = layout.PRE_CLIP) -> list[float]:
    """Every logged value of the scalar `tag` under `logdir`, in step order.

    Reads the event files with TensorBoard's own reader, so TensorFlow is not
    needed.

    Args:
        logdir: String or path. The `log_dir` given to `GradientNormLogger`, or its `train` subdirectory.
        tag: String. The scalar to read (default: the pre-clip global norm, `grad_norm/pre_clip`).

    Returns:
        One float per logged step (NaN and inf included).

    Raises:
        LogdirError: if `logdir` does not exist, holds no event files or has no `tag`.
    """
    event_dir = _event_dir(Path(logdir).expanduser())
    accumulator = plugin_event_accumulator.EventAccumulator(str(event_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    tags = accumulator.Tags().get("tensors", [])
    if tag not in tags:
        raise LogdirError(
            f"{str(event_dir)!r} has no {tag!r} scalars (log the run with keras_clip.GradientNormLogger); "
            f"its tags: {', '.join(sorted(tags)) or 'none'}"
        )
    events = sorted(accumulator.Tensors(tag), key=lambda event: event.step)
    return [float(tensor_util.make_ndarray(event.tensor_proto)) for event in events]


@dataclasses.dataclass(frozen=True)
class Suggestion:
    """A threshold read off a run's pre-clip norms, and what it would have done to that run.

    Args:
        percentile: Float. The percentile the threshold is.
        threshold: Float. That percentile of the finite norms, to three significant digits.
        median: Float. The median finite norm.
        largest: Float. The largest finite norm.
        steps: Integer. Steps with a finite norm.
        nonfinite_steps: Integer. Steps whose norm was NaN or inf (left out).
        steps_clipped: Integer. Finite steps whose norm is above the threshold.
        first_median: Float. The median finite norm of the first quarter of the steps (at least one step).
        last_median: Float. The median finite norm of the last quarter of the finite steps.
    """

    percentile: float
    threshold: float
    median: float
    largest: float
    steps: int
    nonfinite_steps: int
    steps_clipped: int
    first_median: float
    last_median: float

    @property
    def growth(self) -> float:
        """How many times larger the norms of the last quarter are than those of the first."""
        return self.last_median / self.first_median if self.first_median > 0 else math.inf

    @property
    def diverging(self) -> bool:
        """True if the norms turned NaN/inf or grew `GROWTH_DIVERGING` times or more over the run."""
        return self.nonfinite_steps > 0 or self.growth >= GROWTH_DIVERGING


def suggest(norms: Sequence[float], percentile: float) -> Suggestion:
    """Suggests `ClipByGlobalNorm(threshold)` with `threshold` the `percentile`-th percentile of `norms`.

    Percentiles interpolate linearly, as numpy's default; non-finite norms
    are left out and counted.

    Args:
        norms: Sequence of floats. One pre-clip global norm per step.
        percentile: Float in (0, 100].

    Returns:
        A `Suggestion`.

    Raises:
        ValueError: if no norm is finite.
    """
    finite = np.array([n for n in norms if math.isfinite(n)], dtype=np.float64)
    if finite.size == 0:
        raise ValueError(f"no finite norm to suggest a threshold from. Received: {len(norms)} norms, none finite")
    threshold = float(f"{np.percentile(finite, percentile):.3g}")
    quarter = max(1, finite.size // 4)
    return Suggestion(
        percentile=percentile,
        threshold=threshold,
        median=float(np.median(finite)),
        largest=float(finite.max()),
        steps=int(finite.size),
        nonfinite_steps=len(norms) - int(finite.size),
        steps_clipped=int(np.sum(finite > threshold)),
        first_median=float(np.median(finite[:quarter])),
        last_median=float(np.median(finite[-quarter:])),
    )


def describe(suggestion: Suggestion, source: str) -> str:
    """What the norms show and the percentile as a threshold, as the command prints it."""
    s = suggestion
    nonfinite = f" ({s.nonfinite_steps} non-finite left out)" if s.nonfinite_steps else ""
    share = 100.0 * s.steps_clipped / s.steps
    lines = [
        f"Pre-clip gradient norm ({layout.PRE_CLIP}) of {s.steps} steps in {source}{nonfinite}:",
        f"  median {s.median:.3g}; percentile {s.percentile:g}: {s.threshold:.3g}; largest {s.largest:.3g}",
        f"  first quarter of the steps: median {s.first_median:.3g}; last quarter: median {s.last_median:.3g} "
        f"({s.growth:.2g}x)",
        f"Percentile {s.percentile:g} as a threshold: clipping=keras_clip.ClipByGlobalNorm({s.threshold:g})",
        f"  it would have clipped {s.steps_clipped} of these {s.steps} steps ({share:.1f}%).",
    ]
    if s.diverging:
        turned = "turned NaN/inf" if s.nonfinite_steps else f"grew {s.growth:.2g}x"
        lines += [
            f"Warning: these norms {turned}: they describe a diverging run, and a threshold read off",
            "  them is far above one that keeps it stable. Log a run that trains (a smaller learning rate)",
            "  and read its norms.",
        ]
    lines += [
        "Not a tuned setting: a threshold read off one run, used at that run's learning rate, was not reliably",
        "  close to the best tuned run in measured sweeps. While every step is clipped only",
        "  learning_rate x threshold matters: tune the learning rate together with the threshold.",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Prints the suggestion for `args.logdir`; a usage error if it has no norms to read."""
    try:
        norms = read_norms(args.logdir)
        suggestion = suggest(norms, args.percentile)
    except ValueError as error:  # LogdirError included
        args.subparser.error(f"argument --logdir: {error}")
    print(describe(suggestion, args.logdir))
    return 0

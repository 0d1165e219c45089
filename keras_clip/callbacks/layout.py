"""TensorBoard tag names and the custom-scalars layout of the gradient logs.

Every tag the callbacks write is named here, so the docs, the tests and the
layout cannot drift apart.
"""

from __future__ import annotations

import math
from typing import Any

from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import summary as custom_scalar_summary

PRE_CLIP = "grad_norm/pre_clip"
POST_CLIP = "grad_norm/post_clip"
THRESHOLD = "grad_norm/threshold"
CLIP_FACTOR = "clipping/factor"
CLIPPED = "clipping/clipped"
NONFINITE_STEPS = "clipping/nonfinite_steps"
SKIPPED_STEPS = "clipping/skipped_steps"
SPIKE = "grad_norm/spike"
PER_VARIABLE_PREFIX = "grad_norm_by_variable/"
VARIABLE_THRESHOLD = PER_VARIABLE_PREFIX + "threshold"
HISTOGRAM_PREFIX = "gradients/"

# Statistic reported by the train step -> tag; others go to `clipping/<name>`.
_STAT_TAGS = {
    "grad_norm": PRE_CLIP,
    "clipped_grad_norm": POST_CLIP,
    "threshold": THRESHOLD,
    "variable_threshold": VARIABLE_THRESHOLD,
    "nonfinite_steps": NONFINITE_STEPS,
    "skipped_steps": SKIPPED_STEPS,
}


def stat_tag(name: str) -> str:
    """The tag of a statistic of the train step (e.g. `grad_norm` -> `grad_norm/pre_clip`)."""
    return _STAT_TAGS.get(name, f"clipping/{name}")


def scalars_of(stats: dict[str, float]) -> dict[str, float]:
    """Maps one step's statistics to the scalar tags to write.

    Adds `clipping/factor` (post-clip over pre-clip norm: 1 when nothing was
    clipped, NaN when the pre-clip norm is not finite) and `clipping/clipped`
    (1 when the step was clipped, else 0).

    Args:
        stats: Dict of str to float, as recorded by the train step.
    """
    scalars = {stat_tag(name): value for name, value in stats.items()}
    pre, post = stats.get("grad_norm"), stats.get("clipped_grad_norm")
    if pre is not None and post is not None:
        factor = _factor(pre, post)
        scalars[CLIP_FACTOR] = factor
        scalars[CLIPPED] = 1.0 if factor < 1.0 else 0.0
    return scalars


def _factor(pre: float, post: float) -> float:
    if not (math.isfinite(pre) and math.isfinite(post)):
        return math.nan
    return post / pre if pre > 0 else 1.0


def layout() -> layout_pb2.Layout:
    """The custom-scalars layout: pre-clip, post-clip and threshold on one chart."""
    norms = layout_pb2.Chart(
        title="Global gradient norm: pre-clip, post-clip, threshold",
        multiline=layout_pb2.MultilineChartContent(
            tag=[f"^{PRE_CLIP}$", f"^{POST_CLIP}$", f"^{THRESHOLD}$"]
        ),
    )
    factor = layout_pb2.Chart(
        title="Clip factor (post-clip / pre-clip) and clipped steps",
        multiline=layout_pb2.MultilineChartContent(tag=[f"^{CLIP_FACTOR}$", f"^{CLIPPED}$"]),
    )
    nonfinite = layout_pb2.Chart(
        title="Steps not applied (total): non-finite, skipped",
        multiline=layout_pb2.MultilineChartContent(tag=[f"^{NONFINITE_STEPS}$", f"^{SKIPPED_STEPS}$"]),
    )
    category = layout_pb2.Category(title="Gradient clipping", chart=[norms, factor, nonfinite])
    return layout_pb2.Layout(category=[category])


def layout_summary() -> Any:
    """The layout as a `Summary` proto, ready to write at any step."""
    return custom_scalar_summary.pb(layout())

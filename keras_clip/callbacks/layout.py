"""TensorBoard tag names and the custom-scalars layout of the gradient logs.

Every tag the callbacks write is named here, so the docs, the tests and the
layout cannot drift apart.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.custom_scalar import layout_pb2, metadata
from tensorboard.util import tensor_util

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
# The largest variable's norm before and after, in the norm `variable_threshold` bounds.
VARIABLE_MAX_PRE_CLIP = PER_VARIABLE_PREFIX + "max_pre_clip"
VARIABLE_MAX_POST_CLIP = PER_VARIABLE_PREFIX + "max_post_clip"
# A global-norm strategy measuring the 1- or inf-norm: its norms and threshold, charted apart from L2.
STRATEGY_NORM_PRE_CLIP = "strategy_norm/pre_clip"
STRATEGY_NORM_POST_CLIP = "strategy_norm/post_clip"
STRATEGY_NORM_THRESHOLD = "strategy_norm/threshold"
HISTOGRAM_PREFIX = "gradients/"

# Statistic reported by the train step -> tag; others go to `clipping/<name>`.
_STAT_TAGS = {
    "grad_norm": PRE_CLIP,
    "clipped_grad_norm": POST_CLIP,
    "threshold": THRESHOLD,
    "variable_threshold": VARIABLE_THRESHOLD,
    "variable_norm": VARIABLE_MAX_PRE_CLIP,
    "clipped_variable_norm": VARIABLE_MAX_POST_CLIP,
    "norm": STRATEGY_NORM_PRE_CLIP,
    "clipped_norm": STRATEGY_NORM_POST_CLIP,
    "nonfinite_steps": NONFINITE_STEPS,
    "skipped_steps": SKIPPED_STEPS,
}


def stat_tag(name: str, stats: dict[str, float] | None = None) -> str:
    """The tag of a statistic of the train step (e.g. `grad_norm` -> `grad_norm/pre_clip`).

    A strategy that measures its global norm in another norm than L2 reports
    it as `norm` (and `clipped_norm`); its `threshold` is in that norm, so it
    goes to the chart of those norms (`strategy_norm/threshold`), not beside
    the L2 norms.

    Args:
        name: String. The statistic's name.
        stats: Dict or None. All statistics of the step (decides where
            `threshold` goes).
    """
    if name == "threshold" and stats is not None and "norm" in stats:
        return STRATEGY_NORM_THRESHOLD
    return _STAT_TAGS.get(name, f"clipping/{name}")


def scalars_of(stats: dict[str, float]) -> dict[str, float]:
    """Maps one step's statistics to the scalar tags to write.

    Adds `clipping/factor` (post-clip over pre-clip norm: 1 when nothing was
    clipped, NaN when the pre-clip norm is not finite) and `clipping/clipped`
    (1 when the step was clipped, else 0).

    Args:
        stats: Dict of str to float, as recorded by the train step.
    """
    scalars = {stat_tag(name, stats): value for name, value in stats.items()}
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


def layout(prefixes: Sequence[str] = ("",)) -> layout_pb2.Layout:
    """The custom-scalars layout: each threshold on one chart with the norms it bounds, in its own norm.

    Args:
        prefixes: Sequence of str. One category per optimizer: `""` for the
            model's optimizer, `"d_optimizer/"` for another.
    """
    return layout_pb2.Layout(category=[_category(prefix) for prefix in prefixes])


def _category(prefix: str) -> layout_pb2.Category:
    def chart(title: str, *tags: str) -> layout_pb2.Chart:
        patterns = [f"^{re.escape(prefix + tag)}$" for tag in tags]
        return layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=patterns))

    charts = [
        chart("Global gradient norm: pre-clip, post-clip, threshold", PRE_CLIP, POST_CLIP, THRESHOLD),
        chart(
            "Global gradient norm in the strategy's norm (1 or inf): pre-clip, post-clip, threshold",
            STRATEGY_NORM_PRE_CLIP,
            STRATEGY_NORM_POST_CLIP,
            STRATEGY_NORM_THRESHOLD,
        ),
        chart(
            "Largest variable's norm: pre-clip, post-clip, per-variable threshold",
            VARIABLE_MAX_PRE_CLIP,
            VARIABLE_MAX_POST_CLIP,
            VARIABLE_THRESHOLD,
        ),
        chart("Clip factor (post-clip / pre-clip) and clipped steps", CLIP_FACTOR, CLIPPED),
        chart("Steps not applied (total): non-finite, skipped", NONFINITE_STEPS, SKIPPED_STEPS),
    ]
    title = "Gradient clipping" + (f" ({prefix.rstrip('/')})" if prefix else "")
    return layout_pb2.Category(title=title, chart=charts)


def layout_summary(prefixes: Sequence[str] = ("",)) -> Any:
    """The layout as a `Summary` proto, ready to write at any step.

    What `tensorboard.plugins.custom_scalar.summary.pb` builds, from
    TensorBoard's own protos: that function imports TensorFlow, which the
    JAX and PyTorch backends must not need.
    """
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=metadata.CONFIG_SUMMARY_TAG,
        metadata=metadata.create_summary_metadata(),
        tensor=tensor_util.make_tensor_proto(np.array(layout(prefixes).SerializeToString(), dtype=object)),
    )
    return summary

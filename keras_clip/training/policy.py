"""What an update does when its gradient holds a NaN or an infinity."""

from __future__ import annotations

from typing import Any, Sequence

from keras import ops as K

from keras_clip import ops

NONFINITE_POLICIES = ("skip", "zero", "raise", "propagate")


class NonFiniteGradientError(FloatingPointError):
    """Raised by `on_nonfinite="raise"` after a step met a non-finite gradient.

    The step that met it was not applied: weights, optimizer slots and the
    iteration counter are as they were before that batch.
    """


def validate_policy(on_nonfinite: object) -> str:
    """Returns the policy name or raises a ValueError listing the valid ones."""
    if not isinstance(on_nonfinite, str) or on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(
            f"`on_nonfinite` must be one of {list(NONFINITE_POLICIES)}. Received: on_nonfinite={on_nonfinite!r}"
        )
    return on_nonfinite


class NonFinitePolicy:
    """One place that decides what a non-finite gradient does to an update.

    - `"skip"`: the update is not applied (weights, slots and the iteration
      counter stay as if the batch was never seen);
    - `"zero"`: non-finite entries become 0 and the update goes on;
    - `"raise"`: skipped like `"skip"`, then `NonFiniteGradientError` is raised
      on the host after the execution;
    - `"propagate"`: applied as Keras does (the weights become NaN).

    Under loss scaling a non-finite gradient is an overflow, which is never
    zeroed or applied: the step is skipped and the scale lowered.

    Args:
        name: String. One of `NONFINITE_POLICIES`.
    """

    def __init__(self, name: str = "skip") -> None:
        self.name = validate_policy(name)

    def prepare(
        self, grads: Sequence[ops.Gradient], *, overflow: bool = False
    ) -> tuple[list[ops.Gradient], Any, Any]:
        """Checks a gradient and applies the policy's repair.

        Args:
            grads: Sequence of Tensor or IndexedSlices (no None).
            overflow: Bool. Whether non-finite means a loss-scale overflow.

        Returns:
            `(grads, finite, apply)`: the gradients to clip, whether the
            incoming ones were all finite, and whether the update may go on.
        """
        finite = ops.all_finite(grads)
        if overflow:
            return list(grads), finite, finite
        if self.name == "zero":
            return [ops.zero_nonfinite(g) for g in grads], finite, K.convert_to_tensor(True)
        if self.name == "propagate":
            return list(grads), finite, K.convert_to_tensor(True)
        return list(grads), finite, finite

    def __repr__(self) -> str:
        return f"NonFinitePolicy({self.name!r})"

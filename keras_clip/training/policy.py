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

    def repair(self, grads: Sequence[ops.Gradient], *, overflow: bool = False) -> tuple[list, Any]:
        """Zeroes non-finite entries under `"zero"`; elsewhere leaves the gradient as it is.

        Args:
            grads: Sequence of Tensor or IndexedSlices (no None).
            overflow: Bool. Whether non-finite means a loss-scale overflow
                (never repaired).

        Returns:
            `(grads, finite)`: the gradients to clip and, when the policy had
            to look, whether the incoming ones were all finite; else None (the
            caller reads it off the clip's `grad_norm`, which is finite
            exactly when every entry is: no second pass over the gradient).
        """
        if self.name != "zero" or overflow:
            return list(grads), None
        return [ops.zero_nonfinite(g) for g in grads], ops.all_finite(grads)

    def allows(self, finite: Any, *, overflow: bool = False) -> Any:
        """Whether an update whose incoming gradient was (or was not) finite is applied."""
        if self.name in ("zero", "propagate") and not overflow:
            return K.convert_to_tensor(True)
        return finite

    def __repr__(self) -> str:
        return f"NonFinitePolicy({self.name!r})"

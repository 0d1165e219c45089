"""What a step does when its gradient holds a NaN or an infinity."""

from __future__ import annotations

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

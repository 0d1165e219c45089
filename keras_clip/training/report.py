"""The figures of the latest update, kept in an optimizer's variables, and their typed record."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable

import numpy as np
from keras import ops as K

from keras_clip import ops

# Strategy figures kept per update (threshold, ...); more are dropped with a warning.
MAX_FIGURES = 16


@dataclasses.dataclass(frozen=True)
class ClipReport:
    """What the latest update measured and did.

    Attributes:
        grad_norm: Float32 scalar. Global L2 norm of the gradient before
            clipping (all-reduced, unscaled).
        clipped_grad_norm: Float32 scalar. The same after clipping.
        nonfinite_steps: Int64 scalar. Updates met so far whose gradient held
            a NaN or an infinity.
        skipped_steps: Int64 scalar. Updates the strategy chose not to apply
            (a spike), so far.
        figures: Dict of str to float32 scalars. The strategy's own figures
            (`threshold`, ...).

    Example:

    ```python
    def train_step(self, data):
        ...
        self.optimizer.apply(grads, self.trainable_variables)
        return {**self.compute_metrics(x, y, y_pred), **self.optimizer.report().logs()}
    ```
    """

    grad_norm: Any
    clipped_grad_norm: Any
    nonfinite_steps: Any
    skipped_steps: Any
    figures: dict[str, Any]

    def logs(self, prefix: str = "") -> dict[str, Any]:
        """The entries a training step returns (History keys), optionally prefixed.

        Args:
            prefix: String. Put before each key (e.g. `"d_"` for a second optimizer).
        """
        logs = {
            "grad_norm": self.grad_norm,
            "clipped_grad_norm": self.clipped_grad_norm,
            "nonfinite_steps": self.nonfinite_steps,
        }
        if "skip" in self.figures:
            logs["skipped_steps"] = self.skipped_steps
        return {prefix + k: v for k, v in logs.items()}


def scalar_columns(stats: dict[str, Any], size: int, dtype: str) -> tuple[list[str], list[Any]]:
    """The scalar entries of `stats` as `size` columns of `dtype`, NaN-padded, and their names.

    Entries past `size` are dropped with a warning naming them.
    """
    names = [k for k, v in stats.items() if len(K.shape(K.convert_to_tensor(v))) == 0]
    if len(names) > size:
        warnings.warn(
            f"The clip reports {len(names)} figures; only the first {size} are kept (dropped: {names[size:]}).",
            stacklevel=4,
        )
        names = names[:size]
    columns = [K.cast(stats[k], dtype) for k in names]
    return names, columns + [K.convert_to_tensor(np.nan, dtype)] * (size - len(names))


class UpdateFigures:
    """The variables that hold the latest update's figures.

    Created by the optimizer that owns them, which tracks them as its own
    variables, so they are saved, checkpointed and read without a host sync.

    Args:
        make_variable: Callable `(name, shape, dtype) -> Variable` of the owner.
    """

    def __init__(self, make_variable: Callable[[str, tuple, str], Any]) -> None:
        self.grad_norm = make_variable("grad_norm", (), "float32")
        self.clipped_grad_norm = make_variable("clipped_grad_norm", (), "float32")
        self.nonfinite_steps = make_variable("nonfinite_steps", (), ops.wide("int64"))
        self.skipped_steps = make_variable("skipped_steps", (), ops.wide("int64"))
        self.values = make_variable("figures", (MAX_FIGURES,), "float32")
        # Figure names, known once an update has been traced (or restored from a config).
        self.names: list[str] = []

    @property
    def variables(self) -> list[Any]:
        """Every variable, in a fixed order (the saving order)."""
        return [self.grad_norm, self.clipped_grad_norm, self.nonfinite_steps, self.skipped_steps, self.values]

    def count_nonfinite(self, finite: Any) -> None:
        """Counts an update whose incoming gradient was not finite."""
        self.nonfinite_steps.assign_add(K.cast(K.logical_not(finite), ops.wide("int64")))

    def store(self, stats: dict[str, Any], skip: Any) -> None:
        """Writes one clip's figures, and counts it if the strategy skips the update."""
        self.grad_norm.assign(K.cast(stats["grad_norm"], "float32"))
        self.clipped_grad_norm.assign(K.cast(stats["clipped_grad_norm"], "float32"))
        self.skipped_steps.assign_add(K.cast(skip, ops.wide("int64")))
        figures = {k: v for k, v in stats.items() if k not in ("grad_norm", "clipped_grad_norm")}
        self.names, column = scalar_columns(figures, MAX_FIGURES, "float32")
        self.values.assign(K.stack(column))

    def stats(self) -> dict[str, Any]:
        """The latest update's figures as one flat dict of scalars (the recorder's row)."""
        report = self.report()
        stats = {"grad_norm": report.grad_norm, "clipped_grad_norm": report.clipped_grad_norm}
        stats.update({k: v for k, v in report.figures.items() if k != "skip"})
        stats["nonfinite_steps"] = report.nonfinite_steps
        if "skip" in report.figures:
            stats["skipped_steps"] = report.skipped_steps
        return stats

    def report(self) -> ClipReport:
        """The typed record of the latest update (tensors; no host read)."""
        values = _read(self.values)
        figures = {name: values[i] for i, name in enumerate(self.names)}
        return ClipReport(
            grad_norm=_read(self.grad_norm),
            clipped_grad_norm=_read(self.clipped_grad_norm),
            nonfinite_steps=_read(self.nonfinite_steps),
            skipped_steps=_read(self.skipped_steps),
            figures=figures,
        )


def _read(variable: Any) -> Any:
    """The variable's current value as a tensor (never the variable itself, nor a mirrored one)."""
    return K.copy(variable.value)

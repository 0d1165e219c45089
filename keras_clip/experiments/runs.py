"""Training one named run and summarizing what its gradients did."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import keras
import numpy as np

# A run whose final loss is at most this fraction of its first loss converged.
CONVERGED_FRACTION = 0.1
# A run whose loss ever exceeds this multiple of its first loss diverged.
BLOW_UP = 10.0


@dataclasses.dataclass
class RunSpec:
    """What to train: a model factory, an optimizer factory, data and a strategy.

    Args:
        name: String. Short name, also the run's TensorBoard directory.
        build_model: Callable returning a fresh, uncompiled `ClippingModel`.
        build_optimizer: Callable returning a fresh optimizer.
        data: Tuple `(x, y)` of numpy arrays.
        clipping: A keras_clip strategy or None.
        label: String. How tables name the strategy, e.g. "ClipByValue(1.0)".
        epochs: Integer. Epochs to train.
        batch_size: Integer. Batch size.
    """

    name: str
    build_model: Callable[[], keras.Model]
    build_optimizer: Callable[[], keras.optimizers.Optimizer]
    data: tuple[np.ndarray, np.ndarray]
    clipping: Any
    label: str
    epochs: int
    batch_size: int


@dataclasses.dataclass
class RunResult:
    """Per-epoch losses and per-step norms of one run, and what they mean.

    Args:
        name: String. The run's name.
        clipping: String. The strategy's label.
        epoch_loss: List of floats. Mean training loss of each epoch.
        pre_clip: List of floats. Every step's global gradient norm before clipping.
        post_clip: List of floats. Every step's global gradient norm after clipping.
        first_loss: Float. The first batch's loss.
        nonfinite_steps: Integer. Steps whose gradient held a NaN or an infinity.
        seconds: Float. Wall time of `fit()`.
    """

    name: str
    clipping: str
    epoch_loss: list[float]
    pre_clip: list[float]
    post_clip: list[float]
    first_loss: float
    nonfinite_steps: int
    seconds: float

    @property
    def final_loss(self) -> float:
        """The last epoch's mean training loss."""
        return self.epoch_loss[-1] if self.epoch_loss else math.nan

    @property
    def max_pre_clip(self) -> float:
        """The largest finite pre-clip gradient norm (inf if none was finite)."""
        finite = [n for n in self.pre_clip if math.isfinite(n)]
        return max(finite) if finite else math.inf

    @property
    def steps_clipped(self) -> int:
        """Steps whose post-clip norm is below their pre-clip norm."""
        return sum(1 for pre, post in zip(self.pre_clip, self.post_clip) if post < pre * (1 - 1e-6))

    @property
    def outcome(self) -> str:
        """`diverged`, `converged` or `stalled`.

        A run diverged if its loss turned NaN/inf or rose above ten times the
        first batch's loss; it converged if its final loss is at most 10% of
        the first batch's; otherwise it stalled.
        """
        losses = self.epoch_loss
        if not all(math.isfinite(v) for v in losses) or max(losses, default=0.0) > BLOW_UP * self.first_loss:
            return "diverged"
        return "converged" if self.final_loss <= CONVERGED_FRACTION * self.first_loss else "stalled"

    def as_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-ready values (non-finite floats as strings)."""

        def clean(value: float) -> float | str:
            return value if math.isfinite(value) else str(value)

        return {
            "run": self.name,
            "clipping": self.clipping,
            "first_loss": clean(self.first_loss),
            "final_loss": clean(self.final_loss),
            "max_pre_clip_norm": clean(self.max_pre_clip),
            "steps": len(self.pre_clip),
            "steps_clipped": self.steps_clipped,
            "nonfinite_steps": self.nonfinite_steps,
            "outcome": self.outcome,
            "seconds": round(self.seconds, 2),
        }


class NormRecorder(keras.callbacks.Callback):
    """Keeps every step's pre- and post-clip norm and the first batch's loss.

    Reads `grad_norm`, `clipped_grad_norm`, `nonfinite_steps` and `loss` from
    the batch logs; needs `steps_per_execution=1` to see every step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pre_clip: list[float] = []
        self.post_clip: list[float] = []
        self.first_loss = math.nan
        self.nonfinite_steps = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        if not self.pre_clip:
            self.first_loss = float(logs["loss"])
        self.pre_clip.append(float(logs["grad_norm"]))
        self.post_clip.append(float(logs["clipped_grad_norm"]))
        self.nonfinite_steps = int(logs["nonfinite_steps"])


def train(spec: RunSpec, callbacks: list[keras.callbacks.Callback], seed: int) -> RunResult:
    """Trains one run with `jit_compile=True` and MSE; returns its summary.

    Every run uses `on_nonfinite="propagate"`, so an unclipped divergence
    shows as NaN exactly as in plain Keras, and clipped runs are compared
    under the same policy.

    Args:
        spec: RunSpec. What to train.
        callbacks: List of Keras callbacks, added after the norm recorder.
        seed: Integer. Passed to `keras.utils.set_random_seed` before the model is built.

    Returns:
        A RunResult with one pre- and post-clip norm per step.
    """
    keras.utils.set_random_seed(seed)
    model = spec.build_model()
    model.compile(
        optimizer=spec.build_optimizer(),
        loss="mse",
        clipping=spec.clipping,
        on_nonfinite="propagate",
        jit_compile=True,
    )
    recorder = NormRecorder()
    start = time.perf_counter()
    x, y = spec.data
    history = model.fit(
        x, y, batch_size=spec.batch_size, epochs=spec.epochs, verbose=0, callbacks=[recorder, *callbacks]
    )
    return RunResult(
        name=spec.name,
        clipping=spec.label,
        epoch_loss=[float(v) for v in history.history["loss"]],
        pre_clip=recorder.pre_clip,
        post_clip=recorder.post_clip,
        first_loss=recorder.first_loss,
        nonfinite_steps=recorder.nonfinite_steps,
        seconds=time.perf_counter() - start,
    )

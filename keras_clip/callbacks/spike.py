"""`GradientSpikeMonitor`: an early warning for exploding gradients."""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import statistics
import warnings
from typing import Any, Callable, Union

import keras

from keras_clip.callbacks import layout
from keras_clip.callbacks.base import RecordingCallback, validate_log_dir
from keras_clip.strategies import _validation

ACTIONS = ("warn", "stop")


class GradientSpikeWarning(RuntimeWarning):
    """Warned by `GradientSpikeMonitor` when the gradient norm explodes."""


@dataclasses.dataclass(frozen=True)
class SpikeEvent:
    """One alarm of `GradientSpikeMonitor`.

    Attributes:
        step: Int. 1-based index of the training batch (the step axis of
            `GradientNormLogger`).
        norm: Float. The pre-clip global gradient norm at that step.
        reason: String. `"spike"` (norm above `factor` times the running
            median), `"growth"` (norm rose at each of the last `growth_steps`
            steps, by `growth_factor` or more in total) or `"nonfinite"`.
        reference: Float. The running median (`"spike"`), the norm where the
            rise began (`"growth"`), NaN for `"nonfinite"`.
        optimizer: String. `""` for the model's optimizer, else the name of
            the model attribute holding the optimizer (`"d_optimizer"`).
    """

    step: int
    norm: float
    reason: str
    reference: float = math.nan
    optimizer: str = ""

    @property
    def message(self) -> str:
        """A one-line description naming the step and the norm."""
        if self.reason == "spike":
            detail = f"{self.norm / self.reference:.1f}x the running median {self.reference:.4g}"
        elif self.reason == "growth":
            detail = f"it rose at every step since it was {self.reference:.4g}"
        else:
            detail = "not finite (the loss or the weights are about to become NaN)"
        where = f" ({self.optimizer})" if self.optimizer else ""
        return f"Exploding gradient{where} at step {self.step}: pre-clip gradient norm {self.norm:.4g}, {detail}."


class SpikeDetector:
    """Flags spikes and sustained growth in a sequence of gradient norms.

    Pure Python, one norm at a time. One alarm per episode: after an alarm
    it stays quiet until a step passes both tests again.

    Args:
        factor: Float. A norm above `factor` times the median of the last
            `window` norms is a spike.
        window: Int. Norms the running median looks back on.
        warmup: Int. Norms to see before the spike test starts.
        growth_steps: Int. A norm that rose at each of this many steps in a
            row, by `growth_factor` in total, is sustained growth (0: off).
        growth_factor: Float. Total rise that makes the growth an alarm.
        nonfinite: Bool. Whether a NaN or infinite norm is an alarm; when
            False such norms are ignored (a loss-scale overflow is routine).
    """

    def __init__(
        self, factor: float, window: int, warmup: int, growth_steps: int, growth_factor: float, nonfinite: bool = True
    ) -> None:
        self.factor = factor
        self.nonfinite = nonfinite
        self.warmup = warmup
        self.growth_steps = growth_steps
        self.growth_factor = growth_factor
        self._history: collections.deque[float] = collections.deque(maxlen=window)
        self._recent: collections.deque[float] = collections.deque(maxlen=growth_steps + 1)
        self._alarm = False

    def update(self, step: int, norm: float) -> SpikeEvent | None:
        """Takes the next step's norm; returns an event when it starts an alarm."""
        if not (self.nonfinite or math.isfinite(norm)):
            return None
        event = self._check(step, norm)
        if math.isfinite(norm):
            self._history.append(norm)
            self._recent.append(norm)
        else:
            self._recent.clear()
        if event is None:
            self._alarm = False
            return None
        if self._alarm:
            return None
        self._alarm = True
        return event

    def _check(self, step: int, norm: float) -> SpikeEvent | None:
        if not math.isfinite(norm):
            return SpikeEvent(step, norm, "nonfinite")
        if len(self._history) >= self.warmup:
            median = statistics.median(self._history)
            if norm > self.factor * median:
                return SpikeEvent(step, norm, "spike", median)
        recent = [*self._recent, norm]
        if self.growth_steps and len(recent) == self.growth_steps + 1:
            rising = all(b > a for a, b in zip(recent, recent[1:]))
            if rising and norm >= self.growth_factor * recent[0]:
                return SpikeEvent(step, norm, "growth", recent[0])
        return None


Action = Union[str, Callable[[SpikeEvent], Any]]


class GradientSpikeMonitor(RecordingCallback):
    """Raises the alarm when the gradient norm starts to explode.

    Watches the pre-clip global gradient norm of every step (all of them,
    also with `steps_per_execution > 1`) and flags:

    - a **spike**: a norm above `factor` times the median of the last
      `window` norms (after `warmup` norms);
    - **sustained growth**: a norm that rose at each of the last
      `growth_steps` steps, by `growth_factor` or more in total;
    - a **non-finite** norm, unless the optimizer is a `LossScaleOptimizer`
      (mixed precision), whose loss-scale overflows are routine and skipped.

    One alarm per episode: after one, the monitor is quiet until a step
    passes both tests again. On an alarm it acts: `"warn"` issues a
    `GradientSpikeWarning` naming the step and the norm; `"stop"` warns and
    stops training after the current execution (`model.stop_training`); a
    callable is called with the `SpikeEvent`. With `log_dir` each alarm is
    also written as a TensorBoard text entry (`grad_norm/spike`, under
    `<log_dir>/train`, at the alarm's step). Every alarm is kept in `events`.

    The defaults fire at step 3 of the unclipped seed run (norm 375, 4.6e3,
    then 9.7e6; the loss is inf at step 5), and stay silent on the same run
    with `ClipByGlobalNorm(1.0)` or a learning rate of 1e-3, whose norms
    grow by at most ~4x over their running median.

    Args:
        factor: Float. Spike threshold, as a multiple of the running median
            (default 10; > 1).
        window: Int. Steps the running median looks back on (default 50).
        warmup: Int. Steps to see before the spike test starts (default 2;
            at most `window`).
        growth_steps: Int. Length of the run of rising norms that counts as
            growth (default 10; 0 turns the growth test off).
        growth_factor: Float. Total rise over that run that raises the alarm
            (default 10; > 1).
        action: `"warn"` (default), `"stop"` or a callable taking a
            `SpikeEvent`.
        log_dir: String, path or None. Where to write the text entries
            (`<log_dir>/train`); None writes none.

    Example:

    ```python
    monitor = keras_clip.GradientSpikeMonitor(action="stop", log_dir="runs/exp1")
    model.fit(x, y, epochs=50, callbacks=[monitor, keras_clip.GradientNormLogger("runs/exp1")])
    monitor.events   # [SpikeEvent(step=3, norm=9662000.0, reason='spike', ...)]
    ```

    References:
        Pascanu, Mikolov, Bengio. [On the difficulty of training recurrent
        neural networks](https://arxiv.org/abs/1211.5063), 2013.
    """

    def __init__(
        self,
        factor: float = 10.0,
        window: int = 50,
        warmup: int = 2,
        growth_steps: int = 10,
        growth_factor: float = 10.0,
        action: Action = "warn",
        log_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.factor = _above_one("factor", factor)
        self.window = _validation.positive_int("window", window)
        self.warmup = _validation.positive_int("warmup", warmup)
        if self.warmup > self.window:
            raise ValueError(f"`warmup` must be at most `window` ({self.window}). Received: warmup={warmup!r}")
        self.growth_steps = _validation.positive_int("growth_steps", growth_steps, minimum=0)
        self.growth_factor = _above_one("growth_factor", growth_factor)
        self.action = _validate_action(action)
        self.log_dir = None if log_dir is None else validate_log_dir(log_dir)
        self.events: list[SpikeEvent] = []
        self._detectors: dict[str, SpikeDetector] = {}

    def _new_detector(self) -> SpikeDetector:
        return SpikeDetector(self.factor, self.window, self.warmup, self.growth_steps, self.growth_factor)

    def set_model(self, model: Any) -> None:
        if model is not getattr(self, "_model", None):
            self._detectors = {}
        super().set_model(model)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        for prefix, optimizer in self._optimizers:
            detector = self._detectors.setdefault(prefix, self._new_detector())
            # Under loss scaling a non-finite gradient is an overflow, not an alarm.
            holder = getattr(self.model, prefix.rstrip("/") or "optimizer", None)
            scaled = (holder, optimizer.inner_optimizer)
            detector.nonfinite = not any(isinstance(o, keras.optimizers.LossScaleOptimizer) for o in scaled)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        for prefix, recorded in self._new_steps():
            event = self._detectors[prefix].update(recorded.step, recorded.stats.get("grad_norm", math.nan))
            if event is not None:
                self._report(dataclasses.replace(event, optimizer=prefix.rstrip("/")) if prefix else event)

    def _report(self, event: SpikeEvent) -> None:
        self.events.append(event)
        if self.log_dir is not None:
            self._train_writer.text(event.step, layout.SPIKE, event.message)
            self._train_writer.flush()
        if callable(self.action):
            self.action(event)
            return
        if self.action == "stop":
            self.model.stop_training = True
            warnings.warn(GradientSpikeWarning(f"{event.message} Stopping training."), stacklevel=2)
        else:
            warnings.warn(GradientSpikeWarning(event.message), stacklevel=2)


def _above_one(name: str, value: Any) -> float:
    result = _validation.number(name, value)
    if not (math.isfinite(result) and result > 1):
        raise ValueError(f"`{name}` must be a finite number > 1. Received: {name}={value!r}")
    return result


def _validate_action(action: Any) -> Action:
    if callable(action) or action in ACTIONS:
        return action
    raise ValueError(f"`action` must be 'warn', 'stop' or a callable. Received: action={action!r}")

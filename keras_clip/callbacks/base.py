"""What the gradient callbacks share: the recorder for the length of `fit()`, an event writer."""

from __future__ import annotations

import os
from typing import Any

import keras

from keras_clip.callbacks import recorder as recorder_lib
from keras_clip.callbacks.writer import EventWriter, NullWriter


class RecordingCallback(keras.callbacks.Callback):
    """Base class: attaches the step recorder for the length of `fit()`.

    Subclasses call `_new_steps()` from a batch or epoch hook to get every
    step recorded since their last call, oldest first, and write through
    `_train_writer`, created on first use under `self.log_dir` and closed when
    `fit()` ends. Under multi-worker training only the chief writes (every
    worker holds the same figures); the other workers' writer drops them.
    """

    _per_variable = False
    _gradients = False
    log_dir: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self._cursor = 0
        self._attached = False
        self._writer: EventWriter | NullWriter | None = None

    @property
    def _train_writer(self) -> EventWriter | NullWriter:
        if self._writer is None:
            strategy = getattr(self.model, "distribute_strategy", None)
            chief = strategy is None or strategy.extended.should_save_summary
            self._writer = EventWriter(self.log_dir) if chief else NullWriter()
        return self._writer

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if not self._attached:
            recorder = recorder_lib.attach(
                self.model, type(self).__name__, per_variable=self._per_variable, gradients=self._gradients
            )
            self._attached = True
        else:
            recorder = recorder_lib.recorder_of(self.model)
        self._cursor = recorder.current_step()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._attached:
            recorder_lib.detach(self.model)
            self._attached = False
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _new_steps(self, latest_only: bool = False) -> list[recorder_lib.RecordedStep]:
        steps = recorder_lib.recorder_of(self.model).read(self._cursor, latest_only=latest_only)
        if steps:
            self._cursor = steps[-1].step
        return steps


def validate_log_dir(log_dir: Any, name: str = "log_dir") -> str:
    """Returns `log_dir` as a string, or raises a Keras-style error."""
    if isinstance(log_dir, bool) or not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir):
        raise ValueError(f"`{name}` must be a non-empty string or path. Received: {name}={log_dir!r}")
    return os.fspath(log_dir)

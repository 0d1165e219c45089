"""What the gradient callbacks share: hooking the recorder for the length of `fit()`."""

from __future__ import annotations

import os
from typing import Any

import keras

from keras_clip.callbacks import recorder as recorder_lib


class RecordingCallback(keras.callbacks.Callback):
    """Base class: attaches the step recorder for the length of `fit()`.

    Subclasses call `_new_steps()` from a batch or epoch hook to get every
    step recorded since their last call, oldest first.
    """

    _per_variable = False
    _gradients = False

    def __init__(self) -> None:
        super().__init__()
        self._cursor = 0
        self._attached = False

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

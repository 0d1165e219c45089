"""One progress line per run, for the terminal."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

import keras


class Progress(keras.callbacks.Callback):
    """One line per run: rewritten every epoch on a terminal, printed once otherwise.

    Args:
        label: String. What the line starts with, e.g. "[1/6] seed/none".
        epochs: Integer. The run's number of epochs.
        stream: Text stream to write to (default: standard output).
    """

    def __init__(self, label: str, epochs: int, stream: TextIO | None = None) -> None:
        super().__init__()
        self.label, self.epochs = label, epochs
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self.start = time.perf_counter()
        self.line = ""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        self.line = (
            f"{self.label}  epoch {epoch + 1:>3}/{self.epochs}  loss {logs.get('loss', math.nan):<10.4g}"
            f"  grad_norm {logs.get('grad_norm', math.nan):<10.4g} {time.perf_counter() - self.start:5.1f}s"
        )
        if self.live:
            self.stream.write("\r" + self.line + "\033[K")
            self.stream.flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.stream.write(("\r" + self.line + "\033[K\n") if self.live else self.line + "\n")
        self.stream.flush()

"""What the gradient callbacks share: the recorders of the model's optimizers, an event writer."""

from __future__ import annotations

import os
import weakref
from typing import Any

import keras

from keras_clip.callbacks.writer import EventWriter, NullWriter
from keras_clip.training import recorder as recorder_lib
from keras_clip.training.optimizer import ClippingOptimizer, clipping_optimizers


class WriterCallback(keras.callbacks.Callback):
    """Base class: an event writer under `self.log_dir`, created on first use, closed when `fit()` ends.

    Subclasses write through `_train_writer`. Under multi-worker (TensorFlow)
    or multi-process (JAX) training only the chief writes (see `is_chief`);
    the others get a writer that drops everything.
    """

    log_dir: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self._writer: EventWriter | NullWriter | None = None

    @property
    def _train_writer(self) -> EventWriter | NullWriter:
        if self._writer is None:
            self._writer = EventWriter(self.log_dir) if is_chief(self.model) else NullWriter()
        return self._writer

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class RecordingCallback(WriterCallback):
    """Base class: asks every `ClippingOptimizer` of the model to record, for the length of `fit()`.

    Subclasses call `_new_steps()` from a batch or epoch hook to get every
    update recorded since their last call, oldest first, as `(prefix, step)`
    pairs (prefix `""` for `model.optimizer`, `"d_optimizer/"` for another
    attribute), and write through `_train_writer` (see `WriterCallback`).
    """

    _per_variable = False
    _gradients = False

    def __init__(self) -> None:
        super().__init__()
        self._cursors: dict[int, int] = {}
        self._optimizers: list[tuple[str, ClippingOptimizer]] = []

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._optimizers = clipping_optimizers(self.model)
        if not self._optimizers:
            raise ValueError(
                f"`{type(self).__name__}` needs a model whose optimizer clips and measures gradients: "
                "compile a `keras_clip.ClippingModel`, `ClippingSequential` or `ClippingMixin` model, "
                "or give the model a `keras_clip.ClippingOptimizer`. "
                f"Received: model of type {type(self.model).__name__} with optimizer "
                f"{type(getattr(self.model, 'optimizer', None)).__name__}"
            )
        size = max(int(getattr(self.model, "steps_per_execution", 1) or 1), 1)
        retrace = False
        for _, optimizer in self._optimizers:
            recorder = recorder_lib.attach(
                optimizer, getattr(self.model, "distribute_strategy", None), size, per_variable=self._per_variable,
                gradients=self._gradients,
            )
            if recorder is not None:
                retrace = retrace or _traced_without(self.model, recorder)
            self._cursors[id(optimizer)] = recorder.current_step() if recorder is not None else 0
        if retrace:
            self.model.make_train_function(force=True)
        for _, optimizer in self._optimizers:
            if optimizer.recorder is not None and self.model.train_function is not None:
                optimizer.recorder.bound_function = weakref.ref(self.model.train_function)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        for _, optimizer in self._optimizers:
            recorder_lib.detach(optimizer)
        self._optimizers = []
        super().on_train_end(logs)

    def _new_steps(self, latest_only: bool = False) -> list[tuple[str, recorder_lib.RecordedStep]]:
        found = []
        # JAX's trainer keeps the step's new values in its own state: write them to the variables first.
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()
        for prefix, optimizer in self._optimizers:
            if optimizer.recorder is None:
                continue
            steps = optimizer.recorder.read(self._cursors.get(id(optimizer), 0), latest_only=latest_only)
            if steps:
                self._cursors[id(optimizer)] = steps[-1].step
            found += [(prefix, step) for step in steps]
        return found


def is_chief(model: keras.Model) -> bool:
    """Whether this process writes the logs: the chief worker under `tf.distribute`, process 0 on JAX.

    Args:
        model: keras.Model. The model being trained.

    Returns:
        True on one process only of a multi-worker (TensorFlow) or multi-process (JAX) run, and
        on every single-process run.
    """
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is not None:
        return bool(strategy.extended.should_save_summary)
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_index() == 0
    return True


def _traced_without(model: keras.Model, recorder: recorder_lib.StepRecorder) -> bool:
    """Whether the model's train function exists but was traced without this recorder."""
    return model.train_function is not None and model.train_function is not recorder.bound_function()


def validate_log_dir(log_dir: Any, name: str = "log_dir") -> str:
    """Returns `log_dir` as a string, or raises a Keras-style error."""
    if isinstance(log_dir, bool) or not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir):
        raise ValueError(f"`{name}` must be a non-empty string or path. Received: {name}={log_dir!r}")
    return os.fspath(log_dir)

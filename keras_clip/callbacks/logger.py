"""`GradientNormLogger`: every step's pre- and post-clip gradient norm in TensorBoard."""

from __future__ import annotations

import itertools
import os
from typing import Any

from tensorboard.backend.event_processing import event_file_loader

from keras_clip.callbacks import layout
from keras_clip.callbacks.base import RecordingCallback, validate_log_dir
from keras_clip.training.recorder import RecordedStep

# Runs this process already wrote the custom-scalars layout to (once is enough).
_RUNS_WITH_LAYOUT: set[tuple[str, tuple[str, ...]]] = set()
# The layout is the first summary of the event files this logger writes: how far a check looks.
_LAYOUT_SEARCH_EVENTS = 4


class GradientNormLogger(RecordingCallback):
    """Writes the gradient norms of every training step to TensorBoard.

    Under `<log_dir>/train` (the run `keras.callbacks.TensorBoard` writes its
    training logs to, so both can share a `log_dir`) it writes, against the
    1-based index of the training batch (counted across epochs and successive
    `fit()` calls of the model):

    - `grad_norm/pre_clip` and `grad_norm/post_clip`: global L2 norm of the
      gradient before and after clipping;
    - `grad_norm/threshold`: the strategy's threshold on the global norm, when
      it has one (`ClipByNorm`'s bound on each variable's norm goes to
      `grad_norm_by_variable/threshold` instead);
    - `clipping/factor` (post-clip / pre-clip norm), `clipping/clipped` (1 when
      the step was clipped) and `clipping/nonfinite_steps` (total so far);
      other statistics the strategy reports go to `clipping/<name>`;
    - with `per_variable=True`, `grad_norm_by_variable/<variable path>`: the
      pre-clip norm of each variable's gradient;
    - with `histogram_freq=N`, `gradients/<variable path>`: histograms of the
      last step's gradients every N epochs;
    - once, a custom-scalars layout that puts pre-clip, post-clip and
      threshold on one chart (TensorBoard's "Custom Scalars" tab).

    The norms are the ones the clip computed anyway. The compiled step writes
    them to a small buffer on the device (one row per step, so with
    `steps_per_execution=N` no step is lost) and the callback reads it once
    per execution, on the host; no summary op enters the (XLA) step. Adding
    the callback to `fit()` is all it takes: the train step is re-traced once
    if it was built without recording. The model must be a
    `keras_clip.ClippingModel`, `ClippingSequential` or use `ClippingMixin`.

    Args:
        log_dir: String or path. Directory of the logs; the callback writes
            to `<log_dir>/train`.
        update_freq: `"batch"`, `"epoch"` or int. `"batch"` (default) writes
            every step; an int N writes the steps whose number is a multiple
            of N; `"epoch"` writes the last step of each epoch.
        per_variable: Bool. Also log each variable's pre-clip gradient norm.
            Off by default: one curve per variable floods the dashboard, and
            the step computes one more norm per variable.
        histogram_freq: Int. Write gradient histograms every this many epochs
            (0, the default, writes none). Costs one copy of the gradients per
            step on the device.
        write_layout: Bool. Write the custom-scalars layout (default True).

    Example:

    ```python
    model = keras_clip.ClippingModel(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse", clipping=keras_clip.ClipByGlobalNorm(1.0),
                  steps_per_execution=4)
    model.fit(x, y, epochs=5, callbacks=[
        keras_clip.GradientNormLogger("runs/exp1"),
        keras.callbacks.TensorBoard("runs/exp1"),
    ])
    # tensorboard --logdir runs
    ```

    References:
        Why no summary op may enter an XLA step: [tf.summary ops have no XLA
        kernel](https://github.com/tensorflow/tensorflow/issues/39798).
    """

    def __init__(
        self,
        log_dir: str | os.PathLike = "logs",
        update_freq: str | int = "batch",
        per_variable: bool = False,
        histogram_freq: int = 0,
        write_layout: bool = True,
    ) -> None:
        super().__init__()
        self.log_dir = validate_log_dir(log_dir)
        self.update_freq = _validate_update_freq(update_freq)
        self.per_variable = _validate_bool("per_variable", per_variable)
        self.histogram_freq = _validate_histogram_freq(histogram_freq)
        self.write_layout = _validate_bool("write_layout", write_layout)
        self._per_variable = self.per_variable
        self._gradients = self.histogram_freq > 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        run = os.path.abspath(os.path.join(self.log_dir, "train"))
        key = (run, tuple(prefix for prefix, _ in self._optimizers))
        if not self.write_layout or (key in _RUNS_WITH_LAYOUT and os.path.isdir(run)):
            return
        summary = layout.layout_summary(list(key[1]))
        if not _has_layout(run, summary):  # an earlier process may have written it
            self._train_writer.summary(0, summary)
        _RUNS_WITH_LAYOUT.add(key)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.update_freq == "epoch":
            return
        for prefix, recorded in self._new_steps():
            if recorded.step % self.update_freq == 0:
                self._write_step(prefix, recorded)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.update_freq == "epoch":
            for prefix, recorded in self._new_steps(latest_only=True):
                self._write_step(prefix, recorded)
        if self.histogram_freq and (epoch + 1) % self.histogram_freq == 0:
            self._write_histograms()
        if self._writer is not None:
            self._writer.flush()

    def _write_step(self, prefix: str, recorded: RecordedStep) -> None:
        scalars = layout.scalars_of(recorded.stats)
        if self.per_variable:
            for path, value in recorded.variable_norms.items():
                scalars[layout.PER_VARIABLE_PREFIX + path] = value
        self._train_writer.scalars(recorded.step, {prefix + tag: value for tag, value in scalars.items()})

    def _write_histograms(self) -> None:
        for prefix, optimizer in self._optimizers:
            recorder = optimizer.recorder
            if recorder is None or recorder.current_step() == 0:
                continue
            for path, values in recorder.read_gradients().items():
                self._train_writer.histogram(recorder.current_step(), prefix + layout.HISTOGRAM_PREFIX + path, values)


def _has_layout(run: str, summary: Any) -> bool:
    """Whether an event file of the run already holds this custom-scalars layout."""
    if not os.path.isdir(run):
        return False
    wanted = (summary.value[0].tag, summary.value[0].tensor.SerializeToString())
    for name in sorted(os.listdir(run)):
        if "tfevents" not in name:
            continue
        events = event_file_loader.EventFileLoader(os.path.join(run, name)).Load()
        for event in itertools.islice(events, _LAYOUT_SEARCH_EVENTS):
            if any((value.tag, value.tensor.SerializeToString()) == wanted for value in event.summary.value):
                return True
    return False


def _validate_update_freq(update_freq: Any) -> str | int:
    if update_freq == "batch":
        return 1
    if update_freq == "epoch":
        return "epoch"
    if isinstance(update_freq, int) and not isinstance(update_freq, bool) and update_freq > 0:
        return update_freq
    raise ValueError(
        f"`update_freq` must be 'batch', 'epoch' or a positive integer. Received: update_freq={update_freq!r}"
    )


def _validate_histogram_freq(histogram_freq: Any) -> int:
    if isinstance(histogram_freq, bool) or not isinstance(histogram_freq, int) or histogram_freq < 0:
        raise ValueError(
            f"`histogram_freq` must be a non-negative integer. Received: histogram_freq={histogram_freq!r}"
        )
    return histogram_freq


def _validate_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a boolean. Received: {name}={value!r}")
    return value

"""A small on-device buffer that keeps every update's gradient statistics.

`ClippingOptimizer` calls `optimizer.recorder.record(stats, grads, variables)`
once per update, inside the compiled (possibly XLA) step. The recorder writes
one row of a float64 buffer of `steps_per_execution` rows, at index
`(step - 1) % size`; column 0 holds the step number, so a single read after an
execution returns every step of it, in any order. No summary op, no host call
and no condition enters the step, so it compiles under XLA and `tf.distribute`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Any, Callable, Sequence

import keras
import numpy as np
from keras import ops as K

from keras_clip import ops
from keras_clip.training.report import scalar_columns

# Stat columns reserved in the buffer; a strategy reporting more is cut short.
MAX_STATS = 16

@dataclasses.dataclass(frozen=True)
class RecordedStep:
    """What one optimizer step recorded.

    Attributes:
        step: Int. 1-based index of the training batch, counted over every
            `fit()` of the model.
        stats: Dict of str to float. The clip statistics (`grad_norm`,
            `clipped_grad_norm`, `nonfinite_steps`, `threshold` when the
            strategy has one, and any other scalar the strategy reports).
        variable_norms: Dict of str to float. Pre-clip L2 norm of each
            variable's gradient, by variable path (empty unless asked for).
    """

    step: int
    stats: dict[str, float]
    variable_norms: dict[str, float]


def _variable(value: Any, dtype: str, name: str) -> keras.Variable:
    return keras.Variable(value, dtype=dtype, trainable=False, aggregation="only_first_replica", name=name)


class StepRecorder:
    """Keeps the last `size` steps' statistics in Keras variables.

    Create it outside any `tf.function` (the variables are made here, under
    the model's distribution strategy). Every replica computes the same
    values from all-reduced gradients; the variables keep the first one's.

    Args:
        size: Int. Rows of the buffer: at least the steps of one execution.
        variables: Sequence of keras.Variable. The model's trainable variables.
        start_step: Int. Steps already taken; the next one is `start_step + 1`.
        per_variable: Bool. Whether to record each variable's gradient norm.
        gradients: Bool. Whether to keep a copy of the last step's gradients
            (for histograms).
        distribute_strategy: tf.distribute.Strategy or None. The model's
            strategy (TensorFlow only).
    """

    def __init__(
        self,
        size: int,
        variables: Sequence[keras.Variable],
        start_step: int,
        per_variable: bool,
        gradients: bool,
        distribute_strategy: Any = None,
    ) -> None:
        self.size = int(size)
        self.paths = unique_paths(variables)
        self.per_variable = per_variable
        self.gradients = gradients
        self.users = 0
        # The train function traced with this recorder; weak, so the model
        # (a weak key of `_RECORDERS`) is not kept alive through it.
        self.bound_function: Callable[[], Any] = lambda: None
        self.stat_keys: list[str] = []
        self.present: list[bool] = [True] * len(self.paths)
        width = 1 + MAX_STATS + (len(self.paths) if per_variable else 0)
        with distribute_strategy.scope() if distribute_strategy is not None else contextlib.nullcontext():
            self.step = _variable(start_step, ops.wide("int64"), "grad_log_step")
            self.buffer = _variable(np.zeros((self.size, width)), ops.wide("float64"), "grad_log_buffer")
            self.snapshots = [
                _variable(np.zeros(v.shape), "float32", f"grad_snapshot_{i}")
                for i, v in enumerate(variables if gradients else [])
            ]

    @property
    def variables(self) -> list[keras.Variable]:
        """The recorder's variables: the step count, the buffer, the gradient snapshots."""
        return [self.step, self.buffer, *self.snapshots]

    def satisfies(self, paths: list[str], size: int, per_variable: bool, gradients: bool) -> bool:
        """Whether this recorder can serve a caller with these needs."""
        return (
            self.paths == paths
            and self.size >= size
            and (self.per_variable or not per_variable)
            and (self.gradients or not gradients)
        )

    def record(self, stats: dict[str, Any], grads: Sequence[Any], variables: Sequence[Any]) -> None:
        """Writes one step's row; called inside the compiled train step.

        Args:
            stats: Dict of str to scalar tensors: the strategy's statistics
                plus `nonfinite_steps`.
            grads: Sequence of Tensor, IndexedSlices or None. The pre-clip
                gradients (all-reduced, unscaled).
            variables: Sequence of keras.Variable, the matching variables.
        """
        step = self.step.value + 1
        columns = [K.cast(step, ops.wide("float64")), *self._stat_columns(stats)]
        if self.per_variable:
            columns += self._norm_columns(grads)
        row = K.stack(columns)
        selected = K.equal(K.arange(self.size, dtype=ops.wide("int64")), (step - 1) % self.size)
        self.buffer.assign(K.where(selected[:, None], row[None, :], self.buffer.value))
        self.step.assign(step)
        for snapshot, grad in zip(self.snapshots, grads):
            if grad is not None:
                snapshot.assign(K.cast(ops.densify(grad, snapshot.shape), "float32"))

    def _stat_columns(self, stats: dict[str, Any]) -> list[Any]:
        self.stat_keys, columns = scalar_columns(stats, MAX_STATS, ops.wide("float64"))
        return columns

    def _norm_columns(self, grads: Sequence[Any]) -> list[Any]:
        self.present = [g is not None for g in grads]
        nan = K.convert_to_tensor(np.nan, ops.wide("float64"))
        return [nan if g is None else K.cast(ops.global_norm([g]), ops.wide("float64")) for g in grads]

    def current_step(self) -> int:
        """The number of the last recorded step (0 before any)."""
        return int(K.convert_to_numpy(self.step))

    def read(self, after: int, latest_only: bool = False) -> list[RecordedStep]:
        """The steps recorded after step `after`, oldest first (one device read).

        Args:
            after: Int. The last step the caller has already seen.
            latest_only: Bool. Return only the newest step (and do not warn
                about older ones the buffer no longer holds).
        """
        rows = K.convert_to_numpy(self.buffer)
        rows = rows[rows[:, 0] > after]
        rows = rows[np.argsort(rows[:, 0])]
        if latest_only:
            rows = rows[-1:]
        elif len(rows) and int(rows[0, 0]) > after + 1:
            warnings.warn(
                f"Gradient statistics of steps {after + 1}..{int(rows[0, 0]) - 1} were overwritten "
                f"before they were read (the buffer holds {self.size} steps); those steps are not logged.",
                stacklevel=3,
            )
        return [self._unpack(row) for row in rows]

    def _unpack(self, row: np.ndarray) -> RecordedStep:
        stats = {k: float(row[1 + i]) for i, k in enumerate(self.stat_keys)}
        norms = {}
        if self.per_variable:
            first = 1 + MAX_STATS
            norms = {p: float(row[first + i]) for i, p in enumerate(self.paths) if self.present[i]}
        return RecordedStep(int(row[0]), stats, norms)

    def read_gradients(self) -> dict[str, np.ndarray]:
        """The last step's gradients by variable path (variables with one)."""
        return {p: K.convert_to_numpy(s) for p, s, present in zip(self.paths, self.snapshots, self.present) if present}


def unique_paths(variables: Sequence[keras.Variable]) -> list[str]:
    """Variable paths inside the model, made unique with a `_1`, `_2`... suffix where repeated.

    When every path starts with the same model name (`clipping_sequential_7/...`,
    which Keras numbers anew in each process), that segment is left out, so a
    run's per-variable tags are the same from one run to the next.
    """
    full = [getattr(variable, "path", None) or variable.name for variable in variables]
    heads = {path.partition("/")[0] for path in full}
    if len(heads) == 1 and all(path.count("/") >= 2 for path in full):
        full = [path.partition("/")[2] for path in full]
    seen: dict[str, int] = {}
    paths = []
    for path in full:
        count = seen.get(path, 0)
        seen[path] = count + 1
        paths.append(path if count == 0 else f"{path}_{count}")
    return paths


def _tracing() -> bool:
    """Whether a compiled step is being traced (TensorFlow's `tf.function`)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.inside_function()


def _default_strategy() -> Any:
    """TensorFlow's current distribution strategy (None on other backends)."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf.distribute.get_strategy()


def _initial_step(optimizer: Any) -> int:
    # Inside a trace the optimizer has just been built by its first update: no step yet.
    if not optimizer.built or _tracing():
        return 0
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


def attach(
    optimizer: Any, distribute_strategy: Any, size: int, *, per_variable: bool, gradients: bool
) -> StepRecorder | None:
    """Makes a `ClippingOptimizer` record every update into a recorder it owns.

    The optimizer keeps its recorder between `fit()` calls (the step axis
    continues); it is replaced, its step count carried over, only when it
    cannot serve what is asked. An optimizer not built yet records the
    request and creates the recorder when it builds, in its first update.

    Args:
        optimizer: ClippingOptimizer.
        distribute_strategy: tf.distribute.Strategy or None. The model's
            strategy (TensorFlow only).
        size: Int. Rows of the buffer: at least the steps of one execution.
        per_variable: Bool. Also record each variable's gradient norm.
        gradients: Bool. Also keep the last update's gradients.

    Returns:
        The recorder now attached, or None until the optimizer is built.
    """
    # Another callback may have asked already (before the optimizer was built, only its request exists).
    previous = optimizer.recording
    if previous is not None and previous.users:
        per_variable = per_variable or previous.per_variable
        gradients = gradients or previous.gradients
        size = max(size, previous.size)
    request = RecordingRequest(size, per_variable, gradients, previous.users if previous is not None else 0)
    request.users += 1
    optimizer.recording = request
    if optimizer.built:
        return ensure_recorder(optimizer, distribute_strategy)
    return None


@dataclasses.dataclass
class RecordingRequest:
    """What the callbacks ask an optimizer to record."""

    size: int
    per_variable: bool
    gradients: bool
    users: int


def ensure_recorder(optimizer: Any, distribute_strategy: Any = None) -> StepRecorder | None:
    """Creates or replaces the optimizer's recorder to serve its recording request."""
    request = optimizer.recording
    if request is None or not request.users:
        return None
    variables = list(optimizer._trainable_variables)
    recorder = optimizer.recorder
    paths = unique_paths(variables)
    if recorder is None or not recorder.satisfies(paths, request.size, request.per_variable, request.gradients):
        start = recorder.current_step() if recorder is not None else _initial_step(optimizer)
        strategy = distribute_strategy or _default_strategy()
        recorder = StepRecorder(request.size, variables, start, request.per_variable, request.gradients, strategy)
        if keras.backend.backend() == "jax":
            _adopt(optimizer, optimizer.recorder, recorder)
        optimizer.recorder = recorder
    recorder.users = request.users
    return recorder


def _adopt(optimizer: Any, old: StepRecorder | None, new: StepRecorder) -> None:
    """Makes the recorder's variables the optimizer's own, replacing the old recorder's.

    On JAX the update is stateless: only the optimizer's variables travel
    through `stateless_apply`, so the buffer must be one of them.
    """
    dropped = {id(v) for v in old.variables} if old is not None else set()
    optimizer._variables[:] = [v for v in optimizer._variables if id(v) not in dropped]
    for variable in new.variables:
        optimizer._track_variable(variable)


def detach(optimizer: Any) -> None:
    """Releases one user of the optimizer's recorder; the last one stops the recording request.

    The compiled step keeps recording until it is traced again (the cost is
    a few scalar writes), which keeps the step count exact across `fit()`
    calls made without a logger.
    """
    request = optimizer.recording
    if request is None or request.users == 0:
        return
    request.users -= 1
    if optimizer.recorder is not None:
        optimizer.recorder.users = request.users

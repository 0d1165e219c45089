"""The update's one backend seam: all-reduce, conditional update, apply.

On TensorFlow these are `keras_clip.training.distribute`'s (one all-reduce
under `tf.distribute`, a replica-safe condition, an apply that does not sum
again). JAX and PyTorch have no replica context inside an update: on JAX the
trainer differentiates the global (possibly sharded) batch, so the gradient
is global already; on PyTorch there is one process per device. There:

- `all_reduce` returns the gradients as they are;
- `run_if(pred, fn)` runs `fn` and keeps what it assigned only where `pred`
  holds. On JAX the update is traced in a `keras.StatelessScope`: `fn` runs
  in a nested scope that guards each assignment as it is made, storing
  `where(pred, new, current)`, so a skipped update leaves every variable
  (weights, slots, the iteration counter) exactly as it was, and what `fn`
  reads after an assignment (Adam's new moments, for the weight) is the
  guarded value. XLA fuses each select into the loop that computes the value,
  which still updates in place: the usual step pays no conditional (about
  half a percent of a step on XLA:CPU, where a conditional whose branches
  both wrote the weights would also copy them all) and no extra pass. On
  PyTorch (eager) `fn` runs only when `pred` is true;
- `apply_reduced` is `optimizer.apply`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
from keras import ops as K
from keras.src.backend.common import stateless_scope

BACKEND = keras.backend.backend()

if BACKEND == "tensorflow":
    from keras_clip.training.distribute import all_reduce, apply_reduced, run_if
else:

    def all_reduce(grads: Sequence[Any]) -> list[Any]:
        """The gradient of the global batch already (see the module docstring)."""
        return list(grads)

    def apply_reduced(optimizer: keras.optimizers.Optimizer, grads: list[Any], variables: list[Any]) -> None:
        """`optimizer.apply(grads, variables)`."""
        optimizer.apply(grads, variables)

    def run_if(pred: Any, fn: Callable[[], None]) -> None:
        """Runs `fn()` (which updates variables) only where `pred` is true."""
        if BACKEND == "jax":
            _select_updates(pred, fn)
        elif bool(K.convert_to_numpy(pred)):
            fn()


class _RecordingScope(stateless_scope.StatelessScope):
    """A stateless scope that starts from the enclosing one's values and remembers what was assigned."""

    def __init__(self, outer: stateless_scope.StatelessScope | None) -> None:
        super().__init__(initialize_variables=False)
        if outer is not None:
            self.state_mapping = dict(outer.state_mapping)
        self.assigned: dict[int, Any] = {}

    def add_update(self, update: tuple[Any, Any]) -> None:
        super().add_update(update)
        self.assigned[id(update[0])] = update[0]


class _GuardedScope(_RecordingScope):
    """A recording scope in which an assignment takes effect only where `pred` holds."""

    def __init__(self, outer: stateless_scope.StatelessScope | None, pred: Any) -> None:
        super().__init__(outer)
        self.pred = pred

    def add_update(self, update: tuple[Any, Any]) -> None:
        variable, value = update
        current = self.get_current_value(variable)
        current = variable.value if current is None else current
        super().add_update((variable, K.where(self.pred, value, current)))


def _select_updates(pred: Any, fn: Callable[[], None]) -> None:
    """Runs `fn` with every assignment guarded by `pred`, then assigns what it changed."""
    with _GuardedScope(stateless_scope.get_stateless_scope(), K.convert_to_tensor(pred)) as scope:
        fn()
    for variable in scope.assigned.values():
        variable.assign(scope.get_current_value(variable))

"""The update's one backend seam: all-reduce, conditional update, apply.

On TensorFlow these are `keras_clip.training.distribute`'s (one all-reduce
under `tf.distribute`, a replica-safe condition, an apply that does not sum
again). JAX and PyTorch have no replica context inside an update: on JAX the
trainer differentiates the global (possibly sharded) batch, so the gradient
is global already; on PyTorch there is one process per device. There:

- `all_reduce` returns the gradients as they are;
- `run_if(pred, fn)` runs `fn` and keeps what it assigned only where `pred`
  holds. On JAX the update is traced in a `keras.StatelessScope`: `fn` runs
  in a nested scope and each variable it assigned gets `where(pred, new,
  old)`, so a skipped update leaves every variable (weights, slots, the
  iteration counter) exactly as it was, as Keras's own JAX optimizer does for
  gradient accumulation. On PyTorch (eager) `fn` runs only when `pred` is true;
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


def _select_updates(pred: Any, fn: Callable[[], None]) -> None:
    """Runs `fn` in a nested stateless scope, then assigns `where(pred, new, old)` to what it changed."""
    outer = stateless_scope.get_stateless_scope()
    with _RecordingScope(outer) as scope:
        fn()
    pred = K.convert_to_tensor(pred)
    for variable in scope.assigned.values():
        old = variable.value  # The enclosing scope's value (or the variable's own).
        new = scope.get_current_value(variable)
        variable.assign(K.where(pred, K.cast(new, variable.dtype), old))

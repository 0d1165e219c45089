"""The update's one backend seam: all-reduce, conditional update, apply.

On TensorFlow these are `keras_clip.training.distribute`'s (one all-reduce
under `tf.distribute`, a replica-safe condition, an apply that does not sum
again). JAX and PyTorch have no replica context inside an update: on JAX the
trainer differentiates the global (possibly sharded) batch, so the gradient
is global already; on PyTorch there is one process per device. There:

- `all_reduce` returns the gradients as they are;
- `run_if(pred, fn)` runs `fn` and keeps what it assigned only where `pred`
  holds. On JAX the update is traced in a `keras.StatelessScope`: `fn` runs
  in a nested scope under `jax.lax.cond`, which returns the new values of the
  variables it assigns when `pred` holds and their old values otherwise, so a
  skipped update leaves every variable (weights, slots, the iteration counter)
  exactly as it was, and the usual step pays no per-entry select (XLA runs
  only the branch taken). On PyTorch (eager) `fn` runs only when `pred` is true;
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
    """Runs `fn` under `lax.cond(pred, ...)` in a nested stateless scope and assigns what it changed."""
    import jax

    outer = stateless_scope.get_stateless_scope()
    with _RecordingScope(outer) as probe:  # Traced once to learn what `fn` assigns; XLA drops the unused ops.
        fn()
    assigned = list(probe.assigned.values())
    old = [variable.value for variable in assigned]  # The enclosing scope's values (or the variables' own).

    def update(values: list[Any]) -> list[Any]:
        with _RecordingScope(outer) as scope:
            for variable, value in zip(assigned, values):
                scope.add_update((variable, value))
            fn()
        return [K.cast(scope.get_current_value(v), v.dtype) for v in assigned]

    new = jax.lax.cond(K.convert_to_tensor(pred), update, lambda values: list(values), old)
    for variable, value in zip(assigned, new):
        variable.assign(value)

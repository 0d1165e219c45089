"""The contract every clipping strategy follows, and the helpers to write one."""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
from keras import ops as K

from keras_clip import ops

Stats = dict[str, Any]


def state_variable(value: Any, dtype: str, name: str) -> keras.Variable:
    """A non-trainable Keras variable for clipping state or counters.

    `aggregation="only_first_replica"`: the state is computed from the
    all-reduced gradient, identical on every replica, so replica 0's value is
    kept as is (no averaging, which would be wrong for counters).

    Args:
        value: Initial value (anything `numpy.asarray` takes).
        dtype: String. The variable's dtype, e.g. `"float32"` or `"int64"`.
        name: String. The variable's name.
    """
    dtype = ops.wide(dtype)
    return keras.Variable(
        np.asarray(value, dtype=dtype), dtype=dtype, trainable=False, aggregation="only_first_replica", name=name
    )


def keep_if(condition: Any, new: Any, old: Any) -> Any:
    """`new` where `condition` holds, else `old` (an XLA-friendly select)."""
    return K.where(condition, new, K.convert_to_tensor(old))


class ClipStrategy:
    """Base class: how a list of gradients is clipped.

    A strategy is a small serializable object. Its constructor validates and
    stores its arguments, `get_config()` returns exactly those arguments, and
    `clip(grads, variables)` returns the clipped gradients with a dict of scalar
    statistics. It never knows about replicas, loss scales or accumulation: the
    model calls it on the final, all-reduced, unscaled gradient of an update.

    To write a strategy, subclass and override `clip_present(grads,
    variables)` (see "Write your own strategy" in the docs). Stateful
    strategies create their state once, in `build(variables)`, with
    `add_state`, and update it in `clip_present`, so the state is saved,
    checkpointed and distributed like any weight and readable by name in
    `state`.

    Example:

    ```python
    strategy = keras_clip.ClipByGlobalNorm(1.0)
    clipped, stats = strategy.clip(grads)                      # variables are optional here
    clipped, stats = strategy.clip(grads, model.trainable_variables)
    float(stats["grad_norm"]), float(stats["clipped_grad_norm"])
    ```
    """

    #: Whether `clip_present` reads the variables (their values or paths). Such a
    #: strategy refuses `clip(grads)` without them.
    needs_variables: bool = False

    def __init__(self) -> None:
        self.built = False
        self._state: dict[str, keras.Variable] = {}

    def build(self, variables: Sequence[Any]) -> None:
        """Creates the strategy's state for these variables (none by default).

        Args:
            variables: Sequence of variables (or None entries when `clip` was
                called without them). The trainable variables the gradients
                belong to, in the order `clip` receives them.
        """
        self.built = True

    def add_state(self, name: str, value: Any, dtype: str) -> keras.Variable:
        """Creates a state variable, listed in `state` under `name` (call it in `build`).

        Args:
            name: String. The key in `state`; the variable is named
                `<class name in lower case>_<name>`.
            value: Initial value (a scalar or a nested list).
            dtype: String. The variable's dtype, e.g. `"float32"`.

        Returns:
            The new non-trainable `keras.Variable`.
        """
        variable = state_variable(value, dtype, f"{type(self).__name__.lower()}_{name}")
        self._state[name] = variable
        return variable

    @property
    def state(self) -> dict[str, keras.Variable]:
        """The strategy's state variables by name (empty before `build` or when stateless)."""
        return dict(self._state)

    @property
    def variables(self) -> list[keras.Variable]:
        """The strategy's state variables as a list (the values of `state`, in order)."""
        return list(self.state.values())

    def clip(
        self,
        grads: Sequence[ops.Gradient | None],
        variables: Sequence[Any] | None = None,
    ) -> tuple[list[ops.Gradient | None], Stats]:
        """Clips gradients and reports what it measured.

        Args:
            grads: Sequence of Tensor, IndexedSlices or None, one per variable.
            variables: Sequence of keras.Variable (or, on TensorFlow, `tf.Variable`), the
                matching variables, or None for a strategy that does not read
                them (`needs_variables` is False).

        Returns:
            A tuple `(clipped_grads, stats)`: the clipped gradients in the same
            order (None stays None) and a dict of float32 scalar tensors.
        """
        grads = list(grads)
        if variables is None:
            if self.needs_variables:
                raise ValueError(
                    f"`variables` must be given to {type(self).__name__}.clip: it reads the variables' "
                    "values or paths. Received: variables=None"
                )
            variables = [None] * len(grads)
        variables = list(variables)
        if len(grads) != len(variables):
            raise ValueError(
                "`grads` and `variables` must have the same length. "
                f"Received: len(grads)={len(grads)}, len(variables)={len(variables)}"
            )
        if not self.built:
            self.build(variables)
        positions = [i for i, g in enumerate(grads) if g is not None]
        present = [ops.deduplicate(grads[i]) for i in positions]
        clipped, stats = self.clip_present(present, [variables[i] for i in positions])
        result: list[ops.Gradient | None] = list(grads)
        for i, g in zip(positions, clipped):
            result[i] = g
        return result, stats

    def clip_present(self, grads: list[ops.Gradient], variables: list[Any]) -> tuple[list[ops.Gradient], Stats]:
        """Clips the present gradients: the method a strategy overrides.

        `clip` calls it with only the gradients that are not None, each
        `tf.IndexedSlices` already free of repeated indices, and their
        variables (None entries when `clip` got no variables).

        Args:
            grads: List of Tensor or IndexedSlices.
            variables: List of the matching variables (or None entries).

        Returns:
            `(clipped, stats)`: the clipped gradients, same order and kinds,
            and a dict of float32 scalars holding at least `grad_norm` (global
            L2 norm before clipping) and `clipped_grad_norm` (after), plus
            `threshold` where a bound on the global norm exists (a bound of
            another kind goes under its own name, such as `ClipByNorm`'s
            `variable_threshold`). A strategy that measures the global norm
            in another norm than L2 adds `norm` and `clipped_norm`, in the
            norm its `threshold` is in.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement `clip_present(grads, variables)`.")

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments of this strategy."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ClipStrategy:
        """Creates a strategy from the output of `get_config()`."""
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

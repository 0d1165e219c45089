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


def rescaled(grads: Sequence[ops.Gradient], factors: Sequence[Any | None]) -> list[ops.Gradient]:
    """Each gradient multiplied by its factor (`ops.scale`); a None factor leaves it as it is."""
    return [g if f is None else ops.scale(g, f) for g, f in zip(grads, factors)]


def _placed(out: list[Any], positions: list[int], values: list[Any]) -> list[Any]:
    """`out` with `values` written at `positions` (the present gradients' places)."""
    for i, value in zip(positions, values):
        out[i] = value
    return out


def implements_rescale(strategy: Any, owner: type) -> bool:
    """Whether `strategy` implements `rescale_present` and keeps `owner`'s `clip_present`."""
    cls = type(strategy)
    return cls.rescale_present is not ClipStrategy.rescale_present and cls.clip_present is owner.clip_present


class ClipStrategy:
    """Base class: how a list of gradients is clipped.

    A strategy is a small serializable object. Its constructor validates and
    stores its arguments, `get_config()` returns exactly those arguments, and
    `clip(grads, variables)` returns the clipped gradients with a dict of scalar
    statistics. It never knows about replicas, loss scales or accumulation: the
    model calls it on the final, all-reduced, unscaled gradient of an update.

    To write a strategy, subclass and override `clip_present(grads,
    variables)`, or `rescale_present(grads, variables)` for one that only
    multiplies gradients by factors (see "Write your own strategy" in the
    docs). Stateful strategies create their state once, in
    `build(variables)`, with `add_state`, and update it in `clip_present`
    (or `rescale_present`), so the state is saved,
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
        positions, present, present_variables = self._present(grads, variables)
        clipped, stats = self.clip_present(present, present_variables)
        return _placed(list(grads), positions, clipped), stats

    def rescale(
        self,
        grads: Sequence[ops.Gradient | None],
        variables: Sequence[Any] | None = None,
    ) -> tuple[list[Any | None], Stats]:
        """The factors `clip` multiplies the gradients by, for a strategy that `rescales`.

        `clip(grads)` equals `grads` multiplied by these factors. A training
        step that applies them itself can form the products where they are
        consumed: `ClippingOptimizer` does so inside the update, where XLA
        fuses them into the optimizer's arithmetic instead of writing the
        clipped gradients out first. The strategy's state moves as in `clip`.

        Args:
            grads: Sequence of Tensor, IndexedSlices or None, one per variable.
            variables: Sequence of variables or None, as for `clip`.

        Returns:
            A tuple `(factors, stats)`: per gradient a float32 factor (a scalar,
            or a tensor that broadcasts against the gradient's values), or None
            where the gradient is None or left as it is; `stats` as from `clip`.

        Raises:
            NotImplementedError: The strategy does not only rescale.
        """
        if not self.rescales:
            raise NotImplementedError(f"{type(self).__name__} does not clip by rescaling: call `clip`.")
        grads = list(grads)
        positions, present, present_variables = self._present(grads, variables)
        factors, stats = self.rescale_present(present, present_variables)
        return _placed([None] * len(grads), positions, factors), stats

    @property
    def rescales(self) -> bool:
        """Whether the strategy clips only by multiplying each gradient by a factor.

        True for a class that implements `rescale_present` and keeps the
        default `clip_present` (a subclass overriding `clip_present` may do
        anything, so it is clipped through `clip`).
        """
        return implements_rescale(self, ClipStrategy)

    def _present(
        self, grads: list[ops.Gradient | None], variables: Sequence[Any] | None
    ) -> tuple[list[int], list[ops.Gradient], list[Any]]:
        """Validates, builds once, and returns the positions, gradients and variables of the present gradients."""
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
        return positions, present, [variables[i] for i in positions]

    def clip_present(self, grads: list[ops.Gradient], variables: list[Any]) -> tuple[list[ops.Gradient], Stats]:
        """Clips the present gradients: the method a strategy overrides.

        `clip` calls it with only the gradients that are not None, each
        `tf.IndexedSlices` already free of repeated indices, and their
        variables (None entries when `clip` got no variables). By default it
        multiplies the gradients by the factors of `rescale_present`, so a
        strategy that only rescales overrides that method instead.

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
        if type(self).rescale_present is ClipStrategy.rescale_present:
            raise NotImplementedError(
                f"{type(self).__name__} must implement `clip_present(grads, variables)` "
                "(or `rescale_present(grads, variables)`)."
            )
        factors, stats = self.rescale_present(grads, variables)
        return rescaled(grads, factors), stats

    def rescale_present(self, grads: list[ops.Gradient], variables: list[Any]) -> tuple[list[Any | None], Stats]:
        """The factors for the present gradients: the method a strategy that only rescales overrides.

        Args:
            grads: List of Tensor or IndexedSlices, as for `clip_present`.
            variables: List of the matching variables (or None entries).

        Returns:
            `(factors, stats)`: per gradient a float32 factor (a scalar or a
            tensor that broadcasts against the gradient's values) or None (left
            as it is), and the stats `clip_present` documents.
        """
        raise NotImplementedError(f"{type(self).__name__} does not clip by rescaling.")

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

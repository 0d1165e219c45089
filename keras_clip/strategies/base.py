"""The contract every clipping strategy follows."""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf

from keras_clip import ops

Stats = dict[str, tf.Tensor]


class ClipStrategy:
    """Base class: how a list of gradients is clipped.

    A strategy is a small serializable object. Its constructor validates and
    stores its arguments, `get_config()` returns exactly those arguments, and
    `clip(grads, variables)` returns the clipped gradients with a dict of scalar
    statistics. It never knows about replicas, loss scales or accumulation: the
    model calls it on the final, all-reduced, unscaled gradient of an update.

    Stateful strategies create Keras variables once, in `build(variables)`,
    and update them in `clip`, so the state is saved, checkpointed and
    distributed like any weight.

    Subclasses implement `_clip(grads, variables)`, which receives only the
    present gradients (no `None`), with `tf.IndexedSlices` already free of
    repeated indices, and must return `(clipped, stats)` where `stats` holds at
    least `grad_norm` (global L2 norm before clipping) and `clipped_grad_norm`
    (after), both float32 scalars, and `threshold` where a bound on the global
    norm exists (a bound of another kind goes under its own name, such as
    `ClipByNorm`'s `variable_threshold`).

    Example:

    ```python
    strategy = keras_clip.ClipByGlobalNorm(1.0)
    clipped, stats = strategy.clip(grads, model.trainable_variables)
    float(stats["grad_norm"]), float(stats["clipped_grad_norm"])
    ```
    """

    def __init__(self) -> None:
        self.built = False

    def build(self, variables: Sequence[keras.Variable]) -> None:
        """Creates the strategy's state for these variables (none by default).

        Args:
            variables: Sequence of keras.Variable. The trainable variables the
                gradients belong to, in the order `clip` receives them.
        """
        self.built = True

    @property
    def variables(self) -> list[keras.Variable]:
        """The strategy's state variables (empty for a stateless strategy)."""
        return []

    def clip(
        self,
        grads: Sequence[ops.Gradient | None],
        variables: Sequence[keras.Variable],
    ) -> tuple[list[ops.Gradient | None], Stats]:
        """Clips gradients and reports what it measured.

        Args:
            grads: Sequence of Tensor, IndexedSlices or None, one per variable.
            variables: Sequence of keras.Variable, the matching variables.

        Returns:
            A tuple `(clipped_grads, stats)`: the clipped gradients in the same
            order (None stays None) and a dict of float32 scalar tensors.
        """
        grads, variables = list(grads), list(variables)
        if len(grads) != len(variables):
            raise ValueError(
                "`grads` and `variables` must have the same length. "
                f"Received: len(grads)={len(grads)}, len(variables)={len(variables)}"
            )
        if not self.built:
            self.build(variables)
        positions = [i for i, g in enumerate(grads) if g is not None]
        present = [ops.deduplicate(grads[i]) for i in positions]
        clipped, stats = self._clip(present, [variables[i] for i in positions])
        result: list[ops.Gradient | None] = list(grads)
        for i, g in zip(positions, clipped):
            result[i] = g
        return result, stats

    def _clip(self, grads: list[ops.Gradient], variables: list[keras.Variable]) -> tuple[list[ops.Gradient], Stats]:
        raise NotImplementedError

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


def l2_norms(grads: Sequence[ops.Gradient]) -> tuple[list[tf.Tensor], tf.Tensor]:
    """Per-gradient squared L2 norms and the global L2 norm built from them."""
    squares = [ops.sum_of_squares(g) for g in grads]
    total = tf.sqrt(tf.add_n(squares)) if squares else tf.constant(0.0)
    return squares, total

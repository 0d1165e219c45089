"""The clipping state a model carries: the strategy's variables and counters."""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf
from keras.src.saving.keras_saveable import KerasSaveable

from keras_clip.strategies.base import ClipStrategy


class ClipState(tf.__internal__.tracking.AutoTrackable, KerasSaveable):
    """Holds the variables that clipping adds to a model.

    It is neither a layer nor a weight of the model (so `model.weights` and
    `model.summary()` are unchanged), yet `model.save()`, `load_model`,
    `BackupAndRestore` and `tf.train.Checkpoint` all find it: Keras saving
    walks attributes that are `KerasSaveable`, TF checkpoints follow
    trackable attributes.

    Args:
        strategy: ClipStrategy or None. The strategy whose state to hold.
    """

    def __init__(self, strategy: ClipStrategy | None) -> None:
        self._strategy = strategy
        self.nonfinite_steps = keras.Variable(
            0, dtype="int64", trainable=False, aggregation="only_first_replica", name="nonfinite_steps"
        )
        # Finite steps a strategy asked not to apply (its `skip` stat).
        self.skipped_steps = keras.Variable(
            0, dtype="int64", trainable=False, aggregation="only_first_replica", name="skipped_steps"
        )
        # The norms of the last real update, for optimizers that accumulate gradients.
        self.update_grad_norm = keras.Variable(
            0.0, dtype="float32", trainable=False, aggregation="only_first_replica", name="update_grad_norm"
        )
        self.update_clipped_grad_norm = keras.Variable(
            0.0, dtype="float32", trainable=False, aggregation="only_first_replica", name="update_clipped_grad_norm"
        )
        self.strategy_variables: list[keras.Variable] = []
        self._built = False

    @property
    def strategy(self) -> ClipStrategy | None:
        """The clipping strategy (None: monitoring only)."""
        return self._strategy

    @property
    def built(self) -> bool:
        """Whether `build` has run (the strategy's state exists)."""
        return self._built

    def build(self, variables: Sequence[keras.Variable]) -> None:
        """Creates the strategy's state for the model's trainable variables."""
        if self._strategy is not None and not self._strategy.built:
            self._strategy.build(list(variables))
        if self._strategy is not None and not self.strategy_variables:
            # Extend the tracked list in place: a pending tf.train.Checkpoint restore
            # watches this list and restores variables added to it later.
            self.strategy_variables.extend(self._strategy.variables)
        self._built = True

    def store_update_stats(self, stats: dict[str, tf.Tensor]) -> None:
        """Keeps the norms of a real update made inside the optimizer."""
        self.update_grad_norm.assign(stats["grad_norm"])
        self.update_clipped_grad_norm.assign(stats["clipped_grad_norm"])

    def update_stats(self) -> dict[str, tf.Tensor]:
        """The norms of the last real update (see `store_update_stats`)."""
        return {"grad_norm": self.update_grad_norm.value, "clipped_grad_norm": self.update_clipped_grad_norm.value}

    @property
    def variables(self) -> list[keras.Variable]:
        """Every variable held: the counters, then the strategy's state."""
        return [
            self.nonfinite_steps,
            self.update_grad_norm,
            self.update_clipped_grad_norm,
            self.skipped_steps,
            *self.strategy_variables,
        ]

    def _obj_type(self) -> str:
        # Keras saving only walks the kinds it knows; state is saved like a metric's.
        return "Metric"

    def save_own_variables(self, store: Any) -> None:
        """Writes the variables into a Keras weights store."""
        for i, variable in enumerate(self.variables):
            store[str(i)] = variable.numpy()

    def load_own_variables(self, store: Any) -> None:
        """Reads the variables back from a Keras weights store."""
        variables = self.variables
        if len(store.keys()) != len(variables):
            raise ValueError(
                "The saved clipping state does not match this model's strategy: "
                f"expected {len(variables)} variables, found {len(store.keys())}."
            )
        for i, variable in enumerate(variables):
            variable.assign(store[str(i)])

"""Helpers for strategies that keep state in Keras variables."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf


def state_variable(value: Any, dtype: str, name: str) -> keras.Variable:
    """A non-trainable Keras variable for clipping state.

    `aggregation="only_first_replica"`: the state is computed from the
    all-reduced gradient, identical on every replica, so replica 0's value is
    kept as is (no averaging, which would be wrong for counters).
    """
    return keras.Variable(
        np.asarray(value, dtype=dtype),
        dtype=dtype,
        trainable=False,
        aggregation="only_first_replica",
        name=name,
    )


def keep_if(condition: tf.Tensor, new: tf.Tensor, old: tf.Tensor) -> tf.Tensor:
    """`new` where `condition` holds, else `old` (an XLA-friendly select)."""
    return tf.where(condition, new, tf.convert_to_tensor(old))

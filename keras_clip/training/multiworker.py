"""`fit`, `evaluate` and `predict` under `MultiWorkerMirroredStrategy`.

Keras 3's TensorFlow trainer fails under `tf.distribute.MultiWorkerMirroredStrategy`
as soon as there is more than one worker (keras-team/keras#20585), on two
multi-worker-only paths of `keras/src/backend/tensorflow/trainer.py`:

1. `_maybe_symbolic_build` builds the model from the first batch, which it
   first averages across replicas with `strategy.reduce("MEAN", batch,
   axis=None)`; eagerly, on a multi-worker strategy, that raises "Attempt to
   convert a value (PerReplica ...) with an unsupported type".
2. `_make_function` reduces each step's logs with `reduce_per_replica(...,
   "auto")`, which on a multi-worker strategy is `strategy.reduce("MEAN", v,
   axis=0)`: a mean over the leading axis of every replica's value. The logs
   are scalars, which have no axis 0 ("Invalid reduction dimension 0 for input
   with 0 dimensions").

`MultiWorkerTrainer` overrides exactly these two methods, and only when
Keras takes those paths: it builds the model from this worker's own first
batch (building needs shapes, not values), and gives each scalar log a
leading axis of length 1, so Keras's own reduction averages it over all
replicas and returns a scalar again. Logs are then the mean over replicas,
equal on every worker, as Keras computes them under `MirroredStrategy`.
Nothing changes under any other strategy, or on one worker.
"""

from __future__ import annotations

from typing import Any, Callable

import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as tf_trainer

# The exact condition under which Keras takes both multi-worker paths.
is_multi_worker: Callable[[tf.distribute.Strategy], bool] = tf_trainer._collective_all_reduce_multi_worker


class MultiWorkerTrainer:
    """Lets a Keras 3 model train under `MultiWorkerMirroredStrategy` on TensorFlow.

    Put it before `keras.Model` in the bases (`ClippingMixin` derives from it).

    References:
        The upstream failure: [keras-team/keras#20585](https://github.com/keras-team/keras/issues/20585);
        the scalar reduction: [tensorflow/tensorflow#72388](https://github.com/tensorflow/tensorflow/issues/72388).
    """

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        strategy = getattr(self, "_distribute_strategy", None)
        if iterator is not None and strategy is not None and is_multi_worker(strategy):
            data_batch, iterator = _first_local_batch(iterator, strategy), None
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _make_function(self, step_function: Callable[[Any], Any]) -> Callable[[Any], Any]:
        if is_multi_worker(self.distribute_strategy):
            step_function = _with_leading_axis(step_function)
        return super()._make_function(step_function)


def _first_local_batch(iterator: Any, strategy: tf.distribute.Strategy) -> Any:
    """This worker's first replica's part of the first batch (None if there is no batch)."""
    for _, _, batches in iterator:
        batch = next(batches)

        def local(value: Any) -> Any:
            if isinstance(value, tf.distribute.DistributedValues):
                return strategy.experimental_local_results(value)[0]
            return value

        return tree.map_structure(local, batch)
    return None


def _with_leading_axis(step_function: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wraps a step so each scalar it returns has shape `(1,)`."""

    def step(data: Any) -> Any:
        outputs = step_function(data)
        return tree.map_structure(_leading_axis, outputs)

    return step


def _leading_axis(value: Any) -> tf.Tensor:
    value = tf.convert_to_tensor(value)
    return tf.reshape(value, [1]) if value.shape.rank == 0 else value

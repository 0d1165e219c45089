"""Counts gradient all-reduces: each `ReplicaContext.all_reduce` call made while a step is traced.

Imported by the distributed scripts (they run as scripts, so this folder is on `sys.path`).
`ALL_REDUCE_CALLS` gets one entry per call: the number of tensors it carried.
"""

import tensorflow as tf

ALL_REDUCE_CALLS = []
_all_reduce = tf.distribute.ReplicaContext.all_reduce


def _counting_all_reduce(self, reduce_op, value, options=None):
    ALL_REDUCE_CALLS.append(len(tf.nest.flatten(value)))
    return _all_reduce(self, reduce_op, value, options)


tf.distribute.ReplicaContext.all_reduce = _counting_all_reduce

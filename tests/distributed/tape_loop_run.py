"""Runs in its own process: a `tf.GradientTape` loop with `strategy.run`, 2 logical CPUs against one device.

Prints one JSON line: max |w_single - w_mirrored|, both runs' last norms and
the all-reduce calls each replica's traced step made.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_clip as kc  # noqa: E402

ALL_REDUCE_CALLS = []
_all_reduce = tf.distribute.ReplicaContext.all_reduce


def _counting_all_reduce(self, reduce_op, value, options=None):
    ALL_REDUCE_CALLS.append(len(tf.nest.flatten(value)))
    return _all_reduce(self, reduce_op, value, options)


tf.distribute.ReplicaContext.all_reduce = _counting_all_reduce
GLOBAL_BATCH = 16


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = np.concatenate([np.full((8, 1), 0.1), np.full((8, 1), 100.0)] * 4).astype("float32")
    return x, y


def train(strategy):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
        optimizer = kc.ClippingOptimizer(keras.optimizers.SGD(0.1, momentum=0.9), kc.ClipByGlobalNorm(1.0))
        optimizer.build(model.trainable_variables)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            per_example = keras.ops.mean((model(x, training=True) - y) ** 2, axis=-1)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    @tf.function
    def step(batch):
        strategy.run(replica_step, args=batch)

    dataset = tf.data.Dataset.from_tensor_slices(data()).batch(GLOBAL_BATCH)
    for batch in strategy.experimental_distribute_dataset(dataset):
        step(batch)
    report = optimizer.report()
    return model.get_weights(), float(report.grad_norm), float(report.clipped_grad_norm)


def main():
    single = train(tf.distribute.get_strategy())
    ALL_REDUCE_CALLS.clear()
    mirrored = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(single[0], mirrored[0]))
    result = {"max_abs_diff": diff, "single": single[1:], "mirrored": mirrored[1:]}
    result["all_reduce_calls"] = ALL_REDUCE_CALLS
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()

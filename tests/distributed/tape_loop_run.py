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
from all_reduce_count import ALL_REDUCE_CALLS  # noqa: E402

import keras_clip as kc  # noqa: E402

GLOBAL_BATCH = 16


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = np.concatenate([np.full((8, 1), 0.1), np.full((8, 1), 100.0)] * 4).astype("float32")
    return x, y


def train(strategy, scaled=False):
    """A tape loop; `scaled`: mixed_float16 with a LossScaleOptimizer inside the ClippingOptimizer."""
    keras.mixed_precision.set_global_policy("mixed_float16" if scaled else "float32")
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
        inner = keras.optimizers.SGD(0.1, momentum=0.9)
        if scaled:
            inner = keras.optimizers.LossScaleOptimizer(inner, initial_scale=2.0**10)
        optimizer = kc.ClippingOptimizer(inner, kc.ClipByGlobalNorm(1.0))
        optimizer.build(model.trainable_variables)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            per_example = keras.ops.mean((keras.ops.cast(model(x, training=True), "float32") - y) ** 2, axis=-1)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
            loss = optimizer.scale_loss(loss)
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    @tf.function
    def step(batch):
        strategy.run(replica_step, args=batch)

    x, y = data()
    if scaled:
        x[24:32] *= 3e4  # the second batch's second half (replica 1's) overflows float16
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    for batch in strategy.experimental_distribute_dataset(dataset):
        step(batch)
    report = optimizer.report()
    figures = [float(report.grad_norm), float(report.clipped_grad_norm), int(report.nonfinite_steps)]
    if scaled:
        figures += [float(inner.dynamic_scale.numpy()), int(inner.iterations.numpy())]
    return model.get_weights(), figures


def compare(scaled):
    single = train(tf.distribute.get_strategy(), scaled)
    ALL_REDUCE_CALLS.clear()
    mirrored = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), scaled)
    diff = max(float(np.max(np.abs(a.astype("float32") - b.astype("float32")))) for a, b in zip(single[0], mirrored[0]))
    return {"max_abs_diff": diff, "single": single[1], "mirrored": mirrored[1], "all_reduce_calls": ALL_REDUCE_CALLS}


def main():
    print("RESULT " + json.dumps({"plain": compare(False), "scaled": compare(True)}))


if __name__ == "__main__":
    main()

"""Runs in its own process: SkipSpikes under MirroredStrategy on 2 logical CPUs.

A run whose poisoned batches are skipped is compared with a one-device run
that never saw them. Prints one JSON line.
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

POISONED = (12, 17, 21)


def batches(n_batches=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(16 * n_batches, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 1))).astype("float32")
    keep = np.ones(len(x), bool)
    for b in POISONED:
        y[16 * b + 8 : 16 * (b + 1)] *= 300.0  # the half that replica 1 sees
        keep[16 * b : 16 * (b + 1)] = False
    return x, y, keep


def train(clipping, x, y, mirrored):
    scope = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if mirrored else tf.distribute.get_strategy()
    keras.utils.set_random_seed(0)
    with scope.scope():
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(8, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(0))(
            inputs
        )
        outputs = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(1))(hidden)
        model = kc.ClippingModel(inputs, outputs)
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", clipping=clipping, jit_compile=False)
    history = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    slots = [v.numpy() for v in model.optimizer.inner_optimizer.variables]
    return model.get_weights(), slots, int(model.optimizer.iterations.numpy()), history


def max_diff(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


def main():
    x, y, keep = batches()
    skip = kc.Chain(kc.SkipSpikes(4.0, window=16, warmup_steps=8), kc.ClipByGlobalNorm(1e3))
    weights, slots, iterations, history = train(skip, x, y, mirrored=True)
    ref_weights, ref_slots, ref_iterations, _ = train(kc.ClipByGlobalNorm(1e3), x[keep], y[keep], mirrored=False)
    applied, _, _, _ = train(kc.ClipByGlobalNorm(1e3), x, y, mirrored=True)
    result = {
        "skipped_steps": history["skipped_steps"],
        "iterations": iterations,
        "never_seen_iterations": ref_iterations,
        "max_weight_diff": max_diff(weights, ref_weights),
        "max_slot_diff": max_diff(slots[1:], ref_slots[1:]),  # slot 0 is the iteration counter
        "applied_diff": max_diff(applied, ref_weights),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()

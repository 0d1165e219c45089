"""Runs in its own process: 2 logical CPUs, one device vs MirroredStrategy.

Prints one JSON line: for each case, max |w_single - w_mirrored| and the
reported norms of both runs.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from all_reduce_count import ALL_REDUCE_CALLS  # noqa: E402

import keras_clip as kc  # noqa: E402


def data():
    """Halves whose gradients differ a lot: replica 0 sees small targets, replica 1 huge ones."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = np.concatenate([np.full((8, 1), 0.1), np.full((8, 1), 100.0)] * 4).astype("float32")
    return x, y


def build(cls):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="tanh", kernel_initializer=keras.initializers.GlorotUniform(1))(inputs)
    return cls(inputs, keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(2))(hidden))


def train(strategy_name, clipping, keras_clip_args=None, mirrored=False, spe=1, poison=False, target_scale=1.0):
    clipping = kc.get(clipping)  # a fresh strategy (and fresh state) for every run
    scope = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if mirrored else tf.distribute.get_strategy()
    with scope.scope():
        if keras_clip_args is None:
            model = build(kc.ClippingModel)
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", clipping=clipping, jit_compile=False,
                          steps_per_execution=spe)
        else:
            model = build(keras.Model)
            model.compile(optimizer=keras.optimizers.SGD(0.1, **keras_clip_args), loss="mse", jit_compile=False)
    x, y = data()
    y = y * target_scale
    if poison:
        x[8] = np.nan  # in the half of the first batch that replica 1 sees
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
    return model.get_weights(), history


def compare(name, **kwargs):
    single, h1 = train(name, mirrored=False, **kwargs)
    ALL_REDUCE_CALLS.clear()
    multi, h2 = train(name, mirrored=True, **kwargs)
    calls = list(ALL_REDUCE_CALLS)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(single, multi))
    keys = ("grad_norm", "clipped_grad_norm", "nonfinite_steps")
    return {"case": name, "max_abs_diff": diff, "all_reduce_calls": calls, "single": {k: h1.get(k) for k in keys},
            "mirrored": {k: h2.get(k) for k in keys}}


def main(names):
    cases = {
        "ClipByGlobalNorm": dict(clipping="global_norm"),
        "ClipByNorm": dict(clipping="norm"),
        "ClipByValue": dict(clipping=keras.saving.serialize_keras_object(kc.ClipByValue(0.5))),
        "ClipByGlobalNorm_inf": dict(clipping=keras.saving.serialize_keras_object(kc.ClipByGlobalNorm(1.0, "inf"))),
        "skip_poisoned": dict(clipping="global_norm", poison=True),
        "keras_global_clipnorm": dict(clipping=None, keras_clip_args={"global_clipnorm": 1.0}),
        "keras_no_clip": dict(clipping=None, keras_clip_args={}),
    }
    for extra in ("AutoClip", "ZClip", "AdaptiveGradClip"):
        # Adaptive thresholds follow the norm, so gradients stay large: smaller
        # targets keep float32 summation-order noise below the 1e-5 tolerance.
        cases[extra] = dict(clipping=extra, target_scale=0.02)
    results = [compare(n, **cases[n]) for n in (names or cases)]
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])

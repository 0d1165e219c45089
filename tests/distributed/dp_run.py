"""Runs in its own process: per-example clipping under MirroredStrategy on 2 logical CPUs.

Prints one JSON line: the largest difference between the mirrored step's
update and the loop-over-examples reference (noise off), the fraction of
examples clipped, and the noise's empirical std over the formula (noise on).
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_clip as kc  # noqa: E402
from tests import dp_cases  # noqa: E402


def one_step(strategy, ghost_norms):
    x, y = dp_cases.data()
    reference_model = dp_cases.build_model(keras.Model)
    _, norms = dp_cases.reference_update(reference_model, x, y, 1.0)
    l2_norm_clip = float(np.median(norms))
    expected, _ = dp_cases.reference_update(reference_model, x, y, l2_norm_clip)
    with strategy.scope():
        model = dp_cases.build_model()
        model.compile(
            optimizer=keras.optimizers.SGD(1.0),
            loss="mse",
            clipping=kc.PerExampleClip(l2_norm_clip, ghost_norms=ghost_norms),
        )
    before = model.get_weights()
    model.fit(x, y, batch_size=dp_cases.BATCH, epochs=1, shuffle=False, verbose=0)
    diff = max(float(np.max(np.abs(b - a - e))) for b, a, e in zip(before, model.get_weights(), expected))
    figures = model.optimizer.report().figures
    return {
        "max_abs_diff": diff,
        "clipped_fraction": float(figures["clipped_fraction"]),
        "reference_clipped_fraction": float(np.mean(norms > l2_norm_clip)),
        "example_norm_max": float(figures["example_norm_max"]),
        "reference_norm_max": float(norms.max()),
    }


def main():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    ratio, mean, _ = dp_cases.noise_ratio(strategy)
    result = {"replicas": strategy.num_replicas_in_sync, "noise_ratio": ratio, "noise_mean": mean}
    result.update(ghost=one_step(strategy, True), vectorized=one_step(strategy, False))
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()

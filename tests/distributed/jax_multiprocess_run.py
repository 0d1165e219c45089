"""One process of a 2-process JAX run (`keras.distribution.DataParallel`), or the one-device reference.

Usage: `KERAS_BACKEND=jax python jax_multiprocess_run.py OUT_DIR`. With Keras's
`KERAS_DISTRIBUTION_JOB_ADDRESSES`, `KERAS_DISTRIBUTION_NUM_PROCESSES` and
`KERAS_DISTRIBUTION_PROCESS_ID` set, the process joins the cluster
(`keras.distribution.initialize`, jax.distributed with gloo CPU collectives),
trains under `DataParallel` over every process's devices and writes
`OUT_DIR/process<i>.json`; without them it trains on one device and writes
`OUT_DIR/single.json`.

Each case trains the seed model of `tests/backends/seed_run.py` for 2 epochs of
`seed_run.STEPS` global batches of `seed_run.BATCH`, in order, on its data with the
targets divided by 100 (gradient norms from 0.1 to 4.5, so that both strategies clip
some steps and not others, and the run converges without clipping too):
- `ClipByGlobalNorm(1.0)`, `AutoClip(25.0)`: from a batched `tf.data.Dataset` of the
  global batches, which Keras shards between the processes (`distribute_dataset`);
  `AutoClip` also has a `GradientNormLogger` (the same `log_dir` for every process);
- `ClipByGlobalNorm_local_arrays`: from NumPy arrays holding this process's half of
  every global batch, with `auto_shard_dataset=False`.
The one-device reference trains each case from the NumPy arrays of the global batches.
The file also has the first batches this process feeds from the dataset, and the error
Keras raises for NumPy arrays with auto-sharding on.
"""

import faulthandler
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
faulthandler.dump_traceback_later(float(os.environ.get("WORKER_TIMEOUT", "150")), exit=True)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_clip as kc  # noqa: E402
from tests.backends import seed_run  # noqa: E402
from tests.distributed.batch_logs import BatchLogs  # noqa: E402

MULTI = "KERAS_DISTRIBUTION_PROCESS_ID" in os.environ
STRATEGIES = {"ClipByGlobalNorm": lambda: kc.ClipByGlobalNorm(1.0), "AutoClip": lambda: kc.AutoClip(25.0)}
LOCAL_ARRAYS = "ClipByGlobalNorm_local_arrays"
LOGGED = "AutoClip"
EPOCHS = 2


def data():
    """`seed_run.data()` with the targets divided by 100."""
    x, y = seed_run.data()
    return x, y / 100.0


def local_half(array, index, count):
    """This process's rows of every global batch: rows [index * B / count, (index + 1) * B / count) of each."""
    batches = array.reshape(-1, seed_run.BATCH, *array.shape[1:])
    size = seed_run.BATCH // count
    return batches[:, index * size : (index + 1) * size].reshape(-1, *array.shape[1:])


def fit(case, out_dir):
    name = case.removesuffix("_local_arrays")
    model = seed_run.compiled_model(STRATEGIES[name](), jit_compile=True)
    logs = BatchLogs()
    callbacks = [logs]
    log_dir = os.path.join(out_dir, "logs") if case == LOGGED else None
    if log_dir:
        callbacks.append(kc.GradientNormLogger(log_dir))
    x, y = data()
    if not MULTI:
        inputs = {"x": x, "y": y, "batch_size": seed_run.BATCH, "shuffle": False}
    elif case == LOCAL_ARRAYS:
        index, count = jax.process_index(), jax.process_count()
        batch = seed_run.BATCH // count
        inputs = {"x": local_half(x, index, count), "y": local_half(y, index, count), "batch_size": batch,
                "shuffle": False}
    else:
        inputs = {"x": tf.data.Dataset.from_tensor_slices((x, y)).batch(seed_run.BATCH)}
    model.fit(**inputs, epochs=EPOCHS, verbose=0, callbacks=callbacks)
    return {"weights": [np.asarray(w).tolist() for w in model.get_weights()], "batch_logs": logs.logs,
            "log_dir": log_dir}


def local_batches(count=2):
    """The first `count` batches of x this process feeds from the tf.data.Dataset (Keras's `distribute_dataset`)."""
    x, y = data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(seed_run.BATCH)
    local = keras.distribution.distribution().distribute_dataset(dataset)
    return [batch_x.numpy().tolist() for batch_x, _ in local.take(count)]


def numpy_with_auto_shard():
    """What Keras does with NumPy arrays when the distribution auto-shards (its default)."""
    model = seed_run.compiled_model(STRATEGIES["ClipByGlobalNorm"](), jit_compile=True)
    x, y = data()
    try:
        model.fit(x, y, batch_size=seed_run.BATCH, epochs=1, verbose=0)
    except ValueError as error:
        return str(error)
    return None


def main(out_dir):
    if MULTI:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        keras.distribution.initialize()  # reads the KERAS_DISTRIBUTION_* variables
        distribution = keras.distribution.DataParallel(devices=jax.devices())
        keras.distribution.set_distribution(distribution)
    result = {"cases": {case: fit(case, out_dir) for case in STRATEGIES}}
    if MULTI:
        result["local_batches"] = local_batches()
        result["numpy_with_auto_shard"] = numpy_with_auto_shard()
        distribution.auto_shard_dataset = False
        result["cases"][LOCAL_ARRAYS] = fit(LOCAL_ARRAYS, out_dir)
    result.update(pid=os.getpid(), process_index=jax.process_index(), process_count=jax.process_count(),
                  devices=len(jax.devices()), local_devices=len(jax.local_devices()))
    role = f"process{jax.process_index()}" if MULTI else "single"
    Path(out_dir, f"{role}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])

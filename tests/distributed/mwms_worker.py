"""One worker of a 2-worker MultiWorkerMirroredStrategy run, or the single-process reference.

Usage: `python mwms_worker.py SCENARIO OUT_DIR [PHASE]`. With `TF_CONFIG` set the
worker trains under `MultiWorkerMirroredStrategy` and writes `OUT_DIR/worker<i>.json`;
without it, it trains on one device (no strategy) and writes `OUT_DIR/single.json`.

Scenarios:
- `train`: `ClippingModel`, `ClippingSequential` and a `ClippingMixin` subclass, fixed and
  adaptive clipping, and a plain `keras.Model` with the override: 2 epochs of `fit` (with
  validation), then `evaluate` and `predict`; weights, per-batch logs, gradient all-reduce
  calls; a `GradientNormLogger` on one case.
- `plain`: the same run with a plain `keras.Model` (expected to fail, with Keras's error);
  `plain_build_fixed`: the same with only the first failing path overridden.
- `backup`: `BackupAndRestore` at each epoch end, adaptive clipping; PHASE is `uninterrupted`,
  `interrupted` (worker 1 prints `KILL_ME` mid-epoch and waits to be killed) or `resumed`.
"""

import faulthandler
import json
import os
import sys
import threading
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
faulthandler.dump_traceback_later(float(os.environ.get("WORKER_TIMEOUT", "150")), exit=True)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_clip as kc  # noqa: E402
from keras_clip.training.multiworker import MultiWorkerTrainer  # noqa: E402

keras.config.disable_traceback_filtering()
MULTI = "TF_CONFIG" in os.environ
INDEX = json.loads(os.environ["TF_CONFIG"])["task"]["index"] if MULTI else None
ROLE = f"worker{INDEX}" if MULTI else "single"
from all_reduce_count import ALL_REDUCE_CALLS  # noqa: E402
from batch_logs import BatchLogs  # noqa: E402

STRATEGY = tf.distribute.MultiWorkerMirroredStrategy() if MULTI else tf.distribute.get_strategy()


class SubclassedNet(kc.ClippingMixin, keras.Model):
    def __init__(self, hidden, out):
        super().__init__()
        self.hidden, self.out = hidden, out

    def call(self, x):
        return self.out(self.hidden(x))


class KerasWithOverride(MultiWorkerTrainer, keras.Model):
    """Plain Keras (no clipping) with the multi-worker override."""


class PlainWithBuildFix(MultiWorkerTrainer, keras.Model):
    """Plain Keras with only the first failing path (`_maybe_symbolic_build`) overridden."""

    _make_function = keras.Model._make_function


def data(n=128):
    """Batches of 16 whose halves (one per worker) give very different gradients; the 6th
    batch of each epoch has 5 times larger targets (a gradient spike)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = np.concatenate([np.full((8, 1), 0.1), np.full((8, 1), 3.0)] * (n // 16)).astype("float32")
    y[80:96] *= 5.0
    return x, y + 0.1 * x[:, :1]


def build(kind):
    keras.utils.set_random_seed(0)
    hidden = keras.layers.Dense(8, activation="tanh", kernel_initializer=keras.initializers.GlorotUniform(1))
    out = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(2))
    if kind == "sequential":
        return kc.ClippingSequential([keras.Input((4,)), hidden, out])
    if kind == "subclassed":
        return SubclassedNet(hidden, out)
    inputs = keras.Input((4,))
    cls = {"functional": kc.ClippingModel, "keras": KerasWithOverride, "plain": keras.Model,
           "plain_build_fixed": PlainWithBuildFix}[kind]
    return cls(inputs, out(hidden(inputs)))


def compile_model(kind, clipping):
    with STRATEGY.scope():
        model = build(kind)
        extra = {} if clipping is None else {"clipping": clipping()}
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", metrics=["mae"], jit_compile=False, **extra)
    return model


TRAIN_CASES = {  # a fresh strategy (and state) for every model
    "functional_global_norm": ("functional", lambda: kc.ClipByGlobalNorm(1.0)),
    "functional_autoclip": ("functional", lambda: kc.AutoClip(percentile=25.0)),
    "sequential_zclip": ("sequential", lambda: kc.ZClip(warmup_steps=4, max_norm=None)),
    "subclassed_global_norm": ("subclassed", lambda: kc.ClipByGlobalNorm(1.0)),
    "keras_no_clip": ("keras", None),
}
LOGGED_CASE = "functional_autoclip"


def train_case(name, out_dir):
    kind, clipping = TRAIN_CASES[name]
    model = compile_model(kind, clipping)
    x, y = data()
    batch_logs = BatchLogs()
    callbacks = [batch_logs]
    log_dir = os.path.join(out_dir, "logs") if name == LOGGED_CASE else None
    if log_dir:  # every worker is given the same log_dir, as on a shared filesystem
        callbacks.append(kc.GradientNormLogger(log_dir))
    ALL_REDUCE_CALLS.clear()
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=callbacks,
                        validation_data=(x[:32], y[:32])).history
    calls = list(ALL_REDUCE_CALLS)
    return {
        "weights": [w.tolist() for w in model.get_weights()],
        "history": history,
        "batch_logs": batch_logs.logs,
        "all_reduce_calls": calls,
        "log_dir": log_dir,
        "evaluate": model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True),
        "predict": model.predict(x, batch_size=16, verbose=0)[:, 0].tolist(),
    }


def plain(kind):
    model = compile_model(kind, None)
    x, y = data()
    try:
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    except Exception as error:  # the failure being documented
        frames = [f"{frame.name}" for frame in traceback.extract_tb(error.__traceback__)]
        return {"error": f"{type(error).__name__}: {error}", "frames": frames}
    return {"error": None}


class KillPoint(keras.callbacks.Callback):
    """Worker 1, mid-epoch: says so on stdout, then waits to be killed."""

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 3:
            print("KILL_ME", flush=True)
            threading.Event().wait()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


def clip_state(model):
    """The clipping strategy's state (AutoClip: the norm history and the step count)."""
    return [v.numpy().tolist() for v in model.clipping.variables]


class ClipStates(keras.callbacks.Callback):
    """The clipping state right after `BackupAndRestore` ran (it comes first), and at each epoch end."""

    def on_train_begin(self, logs=None):
        self.restored = clip_state(self.model)
        self.iterations = int(self.model.optimizer.iterations.numpy())
        self.epoch_ends = {}

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends[epoch] = clip_state(self.model)


def backup(out_dir, phase):
    model = compile_model("functional", lambda: kc.AutoClip(percentile=25.0))
    x, y = data()
    # Each worker backs up to its own directory: two processes must not write one HDF5 file.
    backup_dir = os.path.join(out_dir, f"backup_{phase if phase == 'uninterrupted' else 'faulty'}", ROLE)
    states, batch_logs = ClipStates(), BatchLogs()
    callbacks = [keras.callbacks.BackupAndRestore(backup_dir), states, batch_logs]
    if phase == "interrupted" and INDEX == 1:
        callbacks.append(KillPoint())
    history = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0, callbacks=callbacks).history
    return {
        "weights": [w.tolist() for w in model.get_weights()],
        "history": history,
        "batch_logs": batch_logs.logs,
        "restored_state": states.restored,
        "restored_iterations": states.iterations,
        "epoch_end_states": states.epoch_ends,
        "clip_state": clip_state(model),
    }


def main(scenario, out_dir, phase=None):
    if scenario == "train":
        result = {"cases": {name: train_case(name, out_dir) for name in TRAIN_CASES}}
    elif scenario in ("plain", "plain_build_fixed"):
        result = plain(scenario)
    elif scenario == "backup":
        result = backup(out_dir, phase)
    else:
        raise ValueError(f"Unknown scenario: {scenario}")
    result["num_replicas_in_sync"] = STRATEGY.num_replicas_in_sync
    result["pid"] = os.getpid()
    name = ROLE if phase is None else f"{ROLE}_{phase}"
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Small model builders shared by the tests."""

import os
import re
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import keras_clip as kc
from keras_clip.experiments import problems


def mlp(cls=kc.ClippingModel, features=4, hidden=8, seed=0):
    """Dense(hidden, relu) -> Dense(1), deterministic initial weights."""
    inputs = keras.Input((features,))
    init = keras.initializers.GlorotUniform(seed=seed)
    h = keras.layers.Dense(hidden, activation="relu", kernel_initializer=init, name="hidden")(inputs)
    outputs = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1), name="out")(h)
    return cls(inputs, outputs)


def sgd():
    return keras.optimizers.SGD(0.01, momentum=0.9)


def seed_model(clipping=None, lr=problems.SEED_LEARNING_RATE, steps_per_execution=1, jit_compile=True,
               on_nonfinite="skip"):
    """`problems.seed_model()` compiled: SGD(lr, momentum 0.8), MSE."""
    model = problems.seed_model()
    model.compile(
        optimizer=problems.sgd(lr, problems.SEED_MOMENTUM),
        loss="mse",
        clipping=clipping,
        on_nonfinite=on_nonfinite,
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    return model


def unit_direction(seed: int = 0):
    """Two variables (a kernel and a bias) and a fixed unit-norm direction across their gradients."""
    rng = np.random.default_rng(seed)
    variables = [keras.Variable(np.zeros((4, 3), "float32"), name="w"), keras.Variable(np.zeros(3, "float32"))]
    direction = [rng.normal(size=(4, 3)), rng.normal(size=3)]
    total = np.sqrt(sum(np.sum(d**2) for d in direction))
    return variables, [tf.constant(d / total, tf.float32) for d in direction]


def clip_norm_sequence(strategy, norms, jit: bool, seed: int = 0) -> np.ndarray:
    """Feeds `strategy` one gradient per norm, all along one fixed direction.

    Checks each clipped gradient is the input rescaled by the reported factor and returns one row
    per step: `(threshold, clipped_grad_norm, grad_norm)` as the strategy reported them.
    """
    variables, direction = unit_direction(seed)
    step = tf.function(lambda g: strategy.clip(g, variables), jit_compile=True)
    rows = []
    for n in norms:
        grads = [d * n for d in direction]
        clipped, stats = step(grads) if jit else strategy.clip(grads, variables)
        rows.append((float(stats["threshold"]), float(stats["clipped_grad_norm"]), float(stats["grad_norm"])))
        ratio = rows[-1][1] / rows[-1][2] if rows[-1][2] != 0 else 1.0
        for g, c in zip(grads, clipped):
            np.testing.assert_allclose(c.numpy(), g.numpy() * ratio, rtol=1e-4, atol=1e-6)
    return np.array(rows)


def read_run(log_dir):
    """Every tensor event under `<log_dir>/train`, by tag: [(step, value)]."""
    from tensorboard.backend.event_processing import plugin_event_accumulator

    accumulator = plugin_event_accumulator.EventAccumulator(
        os.path.join(log_dir, "train"), size_guidance={"tensors": 0}
    )
    accumulator.Reload()
    return {tag: accumulator.Tensors(tag) for tag in accumulator.Tags()["tensors"]}


def scalars(events, tag):
    """One tag's events as `[(step, value)]`."""
    return [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events[tag]]


def tiny_clipping_model(clipping, optimizer=None, seed: int = 0):
    """Dense(3, relu, "hidden") -> Dense(1, "head"), XLA, seeded: the resume tests' model."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, activation="relu", name="hidden")(inputs)
    model = kc.ClippingModel(inputs, keras.layers.Dense(1, name="head")(hidden))
    optimizer = optimizer or keras.optimizers.SGD(0.01, momentum=0.9)
    model.compile(optimizer=optimizer, loss="mse", clipping=clipping, jit_compile=True)
    return model


def fit_quietly(model, data, epochs: int, **kwargs):
    """`fit` in order (no shuffle), batch 16, silent; returns the History's dict."""
    return model.fit(*data, batch_size=16, epochs=epochs, shuffle=False, verbose=0, **kwargs).history


def assert_same_run(a, b):
    """Bit-identical weights and optimizer variables (the inner optimizer's, the counters, the strategy's state)."""
    left, right = a.weights + a.optimizer.variables, b.weights + b.optimizer.variables
    assert len(left) == len(right)
    for u, v in zip(left, right):
        np.testing.assert_array_equal(u.numpy(), v.numpy(), err_msg=u.path)


def save_load_and_go_on(model, data, epochs: int, tmp_path):
    """Saves a trained model to a .keras file, loads it, checks the state came back, trains on."""
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.clipping.get_config() == model.clipping.get_config()
    for saved, restored in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())
    return loaded, fit_quietly(loaded, data, epochs)


def script_result(script, *args, timeout: int = 600):
    """Runs a script of `tests/distributed/` in its own process; returns the JSON of its `RESULT ` line."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).parent / "distributed" / script
    run = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=timeout)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT ") :])


def documented_launch(heading: str) -> tuple[str, str]:
    """The `train.py` and the shell commands under `### heading` in docs/distributed.md, as written there."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "distributed.md").read_text()
    section = text.split(f"### {heading}", 1)[1].split("\n### ", 1)[0]
    script = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    commands = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return script, commands

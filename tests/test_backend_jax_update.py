"""The compiled JAX update (keras_clip.training.backend): no conditional around it, no copy of a weight."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Compiles a ClippingModel's train_step as `fit` does (jax.jit, state donated) and reports, from
# XLA's optimized module, its conditionals and the shapes that the entry computation copies.
PROGRAM = """
import json, re
import jax, keras, numpy as np
import keras_clip as kc

inputs = keras.Input((12,))
hidden = keras.layers.Dense(24, activation="relu")(keras.layers.Dense(24, activation="relu")(inputs))
model = kc.ClippingModel(inputs, keras.layers.Dense(3)(hidden))
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", clipping=kc.ClipByGlobalNorm(1.0))
x, y = np.ones((8, 12), "float32"), np.zeros((8,), "int32")
model.fit(x, y, batch_size=8, epochs=1, verbose=0)
state = model._get_jax_state(True, True, True, True)
text = jax.jit(model.train_step, donate_argnums=0).lower(state, (x, y)).compile().as_text()
entry = text[text.index("ENTRY"):]
copied = re.findall(r"= (f32\\[[0-9,]*\\])\\{[^}]*\\} copy\\(", entry)
shapes = sorted({"f32[%s]" % ",".join(map(str, v.shape)) for v in model.weights})
print(json.dumps({"conditionals": text.count(" conditional("), "copied": copied, "weights": shapes}))
"""


def test_the_compiled_jax_step_copies_no_weight_and_branches_only_for_overflow(tmp_path):
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    # One conditional: the overflow fallback of the global norm. The skip is a select fused into
    # the update's loops, not a conditional (which would cost about half a percent of a step).
    assert found["conditionals"] == 1, found
    # Weights and Adam's slots are updated in place: none of their shapes is copied (but the output
    # bias, f32[3], which plain Keras's step copies too).
    assert not set(found["copied"]) & set(found["weights"]) - {"f32[3]"}, found

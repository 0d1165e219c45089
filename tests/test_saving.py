"""compile() arguments survive model.save and keras.models.load_model in a fresh process."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_clip as kc
from tests.helpers import mlp

LOAD_AND_TRAIN = textwrap.dedent(
    """
    import sys, numpy as np, keras
    import keras_clip as kc
    model = keras.models.load_model(sys.argv[1])
    assert isinstance(model, kc.ClippingModel) and type(model).__name__ == "ClippingModel", type(model)
    assert model.clipping.get_config() == {"max_norm": 0.5, "norm_type": "inf"}, model.clipping
    assert model.on_nonfinite == "zero"
    assert int(model.optimizer.iterations.numpy()) == 4
    data = np.load(sys.argv[2])
    model.fit(data["x"], data["y"], batch_size=16, epochs=1, shuffle=False, verbose=0)
    np.savez(sys.argv[3], *model.get_weights())
    """
)


@pytest.mark.slow
def test_save_then_load_in_a_fresh_process_restores_clipping_and_trains_on(tmp_path, small_data):
    x, y = small_data
    model = mlp()
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss="mse",
        clipping=kc.ClipByGlobalNorm(0.5, norm_type="inf"),
        on_nonfinite="zero",
    )
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "data.npz", x=x, y=y)
    # Continue training here: the fresh process must end at the same weights.
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    script = tmp_path / "load.py"
    script.write_text(LOAD_AND_TRAIN)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "m.keras"), str(tmp_path / "data.npz"), str(tmp_path / "w.npz")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = np.load(tmp_path / "w.npz")
    for i, expected in enumerate(model.get_weights()):
        np.testing.assert_allclose(loaded[f"arr_{i}"], expected, rtol=1e-6)


def test_compile_config_carries_clipping():
    model = mlp()
    model.compile(optimizer="sgd", loss="mse", clipping="value", on_nonfinite="raise")
    config = model.get_compile_config()
    assert config["on_nonfinite"] == "raise"
    clone = mlp()
    clone.compile_from_config(config)
    assert clone.clipping.get_config() == {"clip_value": 1.0}
    assert clone.on_nonfinite == "raise"


def test_sequential_round_trip(tmp_path, small_data):
    model = kc.ClippingSequential([keras.Input((4,)), keras.layers.Dense(2), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", clipping=kc.ClipByNorm(2.0))
    model.fit(*small_data, epochs=1, verbose=0)
    model.save(tmp_path / "s.keras")
    loaded = keras.models.load_model(tmp_path / "s.keras")
    assert type(loaded) is kc.ClippingSequential
    assert loaded.clipping.get_config() == {"max_norm": 2.0, "norm_type": 2}
    history = loaded.fit(*small_data, epochs=1, verbose=0).history
    assert "grad_norm" in history


def test_clipping_state_is_saved_and_checkpointed(tmp_path, small_data):
    import tensorflow as tf

    x, y = (a.copy() for a in small_data)
    x[0] = np.nan
    model = mlp()
    model.compile(optimizer="sgd", loss="mse", clipping="global_norm")
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert int(model.optimizer.report().nonfinite_steps) == 1
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert int(loaded.optimizer.report().nonfinite_steps) == 1
    assert len(loaded.weights) == len(mlp().weights)  # the state is not a model weight
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    fresh = mlp()
    fresh.compile(optimizer="sgd", loss="mse", clipping="global_norm")
    tf.train.Checkpoint(model=fresh).read(path).expect_partial()
    fresh.optimizer.build(fresh.trainable_variables)  # a deferred restore fills the state as it is built
    assert int(fresh.optimizer.report().nonfinite_steps) == 1


SERVE_WITHOUT_PACKAGE = textwrap.dedent(
    """
    import sys
    sys.modules["keras_clip"] = None  # not installed, as on a serving machine
    import numpy as np, tensorflow as tf
    artifact = tf.saved_model.load(sys.argv[1])
    x = np.load(sys.argv[2])
    np.save(sys.argv[3], artifact.serve(tf.constant(x)).numpy())
    """
)


@pytest.mark.slow
def test_exported_model_serves_where_the_package_is_not_installed(tmp_path, small_data):
    x, y = small_data
    model = mlp()
    model.compile(optimizer="sgd", loss="mse", clipping=kc.AutoClip())
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    model.export(str(tmp_path / "served"), verbose=False)
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run(
        [sys.executable, "-c", SERVE_WITHOUT_PACKAGE, str(tmp_path / "served"), str(tmp_path / "x.npy"),
         str(tmp_path / "out.npy")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)

"""`keras-clip suggest`: a threshold read back from a real logged run, checked against numpy."""

import math

import keras
import numpy as np
import pytest

import keras_clip as kc
import keras_clip.cli
from keras_clip.cli import main
from keras_clip.cli import suggest as suggest_module
from keras_clip.experiments import NormRecorder
from tests.helpers import seed_model

STEPS = 16  # 2 epochs of 1000 samples, batch 128


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, seed_data):
    """The seed model clipped at 1.0, logged by GradientNormLogger beside Keras's own per-batch logs.

    Returns the log_dir and every step's pre-clip norm as the train step reported it.
    """
    keras.utils.set_random_seed(0)
    log_dir = tmp_path_factory.mktemp("run")
    recorder = NormRecorder()
    callbacks = [recorder, kc.GradientNormLogger(log_dir), keras.callbacks.TensorBoard(log_dir, update_freq="batch")]
    seed_model(kc.ClipByGlobalNorm(1.0)).fit(*seed_data, batch_size=128, epochs=2, verbose=0, callbacks=callbacks)
    assert len(recorder.pre_clip) == STEPS
    return log_dir, np.array(recorder.pre_clip)


def _suggest(capsys, *argv: str) -> str:
    assert main(["suggest", *argv]) == 0
    return capsys.readouterr().out


def test_reads_every_step_and_nothing_else(logged_run):
    log_dir, norms = logged_run
    # Keras's TensorBoard wrote batch_grad_norm into the same directory: only our tag is read.
    np.testing.assert_allclose(suggest_module.read_norms(log_dir), norms, rtol=1e-6)
    np.testing.assert_allclose(suggest_module.read_norms(log_dir / "train"), norms, rtol=1e-6)


@pytest.mark.parametrize("percentile", [50.0, 90.0, 12.5])
def test_threshold_is_the_percentile_of_the_logged_norms(capsys, logged_run, percentile):
    log_dir, norms = logged_run
    out = _suggest(capsys, "--logdir", str(log_dir), "--percentile", str(percentile))
    threshold = float(f"{np.percentile(norms.astype(np.float64), percentile):.3g}")
    clipped = int(np.sum(norms > threshold))
    assert f"of {STEPS} steps in {log_dir}:" in out
    summary = f"median {np.median(norms):.3g}; percentile {percentile:g}: {threshold:.3g}; largest {norms.max():.3g}"
    assert summary in out
    assert f"Percentile {percentile:g} as a threshold: clipping=keras_clip.ClipByGlobalNorm({threshold:g})" in out
    assert f"it would have clipped {clipped} of these {STEPS} steps ({100 * clipped / STEPS:.1f}%)" in out
    assert 0 < clipped < STEPS  # the run's norms spread: the count depends on the percentile
    first, last = np.median(norms[: STEPS // 4]), np.median(norms[-(STEPS // 4):])
    quarters = f"first quarter of the steps: median {first:.3g}; last quarter: median {last:.3g}"
    assert f"{quarters} ({last / first:.2g}x)" in out
    # A clipped run that trains: its norms do not grow, so no warning; the caveat is always printed.
    assert "Warning:" not in out and "Not a tuned setting: a threshold read off one run" in out
    assert "Suggested:" not in out  # it reports what the norms show, it does not pretend to tune


def test_default_percentile_is_90(capsys, logged_run):
    log_dir, _ = logged_run
    assert "percentile 90:" in _suggest(capsys, "--logdir", str(log_dir))


def test_suggestion_properties():
    norms = [3.0, 1.0, 2.0, float("nan"), 4.0, float("inf")]
    top = suggest_module.suggest(norms, 100.0)
    assert (top.threshold, top.steps_clipped, top.steps, top.nonfinite_steps) == (4.0, 0, 4, 2)
    half = suggest_module.suggest(norms, 50.0)
    assert (half.threshold, half.median, half.steps_clipped) == (2.5, 2.5, 2)  # numpy's linear interpolation
    assert "Warning: these norms turned NaN/inf: they describe a diverging run" in suggest_module.describe(top, "run")
    steady = suggest_module.suggest(norms[:3], 50.0)
    assert not steady.diverging and "Warning:" not in suggest_module.describe(steady, "run")


def test_growing_norms_are_flagged_as_diverging():
    # Finite, but the last quarter's median is 12x the first quarter's: the run was blowing up.
    growing = suggest_module.suggest([1.0, 1.0, 2.0, 4.0, 6.0, 9.0, 12.0, 12.0], 90.0)
    assert (growing.first_median, growing.last_median, growing.growth) == (1.0, 12.0, 12.0)
    assert growing.diverging and growing.nonfinite_steps == 0
    assert "Warning: these norms grew 12x: they describe a diverging run" in suggest_module.describe(growing, "r")
    shrinking = suggest_module.suggest([12.0, 12.0, 9.0, 6.0, 4.0, 2.0, 1.0, 1.0], 90.0)
    assert shrinking.growth == pytest.approx(1 / 12) and not shrinking.diverging
    assert suggest_module.suggest([5.0], 50.0).growth == 1.0  # one step: both quarters are that step
    with pytest.raises(ValueError, match="no finite norm"):
        suggest_module.suggest([math.nan, math.inf], 90.0)


def test_needs_neither_matplotlib_nor_a_writable_logdir(capsys, monkeypatch, logged_run):
    log_dir, _ = logged_run
    real_find_spec = keras_clip.cli.importlib.util.find_spec
    monkeypatch.setattr(
        keras_clip.cli.importlib.util, "find_spec", lambda name: None if name == "matplotlib" else real_find_spec(name)
    )
    monkeypatch.setattr(kc.cli, "check_writable", lambda parser, logdir: pytest.fail("suggest writes nothing"))
    assert "as a threshold: clipping=" in _suggest(capsys, "--logdir", str(log_dir))


def _error(capsys, logdir) -> str:
    with pytest.raises(SystemExit) as raised:
        main(["suggest", "--logdir", str(logdir)])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: keras-clip suggest")
    return err


def test_missing_directory(capsys, tmp_path):
    assert f"argument --logdir: no such directory: {str(tmp_path / 'nope')!r}" in _error(capsys, tmp_path / "nope")


def test_directory_without_event_files(capsys, tmp_path):
    err = _error(capsys, tmp_path)
    assert f"argument --logdir: no TensorBoard event files in {str(tmp_path / 'train')!r}" in err


def test_parent_of_runs_names_them(capsys, tmp_path, logged_run):
    log_dir, _ = logged_run
    (tmp_path / "exp" / "a").mkdir(parents=True)
    (tmp_path / "exp" / "a" / "train").symlink_to(log_dir / "train")
    assert "it holds these runs, pass one: exp/a" in _error(capsys, tmp_path)


def test_run_without_the_tag(capsys, tmp_path, small_data):
    inputs = keras.Input((4,))
    model = kc.ClippingModel(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse", clipping=kc.ClipByGlobalNorm(1.0))
    model.fit(*small_data, verbose=0, callbacks=[keras.callbacks.TensorBoard(tmp_path)])  # Keras's logs only
    err = _error(capsys, tmp_path)
    assert f"argument --logdir: {str(tmp_path / 'train')!r} has no 'grad_norm/pre_clip' scalars" in err
    assert "keras_clip.GradientNormLogger" in err and "epoch_grad_norm" in err

"""AutoClip against a numpy re-implementation (Seetharaman et al. 2020)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_clip
from keras_clip import AutoClip
from keras_clip.strategies.autoclip import ring_percentile
from tests.helpers import clip_norm_sequence, unit_direction


def autoclip_reference(norms, percentile: float, history_size: int):
    """Per step: (threshold, clipped norm), from a plain Python list of norms."""
    history, out = [], []
    for n in norms:
        if np.isfinite(n):
            history = (history + [n])[-history_size:]
        threshold = np.percentile(history, percentile) if history else np.inf
        out.append((threshold, threshold if n > threshold else n))
    return np.array(out)


def spiky_norms(steps: int = 200, seed: int = 0) -> np.ndarray:
    """A drifting, noisy norm sequence with injected spikes (x10 to x1000)."""
    rng = np.random.default_rng(seed)
    norms = np.exp(rng.normal(0.0, 0.3, steps)) * np.linspace(1.0, 4.0, steps)
    spikes = rng.choice(steps, size=steps // 15, replace=False)
    norms[spikes] *= rng.choice([10.0, 100.0, 1000.0], size=spikes.size)
    return norms.astype(np.float32)


def run(strategy, norms, jit: bool):
    """Rows of (threshold, clipped norm, pre-clip norm)."""
    return clip_norm_sequence(strategy, norms, jit)


@pytest.mark.parametrize(
    "percentile, history_size, jit",
    [(10.0, 50, False), (10.0, 50, True), (50.0, 7, True), (90.0, 1000, False), (0.0, 20, True), (100.0, 20, False)],
)
def test_matches_reference_over_spiky_sequence(percentile, history_size, jit):
    norms = spiky_norms()
    got = run(AutoClip(percentile, history_size), norms, jit)
    want = autoclip_reference(norms.astype(np.float64), percentile, history_size)
    np.testing.assert_allclose(got[:, 2], norms, rtol=1e-5)
    np.testing.assert_allclose(got[:, 0], want[:, 0], rtol=1e-4)
    np.testing.assert_allclose(got[:, 1], want[:, 1], rtol=1e-4)


def test_spikes_are_cut_back_and_first_step_is_not_clipped():
    norms = spiky_norms()
    got = run(AutoClip(10.0, 50), norms, jit=True)
    assert got[0, 1] == pytest.approx(norms[0], rel=1e-6)
    spikes = norms > 8 * np.median(norms)
    assert np.all(got[spikes, 1] < 0.2 * norms[spikes])


def test_nonfinite_norm_is_not_recorded_and_passes_through():
    strategy = AutoClip(50.0, history_size=4)
    norms = np.array([1.0, 2.0, np.nan, np.inf, 3.0], np.float32)
    got = run(strategy, norms[:2], jit=False)
    variables, direction = unit_direction()
    clipped, stats = strategy.clip([d * np.float32("nan") for d in direction], variables)
    assert np.isnan(clipped[0].numpy()).all() and np.isnan(float(stats["grad_norm"]))
    history, count = (v.numpy() for v in strategy.variables)
    assert int(count) == 2 and np.all(np.isfinite(history))
    np.testing.assert_allclose(got[:, 0], [1.0, 1.5], rtol=1e-6)
    _, stats = strategy.clip([d * 3.0 for d in direction], variables)
    assert float(stats["threshold"]) == pytest.approx(2.0)


def test_ring_percentile_ignores_unwritten_slots_and_empty_is_inf():
    history = tf.constant([5.0, 1.0, 3.0, 0.0, 0.0])
    assert float(ring_percentile(history, tf.constant(3, tf.int64), 50.0)) == 3.0
    assert float(ring_percentile(history, tf.constant(3, tf.int64), 25.0)) == 2.0
    assert float(ring_percentile(history, tf.constant(0, tf.int64), 10.0)) == np.inf


def test_state_is_built_once_on_first_standalone_use():
    strategy = AutoClip(history_size=8)
    assert strategy.variables == []
    variables, direction = unit_direction()
    strategy.clip(direction, variables)
    first = strategy.variables
    strategy.clip(direction, variables)
    assert [id(v) for v in strategy.variables] == [id(v) for v in first]
    assert [tuple(v.shape) for v in first] == [(8,), ()]
    assert all(not v.trainable for v in first)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"percentile": -1.0}, "percentile"),
        ({"percentile": 100.5}, "percentile"),
        ({"percentile": float("nan")}, "percentile"),
        ({"history_size": 0}, "history_size"),
        ({"history_size": -5}, "history_size"),
    ],
)
def test_bad_values_raise_value_error_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"`{name}` must be .*Received: {name}={kwargs[name]!r}"):
        AutoClip(**kwargs)


@pytest.mark.parametrize("kwargs", [{"history_size": 10.0}, {"history_size": True}, {"percentile": "10"}])
def test_bad_types_raise_type_error(kwargs):
    with pytest.raises(TypeError):
        AutoClip(**kwargs)


def test_config_round_trip():
    strategy = AutoClip(25.0, history_size=64)
    config = keras.saving.serialize_keras_object(strategy)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, AutoClip)
    assert restored.get_config() == strategy.get_config() == {"percentile": 25.0, "history_size": 64}
    assert keras_clip.get(config).get_config() == strategy.get_config()


@pytest.mark.parametrize("name", ["AutoClip", "autoclip"])
def test_get_by_name(name):
    assert keras_clip.get(name).get_config() == AutoClip().get_config()

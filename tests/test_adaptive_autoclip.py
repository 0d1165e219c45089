"""AutoClip against a numpy re-implementation (Seetharaman et al. 2020)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_clip import AutoClip
from keras_clip.strategies.autoclip import ring_percentile
from tests.helpers import clip_norm_sequence, unit_direction


def autoclip_reference(norms, percentile: float, history_size: int):
    """Per step: (threshold, clipped norm), from a plain Python list of norms."""
    history, out = [], []
    for n in norms:
        if np.isfinite(n) and n > 0:
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
    history, count = strategy.state["history"].numpy(), strategy.state["count"].numpy()
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
    assert strategy.state == {}
    _, direction = unit_direction()
    strategy.clip(direction)
    first = strategy.state
    strategy.clip(direction)
    assert {k: id(v) for k, v in strategy.state.items()} == {k: id(v) for k, v in first.items()}
    assert {k: (tuple(v.shape), v.dtype) for k, v in first.items()} == {
        "history": ((8,), "float32"),
        "count": ((), "int64"),
    }


@pytest.mark.parametrize("jit", [False, True])
def test_zero_norms_are_not_recorded(jit):
    # Steps without gradient (norm 0) among ordinary ones: recorded, they would make the 10th percentile 0
    # and zero every gradient that follows.
    norms = np.array([1.0, 2.0, 1.5, 0.0, 0.0, 0.0, 0.0, 1.2, 3.0, 0.0, 2.5], np.float32)
    strategy = AutoClip(10.0, history_size=6)
    got = run(strategy, norms, jit)
    want = autoclip_reference(norms.astype(np.float64), 10.0, 6)
    np.testing.assert_allclose(got[:, 0], want[:, 0], rtol=1e-6)
    np.testing.assert_allclose(got[:, 1], want[:, 1], rtol=1e-6)
    assert np.all(got[norms > 0, 1] > 0.9)
    assert int(strategy.state["count"].numpy()) == int(np.sum(norms > 0))


def test_percentile_fraction_is_exact():
    # Eleven values: the 10th percentile is exactly the second smallest. A fraction 0.1 rounded through
    # float32 (0.10000000149) adds 1.5e-8 of the gap to the third, here 1e12.
    history = tf.constant([0.5, 1.0] + [1e12] * 9)
    got = float(ring_percentile(history, tf.constant(11, tf.int64), 10.0))
    assert got == float(np.percentile(history.numpy().astype(np.float64), 10.0)) == 1.0

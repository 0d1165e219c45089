"""ZClip against a numpy re-implementation of the reference code (Kumar et al. 2025)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_clip as kc
from keras_clip import ZClip
from tests.helpers import clip_norm_sequence, unit_direction


class ZClipReference:
    """bluorion-com/ZClip (the `zclip` package), clip_option "adaptive_scaling", in float64.

    `step(n)` returns `(clipped norm, threshold stat)`; the threshold stat is the
    largest norm left unclipped, the quantity keras_clip reports.
    """

    def __init__(
        self,
        alpha=0.97,
        z_threshold=2.5,
        warmup_steps=25,
        max_norm=1.0,
        eps=1e-6,
        mode="zscore",
        skip_update_on_spike=False,
    ):
        self.alpha, self.z, self.warmup, self.max_norm, self.eps = alpha, z_threshold, warmup_steps, max_norm, eps
        self.mode, self.skip_update_on_spike = mode, skip_update_on_spike
        self.buffer, self.mean, self.var = [], None, None
        self.spike = False  # whether the last step was a spike (the reference's `clip_val is not None`)

    def step(self, n):
        cap = math.inf if self.max_norm is None else self.max_norm
        self.spike = False
        if not math.isfinite(n):  # keras_clip's addition: a non-finite norm changes no state
            return math.nan, (cap if self.mean is None else math.nan)
        if self.mean is None:
            self.buffer.append(n)
            if len(self.buffer) >= self.warmup:
                self.mean = sum(self.buffer) / len(self.buffer)
                self.var = sum((x - self.mean) ** 2 for x in self.buffer) / len(self.buffer)
            return min(n, cap), cap
        std = self.var**0.5
        if self.mode == "percentile":
            bound = self.mean + self.z * std
            clip_val = bound if n > bound else None
        else:
            z = (n - self.mean) / (std + self.eps)
            clip_val = self.mean + self.z * std / (z / self.z) if z > self.z else None
            bound = self.mean + self.z * (std + self.eps)
        effective = min(clip_val if clip_val is not None else n, cap)
        bound = min(bound, cap)
        self.spike = clip_val is not None
        if not (self.spike and self.skip_update_on_spike):
            x = clip_val if clip_val is not None else n
            self.mean = self.alpha * self.mean + (1 - self.alpha) * x
            self.var = self.alpha * self.var + (1 - self.alpha) * (x - self.mean) ** 2
        return (effective if n > effective else n), bound


def spiky_norms(steps: int = 200, seed: int = 0) -> np.ndarray:
    """Noisy norms around a slowly rising level, with spikes x3 to x30."""
    rng = np.random.default_rng(seed)
    norms = np.linspace(2.0, 3.0, steps) + rng.normal(0.0, 0.2, steps)
    spikes = rng.choice(np.arange(30, steps), size=steps // 12, replace=False)
    norms[spikes] *= rng.choice([3.0, 10.0, 30.0], size=spikes.size)
    return np.abs(norms).astype(np.float32)


def run(strategy, norms, jit: bool):
    """Rows of (clipped norm, threshold, pre-clip norm), the reference's order."""
    return clip_norm_sequence(strategy, norms, jit, seed=1)[:, [1, 0, 2]]


CASES = [
    ({}, False),
    ({"max_norm": None}, True),
    ({"max_norm": 20.0, "warmup_steps": 10}, True),
    ({"alpha": 0.9, "z_threshold": 1.5, "max_norm": None, "warmup_steps": 5}, False),
    ({"alpha": 0.99, "z_threshold": 3.0, "max_norm": 8.0, "eps": 0.0}, True),
]


@pytest.mark.parametrize("kwargs, jit", CASES)
def test_matches_reference_over_spiky_sequence(kwargs, jit):
    norms = spiky_norms()
    strategy = ZClip(**kwargs)
    got = run(strategy, norms, jit)
    reference = ZClipReference(**kwargs)
    want = np.array([reference.step(float(n)) for n in norms])
    np.testing.assert_allclose(got[:, 2], norms, rtol=1e-5)
    np.testing.assert_allclose(got[:, 0], want[:, 0], rtol=1e-4)
    np.testing.assert_allclose(got[:, 1], want[:, 1], rtol=1e-4)
    count, mean, var = (float(strategy.state[k].numpy()) for k in ("count", "mean", "var"))
    assert count == len(norms)
    np.testing.assert_allclose(mean, reference.mean, rtol=1e-4)
    # A small variance is (x - mean)^2 of nearby float32 numbers: compare it on the scale of mean^2.
    np.testing.assert_allclose(var, reference.var, rtol=1e-4, atol=1e-6 * reference.mean**2)


def test_spikes_after_warmup_are_clipped_and_threshold_separates_clipped_steps():
    norms = spiky_norms()
    got = run(ZClip(max_norm=None), norms, jit=False)
    after = np.arange(len(norms)) >= 25
    spikes = after & (norms > 5.0)
    assert np.all(got[spikes, 0] < 0.5 * norms[spikes])
    clipped = got[:, 0] < norms * (1 - 1e-6)
    np.testing.assert_array_equal(clipped[after], norms[after] > got[after, 1])
    assert clipped[after & (norms < 3.2)].mean() < 0.05


def test_warmup_clips_only_to_max_norm():
    norms = np.array([0.5, 4.0, 2.0], np.float32)
    got = run(ZClip(warmup_steps=5, max_norm=1.0), norms, jit=False)
    np.testing.assert_allclose(got[:, 0], [0.5, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(got[:, 1], [1.0, 1.0, 1.0])
    got = run(ZClip(warmup_steps=5, max_norm=None), norms, jit=False)
    np.testing.assert_allclose(got[:, 0], norms, rtol=1e-6)
    assert np.all(np.isinf(got[:, 1]))


def test_nonfinite_norm_changes_no_state():
    strategy = ZClip(warmup_steps=2, max_norm=None)
    run(strategy, np.array([1.0, 3.0, 2.0], np.float32), jit=False)
    before = [v.numpy() for v in strategy.variables]
    got = run(strategy, np.array([np.nan, np.inf], np.float32), jit=False)
    assert np.isnan(got[0, 0])
    for a, b in zip(before, strategy.variables):
        np.testing.assert_array_equal(a, b.numpy())


def test_state_is_three_named_non_trainable_scalars():
    strategy = ZClip()
    run(strategy, np.array([1.0], np.float32), jit=False)
    assert {k: (v.dtype, tuple(v.shape), v.trainable) for k, v in strategy.state.items()} == {
        "count": ("int64", (), False),
        "mean": ("float32", (), False),
        "var": ("float32", (), False),
    }


NEW_CASES = [
    ({"mode": "percentile"}, True),
    ({"mode": "percentile", "max_norm": None, "z_threshold": 2.0, "warmup_steps": 10}, True),
    ({"skip_update_on_spike": True, "max_norm": None}, True),
    ({"skip_update_on_spike": True, "mode": "percentile", "max_norm": 20.0, "alpha": 0.9}, False),
]


@pytest.mark.parametrize("kwargs, jit", NEW_CASES)
def test_percentile_mode_and_skip_update_on_spike_match_reference_with_nan(kwargs, jit):
    """The `zclip` package's options, over spikes, warm-up and non-finite norms."""
    norms = spiky_norms()
    norms[[10, 60, 61, 150]] = [np.nan, np.inf, np.nan, np.nan]
    strategy, reference = ZClip(**kwargs), ZClipReference(**kwargs)
    variables, direction = unit_direction(seed=1)
    fn = tf.function(lambda g: strategy.clip(g, variables), jit_compile=True)
    spikes = 0
    for n in norms:
        grads = [d * n for d in direction]
        _, stats = fn(grads) if jit else strategy.clip(grads, variables)
        want_clipped, want_bound = reference.step(float(stats["grad_norm"]))
        spikes += reference.spike
        if not np.isfinite(n):
            assert np.isnan(float(stats["clipped_grad_norm"]))
            assert not bool(stats.get("skip", False))
            continue
        np.testing.assert_allclose(float(stats["clipped_grad_norm"]), want_clipped, rtol=1e-5)
        np.testing.assert_allclose(float(stats["threshold"]), want_bound, rtol=1e-5)
        assert ("skip" in stats) == strategy.skip_update_on_spike
        if "skip" in stats:
            assert stats["skip"].dtype == tf.bool and bool(stats["skip"]) == reference.spike
    count, mean, var = (float(v.numpy()) for v in strategy.variables)
    np.testing.assert_allclose(mean, reference.mean, rtol=1e-5)
    np.testing.assert_allclose(var, reference.var, rtol=1e-4, atol=1e-6 * reference.mean**2)
    assert spikes >= 5  # guard: the options were exercised


def test_a_skipped_spike_changes_no_state():
    strategy = ZClip(warmup_steps=2, max_norm=None, skip_update_on_spike=True)
    variables, direction = unit_direction(seed=1)
    for n in [1.0, 1.2, 1.1]:
        strategy.clip([d * n for d in direction], variables)
    before = [v.numpy() for v in strategy.variables]
    _, stats = strategy.clip([d * 50.0 for d in direction], variables)
    assert bool(stats["skip"])
    for a, b in zip(before, strategy.variables):
        np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.parametrize(
    "kwargs, error",
    [({"mode": "mean"}, ValueError), ({"mode": None}, ValueError), ({"skip_update_on_spike": 1}, TypeError)],
)
def test_bad_options(kwargs, error):
    name = next(iter(kwargs))
    with pytest.raises(error, match=rf"`{name}` must be .*Received: {name}="):
        ZClip(**kwargs)


@pytest.mark.parametrize(
    "strategy",
    [ZClip(), ZClip(0.9, 3.0, 10, None, 1e-8), ZClip(mode="percentile", skip_update_on_spike=True)],
)
def test_config_round_trip(strategy):
    config = keras.saving.serialize_keras_object(strategy)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, ZClip)
    assert restored.get_config() == strategy.get_config()
    assert kc.get(config).get_config() == strategy.get_config()

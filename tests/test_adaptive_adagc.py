"""AdaGC against a numpy re-implementation of Algorithm 1 (Wang et al. 2025)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_clip
from keras_clip import AdaGC
from tests.helpers import unit_direction


class AdaGCReference:
    """Algorithm 1 in float64; a step with a non-finite global norm changes nothing."""

    def __init__(self, beta=0.98, relative=1.05, absolute=1.0, warmup_steps=100, eps=1e-8):
        self.beta, self.relative, self.absolute, self.warmup, self.eps = beta, relative, absolute, warmup_steps, eps
        self.t, self.gamma = 0, None

    def step(self, norms):
        """Per-variable norms in; per-variable factors h and the global bound out."""
        norms = np.asarray(norms, np.float64)
        total = math.sqrt(float(np.sum(norms**2)))
        if not math.isfinite(total):
            return np.full_like(norms, np.nan), math.nan
        t = self.t + 1
        if t <= self.warmup:
            h = np.full_like(norms, min(1.0, self.absolute / (total + self.eps)))
            kept = h * norms
            gamma = kept if t == 1 else np.minimum(self.gamma, kept)
            bound = self.absolute
        else:
            h = np.minimum(1.0, self.relative * self.gamma / (norms + self.eps))
            kept = h * norms
            bound = math.sqrt(float(np.sum((self.relative * self.gamma) ** 2)))
            gamma = self.beta * self.gamma + (1 - self.beta) * kept
        self.t, self.gamma = t, gamma
        return h, bound


def norm_rows(steps=120, seed=0):
    """Per-variable norms (2 variables): noisy levels, spikes in each, and a NaN step."""
    rng = np.random.default_rng(seed)
    rows = np.stack([1.0 + 0.2 * rng.random(steps), 0.3 + 0.1 * rng.random(steps)], axis=1)
    rows[[30, 55, 90], 0] *= [20.0, 5.0, 50.0]
    rows[[40, 70], 1] *= [30.0, 8.0]
    rows[[15, 80], 0] = [np.nan, np.inf]
    return rows.astype(np.float32)


SETUP = unit_direction(seed=2)


def drive(strategy, rows, jit):
    """Feeds gradients with the given per-variable norms; returns factors, bound, stats, state per step."""
    variables, direction = SETUP
    units = [d / tf.norm(d) for d in direction]
    fn = tf.function(lambda g: strategy.clip(g, variables), jit_compile=True) if jit else None
    out = []
    for row in rows:
        grads = [u * float(n) for u, n in zip(units, row)]
        clipped, stats = fn(grads) if jit else strategy.clip(grads, variables)
        factors = [float(tf.norm(c) / n) if np.isfinite(n) and n > 0 else math.nan for c, n in zip(clipped, row)]
        out.append((factors, float(stats["threshold"]), stats, [v.numpy() for v in strategy.variables]))
    return out


CASES = [
    ({"warmup_steps": 20}, True),
    ({"warmup_steps": 10, "beta": 0.9, "relative": 1.5, "absolute": 0.8}, True),
    ({"warmup_steps": 1, "beta": 0.0, "eps": 0.0}, False),
    ({}, True),  # the defaults: the whole sequence is warm-up
]


@pytest.mark.parametrize("kwargs, jit", CASES)
def test_matches_reference_over_sequence_with_warmup_spikes_and_nan(kwargs, jit):
    rows = norm_rows()
    strategy, reference = AdaGC(**kwargs), AdaGCReference(**kwargs)
    finite_steps, clipped_after_warmup = 0, 0
    for row, (factors, bound, stats, state) in zip(rows, drive(strategy, rows, jit)):
        h, want_bound = reference.step(row)
        if not np.all(np.isfinite(row)):
            assert not np.isfinite(float(stats["grad_norm"]))
            continue
        finite_steps += 1
        clipped_after_warmup += finite_steps > strategy.warmup_steps and min(h) < 1.0
        np.testing.assert_allclose(factors, h, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(bound, want_bound, rtol=1e-5)
        np.testing.assert_allclose(float(stats["clipped_grad_norm"]), np.linalg.norm(h * row), rtol=1e-5)
        np.testing.assert_allclose(float(stats["clipped_fraction"]), np.mean(h < 1.0))
        np.testing.assert_allclose(state[0], reference.gamma, rtol=1e-5)
        assert int(state[1]) == finite_steps
    # Guards: the NaN and inf steps were not counted; past warm-up the rule did clip.
    assert reference.t == finite_steps == len(rows) - 2
    assert clipped_after_warmup > 0 or strategy.warmup_steps >= finite_steps


def test_after_warmup_a_spike_in_one_variable_leaves_the_other_alone():
    strategy = AdaGC(warmup_steps=5)
    rows = np.array([[1.0, 0.3]] * 8 + [[40.0, 0.3]], np.float32)
    factors, _, stats, _ = drive(strategy, rows, jit=False)[-1]
    assert factors[1] == pytest.approx(1.0)
    # Variable 0 is held near its own level (gamma ~ its clipped norm, 1.0 / global norm ~1.04).
    assert 40.0 * factors[0] < 1.1
    assert float(stats["clipped_fraction"]) == 0.5


def test_nonfinite_norm_changes_no_state_called_on_its_own():
    strategy = AdaGC(warmup_steps=2)
    drive(strategy, np.array([[1.0, 0.5], [2.0, 0.5], [1.0, 0.4]], np.float32), jit=False)
    before = [v.numpy() for v in strategy.variables]
    drive(strategy, np.array([[np.nan, 0.5], [1.0, np.inf]], np.float32), jit=True)
    for a, b in zip(before, strategy.variables):
        np.testing.assert_array_equal(a, b.numpy())


def test_state_is_one_threshold_per_variable_and_a_counter():
    strategy = AdaGC()
    drive(strategy, np.array([[1.0, 0.5]], np.float32), jit=False)
    assert [(v.dtype, tuple(v.shape), v.trainable) for v in strategy.variables] == [
        ("float32", (2,), False),
        ("int64", (), False),
    ]


def test_a_variable_it_was_not_built_for_is_refused():
    strategy = AdaGC()
    variables, direction = unit_direction()
    strategy.clip(direction, variables)
    stranger = keras.Variable(np.zeros(3, "float32"), name="stranger")
    with pytest.raises(ValueError, match="Received: variable="):
        strategy.clip([direction[0], direction[1]], [variables[0], stranger])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"beta": 1.0}, "beta"),
        ({"beta": -0.1}, "beta"),
        ({"relative": 0.0}, "relative"),
        ({"relative": float("inf")}, "relative"),
        ({"absolute": -1.0}, "absolute"),
        ({"warmup_steps": 0}, "warmup_steps"),
        ({"eps": -1e-8}, "eps"),
    ],
)
def test_bad_values_raise_value_error_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"`{name}` must be .*Received: {name}={kwargs[name]!r}"):
        AdaGC(**kwargs)


@pytest.mark.parametrize("kwargs", [{"warmup_steps": 2.5}, {"beta": "0.9"}, {"absolute": None}])
def test_bad_types_raise_type_error(kwargs):
    with pytest.raises(TypeError):
        AdaGC(**kwargs)


@pytest.mark.parametrize("strategy", [AdaGC(), AdaGC(0.9, 1.2, 0.5, 10, 0.0)])
def test_config_round_trip(strategy):
    config = keras.saving.serialize_keras_object(strategy)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, AdaGC)
    assert restored.get_config() == strategy.get_config()
    assert keras_clip.get(config).get_config() == strategy.get_config()


@pytest.mark.parametrize("name", ["AdaGC", "adagc"])
def test_get_by_name(name):
    assert keras_clip.get(name).get_config() == AdaGC().get_config()

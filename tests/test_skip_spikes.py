"""SkipSpikes: the rule against numpy, and skipped batches leave no trace on the model."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_clip as kc
from keras_clip import SkipSpikes
from tests.helpers import mlp, script_result, unit_direction


class SkipSpikesReference:
    """The rule in float64: window of accepted norms, sample std, one-sided."""

    def __init__(self, z_threshold=6.0, window=128, warmup_steps=64):
        self.z, self.window, self.warmup = z_threshold, window, warmup_steps
        self.accepted = []

    def step(self, n):
        """Returns `(threshold, skip)`; accepts `n` unless skipped or non-finite."""
        threshold = math.inf
        if len(self.accepted) >= self.warmup:
            held = np.array(self.accepted[-self.window :])
            threshold = held.mean() + self.z * held.std(ddof=1)
        skip = math.isfinite(n) and n > threshold
        if math.isfinite(n) and not skip:
            self.accepted.append(n)
        return threshold, skip


def spiky_norms(steps=160, seed=0):
    """Noisy norms, spikes x2..x30 after the first 20 steps, a NaN and an inf."""
    rng = np.random.default_rng(seed)
    norms = 2.0 + rng.normal(0.0, 0.2, steps)
    spikes = rng.choice(np.arange(20, steps), size=14, replace=False)
    norms[spikes] *= rng.choice([2.0, 5.0, 30.0], size=spikes.size)
    norms[[25, 100]] = [np.nan, np.inf]
    return np.abs(norms).astype(np.float32)


def drive(strategy, norms, jit):
    """Rows of (threshold, skip, clipped norm, pre-clip norm)."""
    variables, direction = unit_direction(seed=3)
    fn = tf.function(lambda g: strategy.clip(g, variables), jit_compile=True)
    rows = []
    for n in norms:
        grads = [d * n for d in direction]
        clipped, stats = fn(grads) if jit else strategy.clip(grads, variables)
        assert stats["skip"].dtype == tf.bool and stats["skip"].shape == ()
        for g, c in zip(grads, clipped):
            np.testing.assert_array_equal(g.numpy(), c.numpy())  # never changes the gradient
        rows.append(
            [
                float(stats["threshold"]),
                float(stats["skip"]),
                float(stats["clipped_grad_norm"]),
                float(stats["grad_norm"]),
            ]
        )
    return np.array(rows)


@pytest.mark.parametrize(
    "kwargs, jit",
    [
        ({"z_threshold": 3.0, "window": 16, "warmup_steps": 8}, True),
        ({"window": 40, "warmup_steps": 10}, True),
        ({"z_threshold": 2.0, "window": 5, "warmup_steps": 12}, False),
    ],
)
def test_matches_reference_over_sequence_with_warmup_spikes_and_nan(kwargs, jit):
    norms = spiky_norms()
    strategy, reference = SkipSpikes(**kwargs), SkipSpikesReference(**kwargs)
    got = drive(strategy, norms, jit)
    np.testing.assert_allclose(got[:, 3], norms, rtol=1e-6)
    want = np.array([reference.step(n) for n in got[:, 3]], np.float64)  # fed the norms as measured
    np.testing.assert_allclose(got[:, 0], want[:, 0], rtol=1e-5)
    np.testing.assert_array_equal(got[:, 1], want[:, 1])
    np.testing.assert_array_equal(got[:, 2], got[:, 3])
    history, count = (v.numpy() for v in strategy.variables)
    assert count == len(reference.accepted)
    held = min(count, strategy.window)
    last = np.roll(history, -count % strategy.window)[-held:] if count >= strategy.window else history[:held]
    np.testing.assert_allclose(np.sort(last), np.sort(reference.accepted[-held:]), rtol=1e-5)
    # Guards: warm-up passed, some norms skipped, most accepted.
    assert 0 < want[:, 1].sum() < 0.5 * len(norms)


def test_nonfinite_and_skipped_norms_change_no_state():
    strategy = SkipSpikes(3.0, window=4, warmup_steps=3)
    drive(strategy, np.array([1.0, 1.1, 0.9, 1.0], np.float32), jit=False)
    before = [v.numpy() for v in strategy.variables]
    rows = drive(strategy, np.array([np.nan, 50.0, np.inf], np.float32), jit=True)
    np.testing.assert_array_equal(rows[:, 1], [0.0, 1.0, 0.0])
    for a, b in zip(before, strategy.variables):
        np.testing.assert_array_equal(a, b.numpy())


def _batches(n_batches=24, poisoned=(12, 17, 21), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(16 * n_batches, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 1))).astype("float32")
    for b in poisoned:
        y[16 * b : 16 * b + 8] *= 300.0  # a corrupted half batch: finite, but a huge gradient
    keep = np.ones(len(x), bool)
    for b in poisoned:
        keep[16 * b : 16 * (b + 1)] = False
    return x, y, keep


def _train(clipping, x, y, jit):
    keras.utils.set_random_seed(0)
    model = mlp()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", clipping=clipping, jit_compile=jit)
    history = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    return model, history


def _assert_same_model(a, b, rtol):
    assert int(a.optimizer.iterations.numpy()) == int(b.optimizer.iterations.numpy())
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=1e-7)
    for u, v in zip(a.optimizer.inner_optimizer.variables, b.optimizer.inner_optimizer.variables):  # slots
        np.testing.assert_allclose(u.numpy(), v.numpy(), rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("jit", [False, True])
def test_skipped_batches_leave_the_model_as_if_never_seen(jit):
    x, y, keep = _batches()
    skipping, history = _train(
        kc.Chain(SkipSpikes(4.0, window=16, warmup_steps=8), kc.ClipByGlobalNorm(1e3)), x, y, jit
    )
    assert history["skipped_steps"] == [3] and history["nonfinite_steps"] == [0]  # guard: exactly the 3 poisoned
    never_seen, _ = _train(kc.ClipByGlobalNorm(1e3), x[keep], y[keep], jit)
    _assert_same_model(skipping, never_seen, rtol=1e-6)
    assert int(skipping.optimizer.iterations.numpy()) == 21
    # The poisoned batches do harm when applied: the guard that skipping is what saved the run.
    applied, _ = _train(kc.ClipByGlobalNorm(1e3), x, y, jit)
    assert max(float(np.max(np.abs(u - v))) for u, v in zip(applied.get_weights(), never_seen.get_weights())) > 1e-2


def test_skip_under_zero_policy_and_counters_are_separate():
    x, y, keep = _batches()
    x[5] = np.nan  # a non-finite batch too: zeroed and applied under "zero", not counted as skipped
    keras.utils.set_random_seed(0)
    model = mlp()
    model.compile(optimizer="adam", loss="mse", clipping=SkipSpikes(4.0, 16, 8), on_nonfinite="zero")
    history = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    assert history["skipped_steps"] == [3]
    assert int(model.optimizer.iterations.numpy()) == 21
    assert int(model.optimizer.report().skipped_steps) == 3


def test_mirrored_replicas_skip_alike_and_match_one_device_without_the_batches():
    result = script_result("skip_run.py")
    assert result["skipped_steps"] == [3]
    assert result["iterations"] == result["never_seen_iterations"] == 21
    assert result["max_weight_diff"] < 1e-5 and result["max_slot_diff"] < 1e-5, result
    assert result["applied_diff"] > 1e-2, result


def test_skip_stat_and_counter_reach_history_only_for_skipping_strategies(small_data):
    x, y = small_data
    model = mlp()
    model.compile(optimizer="sgd", loss="mse", clipping=kc.ZClip(skip_update_on_spike=True))
    assert "skipped_steps" in model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    model = mlp()
    model.compile(optimizer="sgd", loss="mse", clipping=kc.ZClip())
    assert set(model.fit(x, y, batch_size=16, epochs=1, verbose=0).history) == {
        "loss",
        "grad_norm",
        "clipped_grad_norm",
        "nonfinite_steps",
    }


def test_chain_skips_when_any_member_does():
    variables, direction = unit_direction()
    chain = kc.Chain(kc.ClipByGlobalNorm(1.0), SkipSpikes(3.0, 4, 2), kc.ZClip(skip_update_on_spike=True))
    _, stats = chain.clip(direction, variables)
    assert stats["skip"].dtype == tf.bool and not bool(stats["skip"])
    by_variable = kc.ByVariable({"w*": SkipSpikes(3.0, 4, 2)}, default=kc.ClipByGlobalNorm(1.0))
    for n in [1.0, 1.1, 0.9, 1.0]:
        _, stats = by_variable.clip([d * n for d in direction], variables)
        assert not bool(stats["skip"])
    _, stats = by_variable.clip([d * 100.0 for d in direction], variables)
    assert bool(stats["skip"])


def test_a_skip_in_a_chain_leaves_every_members_state_as_it_was():
    variables, direction = unit_direction()
    chain = kc.Chain(kc.AutoClip(100.0, history_size=8), SkipSpikes(3.0, 8, 3), kc.AdaGC(warmup_steps=2))
    step = tf.function(lambda g: chain.clip(g, variables), jit_compile=True)
    for n in [1.0, 1.1, 0.9, 1.0]:
        step([d * n for d in direction])
    before = [v.numpy() for v in chain.variables]
    _, stats = step([d * 100.0 for d in direction])
    assert bool(stats["skip"])
    for a, b in zip(before, chain.variables):
        np.testing.assert_array_equal(a, b.numpy(), err_msg=b.path)
    _, stats = step([d * 1.05 for d in direction])
    assert not bool(stats["skip"]) and int(chain.variables[1].numpy()) == 5  # AutoClip counts the accepted step


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"z_threshold": 0.0}, "z_threshold"),
        ({"z_threshold": float("inf")}, "z_threshold"),
        ({"window": 1}, "window"),
        ({"warmup_steps": 1}, "warmup_steps"),
    ],
)
def test_bad_values_raise_value_error_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"`{name}` must be .*Received: {name}={kwargs[name]!r}"):
        SkipSpikes(**kwargs)


@pytest.mark.parametrize("kwargs", [{"window": 8.0}, {"z_threshold": "6"}, {"warmup_steps": True}])
def test_bad_types_raise_type_error(kwargs):
    with pytest.raises(TypeError):
        SkipSpikes(**kwargs)


@pytest.mark.parametrize("strategy", [SkipSpikes(), SkipSpikes(3.0, 16, 4)])
def test_config_round_trip(strategy):
    config = keras.saving.serialize_keras_object(strategy)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, SkipSpikes)
    assert restored.get_config() == strategy.get_config()
    assert kc.get(config).get_config() == strategy.get_config()


@pytest.mark.parametrize("name", ["SkipSpikes", "skip_spikes"])
def test_get_by_name(name):
    assert kc.get(name).get_config() == SkipSpikes().get_config()


@pytest.mark.parametrize("jit", [False, True])
def test_skip_under_a_loss_scale_optimizer(jit):
    """The loss-scaling path of the step (the scaler applies updates itself), in float32."""
    x, y, keep = _batches()
    scale = 2.0**4

    def train(clipping, x, y):
        keras.utils.set_random_seed(0)
        model = mlp()
        optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(0.01), initial_scale=scale)
        model.compile(optimizer=optimizer, loss="mse", clipping=clipping, jit_compile=jit)
        return model, model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history

    skipping, history = train(SkipSpikes(4.0, 16, 8), x, y)
    assert history["skipped_steps"] == [3] and history["nonfinite_steps"] == [0]
    never_seen, _ = train(None, x[keep], y[keep])
    assert int(skipping.optimizer.iterations.numpy()) == int(never_seen.optimizer.iterations.numpy()) == 21
    for u, v in zip(skipping.get_weights(), never_seen.get_weights()):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)


def test_tensorboard_gets_skipped_steps_on_the_nonfinite_chart(tmp_path):
    import os

    from tensorboard.backend.event_processing import plugin_event_accumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    from keras_clip.callbacks import layout

    x, y, _ = _batches()
    keras.utils.set_random_seed(0)
    model = mlp()
    model.compile(optimizer="adam", loss="mse", clipping=SkipSpikes(4.0, 16, 8), steps_per_execution=4)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[kc.GradientNormLogger(tmp_path)])
    events = plugin_event_accumulator.EventAccumulator(os.path.join(tmp_path, "train"), size_guidance={"tensors": 0})
    events.Reload()
    written = [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors(layout.SKIPPED_STEPS)]
    assert layout.SKIPPED_STEPS == "clipping/skipped_steps" and layout.stat_tag("skipped_steps") == layout.SKIPPED_STEPS
    assert [s for s, _ in written] == list(range(1, 25))  # every step, including the skipped ones
    assert [int(v) for s, v in written if s in (12, 13, 17, 18, 22, 24)] == [0, 1, 1, 2, 3, 3]  # poisoned: 13, 18, 22
    (config,) = events.Tensors("custom_scalars__config__")
    parsed = layout_pb2.Layout.FromString(tf.make_ndarray(config.tensor_proto).item())
    tags = [list(chart.multiline.tag) for category in parsed.category for chart in category.chart]
    assert [f"^{layout.NONFINITE_STEPS}$", f"^{layout.SKIPPED_STEPS}$"] in tags

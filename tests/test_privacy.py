"""Per-example clipping with noise (DP-SGD): the step against a loop over examples, the noise, bad input."""


import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_clip as kc
from tests import dp_cases
from tests.helpers import script_result


def _one_step(jit_compile, l2_norm_clip, noise_multiplier=0.0, ghost_norms=True):
    model = dp_cases.build_model()
    x, y = dp_cases.data()
    reference_model = dp_cases.build_model(keras.Model)
    reference_model.set_weights(model.get_weights())
    expected, norms = dp_cases.reference_update(reference_model, x, y, l2_norm_clip)
    clip = kc.PerExampleClip(l2_norm_clip, noise_multiplier=noise_multiplier, seed=0, ghost_norms=ghost_norms)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse", clipping=clip, jit_compile=jit_compile)
    before = model.get_weights()
    history = model.fit(x, y, batch_size=dp_cases.BATCH, epochs=1, shuffle=False, verbose=0)
    updates = [b - a for b, a in zip(before, model.get_weights())]
    return updates, expected, norms, model, history


@pytest.mark.parametrize("ghost_norms", [True, False], ids=["ghost", "vectorized"])
@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_one_step_equals_loop_over_examples(jit_compile, ghost_norms):
    model = dp_cases.build_model()
    x, y = dp_cases.data()
    _, norms = dp_cases.reference_update(model, x, y, 1.0)
    l2_norm_clip = float(np.median(norms))  # half of the examples are clipped
    updates, expected, norms, model, _ = _one_step(jit_compile, l2_norm_clip, ghost_norms=ghost_norms)
    assert 0 < np.mean(norms > l2_norm_clip) < 1  # the scenario clips some examples, not all
    assert len(updates) == 9  # Embedding, LayerNormalization (2), Conv2D (2), Dense (2 x 2)
    for got, want in zip(updates, expected):
        np.testing.assert_allclose(got, want, atol=1e-5)
    figures = model.optimizer.report().figures
    assert float(figures["example_norm_max"]) == pytest.approx(norms.max(), rel=1e-5)
    assert float(figures["example_norm_median"]) == pytest.approx(np.median(norms), rel=1e-5)
    assert float(figures["clipped_fraction"]) == pytest.approx(np.mean(norms > l2_norm_clip))
    assert float(figures["noise_std"]) == 0.0


def test_norm_equal_to_the_bound_is_not_scaled():
    norms = tf.constant([0.5, 1.0, 2.0])
    np.testing.assert_allclose(kc.privacy.gradients.clip_factors(norms, 1.0).numpy(), [1.0, 1.0, 0.5])


def test_logs_hold_the_figures():
    _, _, _, _, history = _one_step(False, 1.0)
    for key in ("loss", "grad_norm", "clipped_grad_norm"):
        assert key in history.history


@pytest.mark.parametrize("jit_compile", [False, True])
def test_noise_std_matches_the_formula_on_one_device(jit_compile):
    ratio, mean, updates = dp_cases.noise_ratio(tf.distribute.get_strategy(), jit_compile=jit_compile)
    assert ratio == pytest.approx(1.0, abs=0.05)
    assert abs(mean) < 0.05 * 1.3 * 0.7 / 16
    # Gaussian, not merely of the right spread: excess kurtosis 0 (a uniform draw gives -1.2), within
    # about 5 standard errors (sqrt(24 / n) = 0.063 for the n = 119 x 51 updates).
    centred = updates.ravel() - updates.mean()
    assert abs(np.mean(centred**4) / np.mean(centred**2) ** 2 - 3.0) < 0.3


def test_expected_batch_size_is_the_divisor():
    ratio, _, _ = dp_cases.noise_ratio(tf.distribute.get_strategy(), expected_batch_size=40, steps=60)
    assert ratio == pytest.approx(1.0, abs=0.07)


def test_figures_of_an_empty_batch_are_zeros():
    figures = kc.privacy.step._figures(tf.zeros([0]), 1.0)
    assert {k: float(v) for k, v in figures.items()} == dict.fromkeys(figures, 0.0)


def test_noise_is_reproducible_with_a_seed_and_differs_between_steps():
    *_, first = dp_cases.noise_ratio(tf.distribute.get_strategy(), steps=3)
    *_, second = dp_cases.noise_ratio(tf.distribute.get_strategy(), steps=3)
    np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-7)
    assert np.min(np.abs(first[0] - first[1])) > 0  # each step draws new noise


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"l2_norm_clip": 0.0}, "l2_norm_clip` must be positive"),
        ({"l2_norm_clip": -1.0}, "Received: l2_norm_clip=-1.0"),
        ({"l2_norm_clip": 1.0, "noise_multiplier": -0.1}, "Received: noise_multiplier=-0.1"),
        ({"l2_norm_clip": 1.0, "seed": 1.5}, "Received: seed=1.5"),
        ({"l2_norm_clip": 1.0, "expected_batch_size": 0}, "Received: expected_batch_size=0"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kc.PerExampleClip(**kwargs)


def test_config_round_trip():
    clip = kc.PerExampleClip(0.5, noise_multiplier=1.1, seed=7)
    restored = kc.get(keras.saving.serialize_keras_object(clip))
    assert isinstance(restored, kc.PerExampleClip)
    expected = {"l2_norm_clip": 0.5, "noise_multiplier": 1.1, "seed": 7, "ghost_norms": True}
    expected["expected_batch_size"] = None
    assert restored.get_config() == clip.get_config() == expected


def test_several_losses_are_refused_at_compile():
    model = dp_cases.build_model()
    with pytest.raises(ValueError, match="needs one loss"):
        model.compile(optimizer="sgd", loss=["mse"], clipping=kc.PerExampleClip(1.0))


def test_batch_normalization_is_refused_at_compile():
    model = kc.ClippingSequential([keras.Input((4,)), keras.layers.BatchNormalization(), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="batch normalization mixes the examples"):
        model.compile(optimizer="sgd", loss="mse", clipping=kc.PerExampleClip(1.0))


def test_loss_scaling_and_accumulation_are_refused_at_compile():
    model = dp_cases.build_model()
    with pytest.raises(ValueError, match="loss scaling"):
        model.compile(
            optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD()),
            loss="mse",
            clipping=kc.PerExampleClip(1.0),
        )
    with pytest.raises(ValueError, match="micro-batch"):
        model.compile(
            optimizer=keras.optimizers.SGD(gradient_accumulation_steps=2), loss="mse", clipping=kc.PerExampleClip(1.0)
        )


def test_a_loss_that_averages_over_examples_is_refused_at_the_first_step():
    model = dp_cases.build_model()
    model.compile(optimizer="sgd", loss=lambda y, p: tf.reduce_mean((y - p) ** 2), clipping=kc.PerExampleClip(1.0))
    x, y = dp_cases.data()
    with pytest.raises(ValueError, match="one value per example"):
        model.fit(x, y, batch_size=4, verbose=0)


def test_a_loss_object_with_sum_reduction_is_clipped_per_example():
    """The step ignores the loss's reduction: DP-SGD fixes it (sum of clipped gradients / batch)."""
    model = dp_cases.build_model()
    x, y = dp_cases.data()
    reference_model = dp_cases.build_model(keras.Model)
    expected, _ = dp_cases.reference_update(reference_model, x, y, 0.5)
    loss = keras.losses.MeanSquaredError(reduction="sum")
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=loss, clipping=kc.PerExampleClip(0.5))
    before = model.get_weights()
    model.fit(x, y, batch_size=dp_cases.BATCH, verbose=0)
    for b, a, want in zip(before, model.get_weights(), expected):
        np.testing.assert_allclose(b - a, want, atol=1e-5)


def test_layer_losses_are_refused_at_the_first_step():
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(1, activity_regularizer="l2")(inputs)
    model = kc.ClippingModel(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse", clipping=kc.PerExampleClip(1.0))
    with pytest.raises(ValueError, match="losses added by layers"):
        model.fit(np.ones((4, 4), "float32"), np.ones((4, 1), "float32"), verbose=0)


def test_a_summed_gradient_given_to_the_optimizer_is_refused():
    variable = keras.Variable(np.ones(3, "float32"))
    optimizer = kc.ClippingOptimizer(keras.optimizers.SGD(), kc.PerExampleClip(1.0))
    with pytest.raises(ValueError, match="cannot clip a gradient that was already summed"):
        optimizer.apply([tf.ones(3)], [variable])


@pytest.fixture(scope="module")
def mirrored():
    return script_result("dp_run.py")


@pytest.mark.parametrize("path", ["ghost", "vectorized"])
def test_mirrored_step_equals_loop_over_examples(mirrored, path):
    assert mirrored["replicas"] == 2
    result = mirrored[path]
    assert result["max_abs_diff"] < 1e-5, result
    assert 0 < result["reference_clipped_fraction"] < 1
    assert result["clipped_fraction"] == pytest.approx(result["reference_clipped_fraction"])
    assert result["example_norm_max"] == pytest.approx(result["reference_norm_max"], rel=1e-5)


def test_mirrored_noise_is_added_once_for_the_global_batch(mirrored):
    """Noise per replica would give sqrt(2) times the formula; once, after the all-reduce, gives 1."""
    assert mirrored["noise_ratio"] == pytest.approx(1.0, abs=0.05)

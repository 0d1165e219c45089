"""Privacy accounting (against dp_accounting's RDP accountant), the budget callback, Poisson sampling."""

import dp_accounting
import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_clip as kc
from keras_clip.privacy import epsilon, noise_multiplier_for
from tests.helpers import read_run, scalars

CASES = [(1.1, 256 / 60000, 14062, 1e-5), (0.8, 0.01, 1000, 1e-5), (4.0, 0.1, 50, 1e-6), (1.0, 1.0, 10, 1e-5)]


@pytest.mark.parametrize("sigma, q, steps, delta", CASES)
def test_epsilon_equals_the_rdp_accountant(sigma, q, steps, delta):
    accountant = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    accountant.compose(event, steps)
    assert epsilon(sigma, q, steps, delta) == pytest.approx(accountant.get_epsilon(delta), rel=1e-12)


def test_epsilon_grows_with_steps_and_falls_with_noise():
    assert epsilon(1.0, 0.01, 100, 1e-5) < epsilon(1.0, 0.01, 1000, 1e-5)
    assert epsilon(2.0, 0.01, 1000, 1e-5) < epsilon(1.0, 0.01, 1000, 1e-5)
    assert epsilon(0.0, 0.01, 10, 1e-5) == float("inf")
    assert epsilon(1.0, 0.01, 0, 1e-5) == 0.0


@pytest.mark.parametrize("target", [1.0, 3.0, 8.0])
def test_noise_multiplier_for_round_trips(target):
    sigma = noise_multiplier_for(target, 1e-5, 0.01, 1000)
    assert epsilon(sigma, 0.01, 1000, 1e-5) <= target
    assert epsilon(sigma, 0.01, 1000, 1e-5) == pytest.approx(target, rel=1e-2)
    assert epsilon(sigma * 0.99, 0.01, 1000, 1e-5) > target  # the smallest such noise


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: epsilon(1.0, 0.0, 10, 1e-5), "Received: sample_rate=0.0"),
        (lambda: epsilon(1.0, 0.1, -1, 1e-5), "Received: steps=-1"),
        (lambda: epsilon(1.0, 0.1, 10, 1.0), "Received: delta=1.0"),
        (lambda: epsilon(-1.0, 0.1, 10, 1e-5), "Received: noise_multiplier=-1.0"),
        (lambda: noise_multiplier_for(0.0, 1e-5, 0.1, 10), "Received: target_epsilon=0.0"),
        (lambda: kc.privacy.PrivacyBudget(0.1, 1e-5, max_epsilon=-1), "Received: max_epsilon=-1"),
    ],
)
def test_bad_arguments_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _dp_model(noise_multiplier=1.0):
    model = kc.ClippingSequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", clipping=kc.PerExampleClip(1.0, noise_multiplier, seed=0))
    return model


def test_budget_callback_logs_epsilon_and_stops_before_the_budget(tmp_path):
    x, y = np.ones((80, 4), "float32"), np.zeros((80, 1), "float32")
    q, delta = 8 / 80, 1e-5
    budget_eps = epsilon(1.0, q, 3 * 10, delta)  # exactly three epochs of ten steps fit the budget
    budget = kc.privacy.PrivacyBudget(q, delta, log_dir=str(tmp_path), max_epsilon=budget_eps + 1e-9)
    history = _dp_model().fit(x, y, batch_size=8, epochs=10, verbose=0, callbacks=[budget])
    expected = [epsilon(1.0, q, 10 * (e + 1), delta) for e in range(3)]
    np.testing.assert_allclose(history.history["epsilon"], expected, rtol=1e-12)
    written = scalars(read_run(tmp_path), "privacy/epsilon")
    assert [s for s, _ in written] == [10, 20, 30]
    np.testing.assert_allclose([v for _, v in written], expected, rtol=1e-6)


def test_budget_callback_needs_a_noise_multiplier():
    model = kc.ClippingSequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="needs the noise multiplier"):
        model.fit(np.ones((4, 4)), np.ones((4, 1)), verbose=0, callbacks=[kc.privacy.PrivacyBudget(0.5, 1e-5)])


def test_gradient_norm_logger_writes_the_per_example_figures(tmp_path):
    x, y = np.random.default_rng(0).normal(size=(32, 4)).astype("float32"), np.ones((32, 1), "float32")
    _dp_model().fit(x, y, batch_size=8, verbose=0, callbacks=[kc.GradientNormLogger(str(tmp_path))])
    events = read_run(tmp_path)
    for name in ("example_norm_median", "example_norm_max", "clipped_fraction", "noise_std"):
        assert len(scalars(events, f"clipping/{name}")) == 4, sorted(events)
    assert scalars(events, "clipping/noise_std")[0][1] == pytest.approx(1.0 / 8)


def test_poisson_batches_sample_each_example_independently():
    examples = tf.data.Dataset.from_tensor_slices(np.arange(200))
    batches = [b.numpy() for b in kc.privacy.poisson_batches(examples, 0.1, steps=300, seed=1)]
    assert len(batches) == 300
    sizes = np.array([len(b) for b in batches])
    assert sizes.mean() == pytest.approx(20, rel=0.05) and sizes.std() == pytest.approx(np.sqrt(200 * 0.09), rel=0.15)
    counts = np.bincount(np.concatenate(batches), minlength=200)
    assert counts.mean() == pytest.approx(30, rel=0.05) and counts.min() > 10  # every example is reachable
    assert all(len(np.unique(b)) == len(b) for b in batches)  # no example twice in a batch


def test_poisson_batches_refuse_an_infinite_dataset():
    with pytest.raises(ValueError, match="finite dataset"):
        kc.privacy.poisson_batches(tf.data.Dataset.range(3).repeat(), 0.1, steps=2)


def test_poisson_batches_keep_features_and_labels_together():
    x = np.arange(50, dtype="float32")[:, None] * np.ones((1, 3), "float32")
    examples = tf.data.Dataset.from_tensor_slices((x, np.arange(50)))
    for features, labels in kc.privacy.poisson_batches(examples, 0.3, steps=5, seed=0):
        np.testing.assert_array_equal(features.numpy()[:, 0], labels.numpy())
        assert features.shape[1:] == (3,)

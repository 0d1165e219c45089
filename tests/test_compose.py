"""Chain and ByVariable: composition of strategies, and their serialization."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_clip import (
    AdaptiveGradClip,
    AutoClip,
    ByVariable,
    Chain,
    ClipByGlobalNorm,
    ClipByNorm,
    ClipByValue,
    ClippingSequential,
    ZClip,
)


def problem():
    """Embedding (IndexedSlices gradient), Dense kernel and bias, with paths."""
    rng = np.random.default_rng(0)
    variables = [
        keras.Variable(rng.normal(size=(6, 3)).astype("float32"), name="embeddings"),
        keras.Variable(rng.normal(size=(3, 2)).astype("float32"), name="kernel"),
        keras.Variable(np.zeros(2, "float32"), name="bias"),
    ]
    grads = [
        tf.IndexedSlices(
            tf.constant(rng.normal(size=(3, 3)) * 10, tf.float32), tf.constant([4, 1, 4]), tf.constant([6, 3])
        ),
        tf.constant(rng.normal(size=(3, 2)) * 3, tf.float32),
        tf.constant([2.0, -7.0]),
    ]
    return variables, grads


def dense(grad) -> np.ndarray:
    if isinstance(grad, tf.IndexedSlices):
        return tf.scatter_nd(grad.indices[:, None], grad.values, grad.dense_shape).numpy()
    return grad.numpy()


def global_norm(grads) -> float:
    return math.sqrt(sum(float(np.sum(dense(g).astype(np.float64) ** 2)) for g in grads if g is not None))


def assert_grads_close(got, want):
    for a, b in zip(got, want):
        np.testing.assert_allclose(dense(a), dense(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_chain_applies_members_in_order(jit):
    variables, grads = problem()
    chain = Chain(ClipByValue(5.0), ClipByGlobalNorm(1.0))
    step = tf.function(lambda g: chain.clip(g, variables), jit_compile=True)
    clipped, stats = step(grads) if jit else chain.clip(grads, variables)
    by_value, _ = ClipByValue(5.0).clip(grads, variables)
    expected, last = ClipByGlobalNorm(1.0).clip(by_value, variables)
    assert_grads_close(clipped, expected)
    assert isinstance(clipped[0], tf.IndexedSlices)
    np.testing.assert_allclose(float(stats["grad_norm"]), global_norm(grads), rtol=1e-5)
    np.testing.assert_allclose(float(stats["clipped_grad_norm"]), 1.0, rtol=1e-5)
    assert float(stats["threshold"]) == 1.0 == float(last["threshold"])


def test_chain_order_matters():
    variables, grads = problem()
    a, _ = Chain(ClipByValue(0.5), ClipByGlobalNorm(1.0)).clip(grads, variables)
    b, _ = Chain(ClipByGlobalNorm(1.0), ClipByValue(0.5)).clip(grads, variables)
    assert not np.allclose(dense(a[1]), dense(b[1]))


def test_chain_keeps_each_members_state_and_reports_last_threshold():
    variables, grads = problem()
    chain = Chain(ClipByValue(5.0), AutoClip(history_size=4), ZClip(warmup_steps=2))
    for _ in range(3):
        _, stats = chain.clip(grads, variables)
    assert {k: tuple(v.shape) for k, v in chain.state.items()} == {
        "1/history": (4,),
        "1/count": (),
        "2/count": (),
        "2/mean": (),
        "2/var": (),
    }
    assert int(chain.state["1/count"].numpy()) == 3 and int(chain.state["2/count"].numpy()) == 3
    assert float(stats["threshold"]) == pytest.approx(1.0)


def test_chain_without_thresholds_reports_none():
    variables, grads = problem()
    _, stats = Chain(ClipByValue(1.0)).clip(grads, variables)
    assert set(stats) == {"grad_norm", "clipped_grad_norm"}


def test_chain_none_gradient_stays_none():
    variables, grads = problem()
    clipped, _ = Chain(ClipByValue(1.0), AutoClip()).clip([grads[0], None, grads[2]], variables)
    assert clipped[1] is None and clipped[0] is not None


@pytest.mark.parametrize("jit", [False, True])
def test_by_variable_routes_each_variable_to_first_matching_rule(jit):
    variables, grads = problem()
    strategy = ByVariable(
        {"embeddings": ClipByNorm(1.0), "*": ClipByValue(0.1), "bias": None}, default=ClipByGlobalNorm(1.0)
    )
    step = tf.function(lambda g: strategy.clip(g, variables), jit_compile=True)
    clipped, stats = step(grads) if jit else strategy.clip(grads, variables)
    expected = [
        ClipByNorm(1.0).clip(grads[:1], variables[:1])[0][0],
        ClipByValue(0.1).clip(grads[1:2], variables[1:2])[0][0],
        ClipByValue(0.1).clip(grads[2:], variables[2:])[0][0],
    ]
    assert_grads_close(clipped, expected)
    np.testing.assert_allclose(float(stats["grad_norm"]), global_norm(grads), rtol=1e-5)
    np.testing.assert_allclose(float(stats["clipped_grad_norm"]), global_norm(expected), rtol=1e-5)
    assert "threshold" not in stats  # The default saw no variable.


def test_by_variable_default_and_none_rule():
    variables, grads = problem()
    strategy = ByVariable({"bias": None}, default=ClipByGlobalNorm(1.0))
    clipped, stats = strategy.clip(grads, variables)
    np.testing.assert_array_equal(dense(clipped[2]), dense(grads[2]))
    joint, _ = ClipByGlobalNorm(1.0).clip(grads[:2], variables[:2])
    assert_grads_close(clipped[:2], joint)
    np.testing.assert_allclose(float(stats["clipped_grad_norm"]), math.sqrt(1.0 + 53.0), rtol=1e-5)
    assert float(stats["threshold"]) == 1.0


def test_by_variable_builds_stateful_members_for_their_group():
    variables, grads = problem()
    agc = AdaptiveGradClip(0.1)
    strategy = ByVariable({"embeddings": AutoClip(history_size=3)}, default=Chain(ClipByValue(9.0), agc))
    for _ in range(2):
        strategy.clip(grads, variables)
    assert list(strategy.state) == ["embeddings/history", "embeddings/count"]
    history, count = strategy.state["embeddings/history"], strategy.state["embeddings/count"]
    assert int(count.numpy()) == 2 and tuple(history.shape) == (3,)
    np.testing.assert_allclose(history.numpy()[:2], global_norm(grads[:1]), rtol=1e-5)


def test_unmatched_rule_pattern_warns_once():
    variables, grads = problem()
    strategy = ByVariable({"embeddings": ClipByNorm(1.0), "encoder/*": ClipByNorm(1.0)})
    with pytest.warns(UserWarning, match=r"\['encoder/\*'\] match no variable") as record:
        strategy.clip(grads, variables)
        strategy.clip(grads, variables)
    assert len(record) == 1


def test_shared_instances_are_refused():
    shared = AutoClip()
    with pytest.raises(ValueError, match="separate instance"):
        Chain(shared, shared)
    with pytest.raises(ValueError, match="separate instance"):
        ByVariable({"a": shared}, default=shared)


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: Chain(), ValueError),
        (lambda: Chain("global_norm"), TypeError),
        (lambda: ByVariable([("a", ClipByNorm(1.0))]), TypeError),
        (lambda: ByVariable({1: ClipByNorm(1.0)}), TypeError),
        (lambda: ByVariable({"a": 1.0}), TypeError),
        (lambda: ByVariable({}, default="x"), TypeError),
    ],
)
def test_bad_arguments(make, error):
    with pytest.raises(error):
        make()


def test_repr_is_readable():
    strategy = ByVariable({"a": ClipByNorm(1.0)}, default=Chain(ClipByValue(2.0)))
    assert repr(strategy) == (
        "ByVariable({'a': ClipByNorm(max_norm=1.0, norm_type=2)}, default=Chain(ClipByValue(clip_value=2.0)))"
    )


def test_needs_variables_follows_the_members():
    assert not Chain(ClipByValue(1.0), AutoClip()).needs_variables
    assert Chain(ClipByValue(1.0), AdaptiveGradClip(0.1)).needs_variables
    assert ByVariable({"a": ClipByNorm(1.0)}).needs_variables  # Routes by path.
    _, grads = problem()
    with pytest.raises(ValueError, match="`variables` must be given to Chain.clip"):
        Chain(ClipByValue(1.0), AdaptiveGradClip(0.1)).clip(grads)


def test_chain_and_by_variable_report_the_threshold_members_own_norm():
    variables, grads = problem()
    inf_norm = ClipByGlobalNorm(1.0, norm_type="inf")
    for strategy in (Chain(ClipByValue(9.0), inf_norm), ByVariable({"bias": None}, default=ClipByGlobalNorm(1.0, 1))):
        _, stats = strategy.clip(grads, variables)
        assert float(stats["threshold"]) == 1.0
        assert float(stats["clipped_norm"]) == pytest.approx(1.0, rel=1e-5)
        assert float(stats["norm"]) > 1.0


def test_patterns_match_the_path_inside_the_model_whatever_its_number():
    """Two `ClippingSequential` in one process get different auto names; a documented pattern matches both."""
    for _ in range(2):
        model = ClippingSequential(
            [keras.Input((3,)), keras.layers.Dense(4, name="hidden"), keras.layers.Dense(1, name="classifier")]
        )
        assert model.trainable_variables[-1].path.startswith("clipping_sequential")
        strategy = ByVariable({"classifier/*": ClipByValue(1e-3)}, default=None)
        grads = [tf.ones(v.shape) * 5.0 for v in model.trainable_variables]
        clipped, _ = strategy.clip(grads, model.trainable_variables)
        assert float(tf.reduce_max(clipped[-1])) == pytest.approx(1e-3)  # the classifier's bias: clipped
        assert float(tf.reduce_max(clipped[0])) == 5.0  # hidden: left alone

"""AdaptiveGradClip against a numpy re-implementation of AGC (Brock et al. 2021)."""

import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_clip
from keras_clip import AdaptiveGradClip


def agc_reference(grad: np.ndarray, weight: np.ndarray, clipping: float, eps: float = 1e-3) -> np.ndarray:
    """AGC, written from the paper: units are output units (last axis), float64."""
    grad, weight = grad.astype(np.float64), weight.astype(np.float64)
    axes = None if grad.ndim <= 1 else tuple(range(grad.ndim - 1))
    g_norm = np.sqrt(np.sum(grad**2, axis=axes, keepdims=True))
    w_norm = np.sqrt(np.sum(weight**2, axis=axes, keepdims=True))
    bound = clipping * np.maximum(w_norm, eps)
    return np.where(g_norm >= bound, grad * bound / np.maximum(g_norm, 1e-6), grad)


SHAPES = {"dense": (6, 4), "bias": (4,), "conv2d": (3, 3, 2, 5), "scalar": ()}


def make_case(seed: int = 0):
    """Variables of Dense, bias, Conv2D and scalar shapes, with gradients whose
    unit norms fall on both sides of the bound (and a zero weight unit)."""
    rng = np.random.default_rng(seed)
    variables, grads = [], []
    for name, shape in SHAPES.items():
        weight = rng.normal(size=shape).astype("float32")
        if name == "bias":
            weight[:] = 0.0  # Zero-initialised bias: the eps floor decides.
        if name == "dense":
            weight[:, 0] = 0.0
        grad = rng.normal(size=shape) * rng.choice([1e-4, 0.01, 1.0], size=shape[-1:] if shape else ())
        variables.append(keras.Variable(weight, name=name))
        grads.append(tf.constant(grad, tf.float32))
    return variables, grads


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("clipping", [0.01, 0.1, 1.0])
def test_matches_reference_on_dense_bias_conv_shapes(jit, clipping):
    variables, grads = make_case()
    strategy = AdaptiveGradClip(clipping)
    clip = tf.function(lambda g: strategy.clip(g, variables), jit_compile=jit)
    clipped, stats = clip(grads) if jit else strategy.clip(grads, variables)
    expected = [agc_reference(g.numpy(), v.numpy(), clipping) for g, v in zip(grads, variables)]
    for got, want in zip(clipped, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-7)
    pre = math.sqrt(sum(float(np.sum(g.numpy().astype(np.float64) ** 2)) for g in grads))
    post = math.sqrt(sum(float(np.sum(w**2)) for w in expected))
    np.testing.assert_allclose(float(stats["grad_norm"]), pre, rtol=1e-4)
    np.testing.assert_allclose(float(stats["clipped_grad_norm"]), post, rtol=1e-4)


def test_some_units_clipped_and_some_not():
    variables, grads = make_case()
    _, stats = AdaptiveGradClip(0.1).clip(grads, variables)
    assert 0.0 < float(stats["clipped_fraction"]) < 1.0


def test_threshold_is_norm_of_unit_bounds_and_bounds_the_output():
    variables, grads = make_case()
    clipping = 0.05
    clipped, stats = AdaptiveGradClip(clipping).clip(grads, variables)
    squares = 0.0
    for v in variables:
        w = v.numpy().astype(np.float64)
        axes = None if w.ndim <= 1 else tuple(range(w.ndim - 1))
        squares += np.sum((clipping * np.maximum(np.sqrt(np.sum(w**2, axis=axes)), 1e-3)) ** 2)
    np.testing.assert_allclose(float(stats["threshold"]), math.sqrt(squares), rtol=1e-5)
    assert float(stats["clipped_grad_norm"]) <= float(stats["threshold"]) * (1 + 1e-5)


def test_indexed_slices_match_dense_reference():
    rng = np.random.default_rng(1)
    table = keras.Variable(rng.normal(size=(8, 3)).astype("float32"), name="embeddings")
    values = rng.normal(size=(4, 3)).astype("float32") * 5
    indices = np.array([1, 5, 1, 6])
    grad = tf.IndexedSlices(tf.constant(values), tf.constant(indices), tf.constant([8, 3]))
    clipped, _ = AdaptiveGradClip(0.1).clip([grad], [table])
    assert isinstance(clipped[0], tf.IndexedSlices)
    dense = np.zeros((8, 3))
    np.add.at(dense, indices, values)
    got = tf.scatter_nd(clipped[0].indices[:, None], clipped[0].values, [8, 3]).numpy()
    np.testing.assert_allclose(got, agc_reference(dense, table.numpy(), 0.1), rtol=1e-4, atol=1e-7)


def test_clipping_twice_changes_nothing():
    variables, grads = make_case()
    strategy = AdaptiveGradClip(0.1)
    once, _ = strategy.clip(grads, variables)
    twice, _ = strategy.clip(once, variables)
    for a, b in zip(once, twice):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-8)


def test_exclude_passes_variables_through_and_none_stays_none():
    variables, grads = make_case()
    strategy = AdaptiveGradClip(0.01, exclude=["conv*", "bias"])
    clipped, _ = strategy.clip([*grads[:3], None], variables)
    np.testing.assert_array_equal(clipped[1].numpy(), grads[1].numpy())
    np.testing.assert_array_equal(clipped[2].numpy(), grads[2].numpy())
    assert not np.allclose(clipped[0].numpy(), grads[0].numpy())
    assert clipped[3] is None


def test_exclude_pattern_matching_nothing_warns_once():
    variables, grads = make_case()
    strategy = AdaptiveGradClip(0.01, exclude=["dense", "classifier/*"])
    with pytest.warns(UserWarning, match=r"\['classifier/\*'\] match no variable") as record:
        for _ in range(3):
            strategy.clip(grads, variables)
    assert len(record) == 1


def test_matching_patterns_do_not_warn():
    variables, grads = make_case()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AdaptiveGradClip(0.01, exclude="dense").clip(grads, variables)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"clipping": 0.0}, "clipping"),
        ({"clipping": -0.1}, "clipping"),
        ({"clipping": float("inf")}, "clipping"),
        ({"clipping": float("nan")}, "clipping"),
        ({"clipping": 0.1, "eps": 0.0}, "eps"),
    ],
)
def test_bad_values_raise_value_error_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"`{name}` must be .*Received: {name}={kwargs[name]!r}"):
        AdaptiveGradClip(**kwargs)


@pytest.mark.parametrize("kwargs", [{"clipping": "0.1"}, {"clipping": 0.1, "exclude": [1]}])
def test_bad_types_raise_type_error(kwargs):
    with pytest.raises(TypeError):
        AdaptiveGradClip(**kwargs)


def test_config_round_trip():
    strategy = AdaptiveGradClip(0.02, eps=1e-4, exclude=["head/*"])
    config = keras.saving.serialize_keras_object(strategy)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, AdaptiveGradClip)
    assert restored.get_config() == strategy.get_config() == {"clipping": 0.02, "eps": 1e-4, "exclude": ["head/*"]}
    assert keras_clip.get(config).get_config() == strategy.get_config()


@pytest.mark.parametrize("name", ["AdaptiveGradClip", "agc"])
def test_get_by_name(name):
    strategy = keras_clip.get(name)
    assert isinstance(strategy, AdaptiveGradClip) and strategy.clipping == 0.01

"""AdaptiveGradClip against a numpy re-implementation of AGC (Brock et al. 2021)."""

import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_clip import AdaptiveGradClip
from keras_clip.strategies.agc import unit_axes


def agc_reference(grad: np.ndarray, weight: np.ndarray, clipping: float, eps: float = 1e-3, axes=None) -> np.ndarray:
    """AGC, written from the paper, float64: units are output units (last axis) unless `axes` says."""
    grad, weight = grad.astype(np.float64), weight.astype(np.float64)
    if axes is None:
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


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("axis, axes", [(None, None), (1, (1,))], ids=["units-span-rows", "unit-is-a-row"])
def test_indexed_slices_match_dense_reference(axis, axes, jit):
    # Units spanning the rows are clipped on the rows present, units within a row against their row's weights.
    rng = np.random.default_rng(1)
    table = keras.Variable(rng.normal(size=(8, 3)).astype("float32"), name="embeddings")
    values = rng.normal(size=(4, 3)).astype("float32") * 5
    indices = np.array([1, 5, 1, 6])
    grad = tf.IndexedSlices(tf.constant(values), tf.constant(indices), tf.constant([8, 3]))
    strategy = AdaptiveGradClip(0.1, axis=None if axis is None else {"embeddings": axis})
    clipped, _ = tf.function(lambda g: strategy.clip(g, [table]), jit_compile=jit)([grad])
    assert isinstance(clipped[0], tf.IndexedSlices)
    dense = np.zeros((8, 3))
    np.add.at(dense, indices, values)
    got = tf.convert_to_tensor(clipped[0]).numpy()
    np.testing.assert_allclose(got, agc_reference(dense, table.numpy(), 0.1, axes=axes), rtol=1e-4, atol=1e-7)


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


def attention_model():
    """MultiHeadAttention (query/key/value kernels (in, heads, dim)) then Conv1D, with paths."""
    inputs = keras.Input((5, 16))
    hidden = keras.layers.MultiHeadAttention(4, 8, name="mha")(inputs, inputs)
    return keras.Model(inputs, keras.layers.Conv1D(3, 2, name="conv")(hidden))


# The unit of each variable of `attention_model`: the axes its norm runs over.
EXPECTED_AXES = {
    "mha/query/kernel": (0,),  # (in, heads, dim): one unit per (head, dim) pair
    "mha/key/kernel": (0,),
    "mha/value/kernel": (0,),
    "mha/query/bias": (0, 1),  # (heads, dim) bias: one unit, as a Dense bias
    "mha/attention_output/kernel": (0, 1),  # (heads, dim, out): one unit per output
    "mha/attention_output/bias": (0,),
    "conv/kernel": (0, 1),  # (kernel, in, out): one unit per output channel
    "conv/bias": (0,),
}


def test_unit_axes_follow_the_layer_kind():
    for variable in attention_model().trainable_variables:
        if variable.path in EXPECTED_AXES:
            assert unit_axes(variable.path, tuple(variable.shape)) == EXPECTED_AXES[variable.path], variable.path
    assert unit_axes("mha/query/kernel", (16, 4, 8), {"*query*": None}) == (0, 1, 2)
    assert unit_axes("mha/query/kernel", (16, 4, 8), {"*query*": -1, "*": 0}) == (2,)
    assert unit_axes("block/einsum/kernel", (16, 4, 8), {"*einsum*": [0, 1]}) == (0, 1)
    with pytest.raises(ValueError, match=r"rank 2. Received: axis=2"):
        unit_axes("dense/kernel", (3, 4), {"dense/*": 2})


def attention_case(scale=0.05, seed=0):
    rng = np.random.default_rng(seed)
    variables = attention_model().trainable_variables
    # Some units far below their bound, some above.
    grads = [
        tf.constant(rng.normal(size=v.shape) * scale * rng.choice([1e-4, 1.0], size=v.shape[-1:]), tf.float32)
        for v in variables
    ]
    return variables, grads


@pytest.mark.parametrize("jit", [False, True])
def test_attention_and_conv1d_match_reference_with_their_units(jit):
    variables, grads = attention_case()
    strategy = AdaptiveGradClip(0.1)
    step = tf.function(lambda g: strategy.clip(g, variables), jit_compile=jit)
    clipped, stats = step(grads)
    for got, grad, variable in zip(clipped, grads, variables):
        want = agc_reference(grad.numpy(), variable.numpy(), 0.1, axes=unit_axes(variable.path, variable.shape))
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-7, err_msg=variable.path)
    assert 0.0 < float(stats["clipped_fraction"]) < 1.0


def test_agrees_with_optax_where_its_units_are_ours():
    optax = pytest.importorskip("optax")
    jnp = pytest.importorskip("jax.numpy")
    variables, grads = attention_case()
    clipped, _ = AdaptiveGradClip(0.1).clip(grads, variables)
    compared = 0
    for got, grad, variable in zip(clipped, grads, variables):
        axes = unit_axes(variable.path, variable.shape)
        if len(variable.shape) <= 1:
            continue  # optax treats a vector the same; covered by the Dense case below.
        transform = optax.adaptive_grad_clip(0.1, axis=axes)
        want, _ = transform.update(jnp.asarray(grad.numpy()), transform.init(None), jnp.asarray(variable.numpy()))
        np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=1e-4, atol=1e-7, err_msg=variable.path)
        compared += 1
    # optax's defaults: a 3-D kernel reduces axis 0 (its query/key/value convention), a 2-D kernel axis 0.
    dense_variables, dense_grads = make_case()
    default = optax.adaptive_grad_clip(0.1)
    for got, grad, variable in zip(
        AdaptiveGradClip(0.1).clip(dense_grads, dense_variables)[0], dense_grads, dense_variables
    ):
        if variable.name in ("dense", "conv2d"):
            want, _ = default.update(jnp.asarray(grad.numpy()), default.init(None), jnp.asarray(variable.numpy()))
            np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=1e-4, atol=1e-7, err_msg=variable.name)
            compared += 1
    q = next(i for i, v in enumerate(variables) if v.path == "mha/query/kernel")
    want, _ = default.update(jnp.asarray(grads[q].numpy()), default.init(None), jnp.asarray(variables[q].numpy()))
    np.testing.assert_allclose(clipped[q].numpy(), np.asarray(want), rtol=1e-4, atol=1e-7)
    assert compared >= 8


def test_axis_override_and_config():
    variables, grads = attention_case()
    strategy = AdaptiveGradClip(0.1, axis={"mha/query/kernel": None, "conv/kernel": [0, 1]})
    clipped, _ = strategy.clip(grads, variables)
    q = next(i for i, v in enumerate(variables) if v.path == "mha/query/kernel")
    want = agc_reference(grads[q].numpy(), variables[q].numpy(), 0.1, axes=(0, 1, 2))
    np.testing.assert_allclose(clipped[q].numpy(), want, rtol=1e-4, atol=1e-7)
    assert strategy.get_config()["axis"] == {"mha/query/kernel": None, "conv/kernel": [0, 1]}
    with pytest.raises(TypeError, match="Received: axis="):
        AdaptiveGradClip(0.1, axis={"conv/*": "last"})
    with pytest.raises(TypeError, match="Received: axis="):
        AdaptiveGradClip(0.1, axis=[0])

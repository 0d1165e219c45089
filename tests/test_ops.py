"""keras_clip.ops against numpy references."""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_clip import ops


def _slices(seed=0):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(6, 3)).astype("float32")
    indices = np.array([4, 1, 4, 0, 1, 4], "int64")
    return tf.IndexedSlices(tf.constant(values), tf.constant(indices), tf.constant([5, 3], tf.int64))


def test_deduplicate_keeps_dense_value_and_removes_repeats():
    slices = _slices()
    deduped = ops.deduplicate(slices)
    np.testing.assert_allclose(tf.convert_to_tensor(deduped), tf.convert_to_tensor(slices), atol=1e-6)
    used = deduped.indices.numpy()[np.any(deduped.values.numpy() != 0, axis=1)]
    assert len(set(used)) == len(used) == 3


def test_deduplicated_slices_are_not_sorted_again():
    once = ops.deduplicate(_slices())
    assert ops.deduplicate(once) is once
    scaled = ops.scale(once, 0.5)  # Same indices: still free of repeats.
    assert ops.deduplicate(scaled) is scaled
    raw = _slices()
    assert ops.deduplicate(raw) is not raw  # Slices from elsewhere are always de-duplicated.
    assert ops.deduplicate(ops.with_values(raw, raw.values)) is not raw


def test_deduplicate_compiles_under_xla():
    slices = _slices()
    fn = tf.function(lambda v, i: ops.norm(ops.deduplicate(tf.IndexedSlices(v, i, [5, 3]))), jit_compile=True)
    dense = tf.convert_to_tensor(slices).numpy()
    np.testing.assert_allclose(fn(slices.values, slices.indices), np.linalg.norm(dense), rtol=1e-6)


@pytest.mark.parametrize("norm_type", [1.0, 2.0, math.inf])
def test_norms_match_numpy(norm_type):
    rng = np.random.default_rng(1)
    arrays = [rng.normal(size=s).astype("float32") for s in [(3, 4), (4,), (2, 2, 3)]]
    flat = np.concatenate([a.ravel() for a in arrays])
    expected = np.linalg.norm(flat, ord=norm_type)
    np.testing.assert_allclose(
        ops.global_norm([tf.constant(a) for a in arrays] + [None], norm_type), expected, rtol=1e-5
    )
    np.testing.assert_allclose(
        ops.norm(tf.constant(arrays[0]), norm_type), np.linalg.norm(arrays[0].ravel(), norm_type), rtol=1e-5
    )


def test_global_norm_of_slices_counts_repeated_rows_once():
    slices = _slices()
    dense = tf.convert_to_tensor(slices).numpy()
    np.testing.assert_allclose(ops.global_norm([slices]), np.linalg.norm(dense), rtol=1e-6)


def test_norms_of_float16_do_not_overflow():
    big = tf.fill([1000], tf.constant(300.0, tf.float16))  # 300^2 overflows float16
    np.testing.assert_allclose(ops.global_norm([big]), 300.0 * math.sqrt(1000), rtol=1e-3)


@pytest.mark.parametrize(
    "current, max_norm, expected",
    [(4.0, 2.0, 0.5), (1.0, 2.0, 1.0), (2.0, 2.0, 1.0), (0.0, 1.0, 1.0), (math.inf, 1.0, 0.0)],
)
def test_clip_factor(current, max_norm, expected):
    assert float(ops.clip_factor(tf.constant(current), max_norm)) == pytest.approx(expected)


def test_clip_factor_leaves_nan_for_the_policy():
    assert math.isnan(float(ops.clip_factor(tf.constant(math.nan), 1.0) * math.nan))


def test_scale_and_clip_values_keep_kind():
    slices = _slices()
    assert isinstance(ops.scale(slices, tf.constant(2.0)), tf.IndexedSlices)
    clipped = ops.clip_values(tf.constant([-3.0, 0.5, 2.0]), 1.0)
    np.testing.assert_array_equal(clipped, [-1.0, 0.5, 1.0])


def test_zero_nonfinite_and_all_finite():
    g = tf.constant([1.0, math.nan, -math.inf])
    np.testing.assert_array_equal(ops.zero_nonfinite(g), [1.0, 0.0, 0.0])
    assert not bool(ops.all_finite([g, None]))
    assert bool(ops.all_finite([tf.constant([1.0]), None]))


@pytest.mark.parametrize("norm_type", [1, 2, "inf", float("inf"), 2.0])
def test_canonical_norm_type_accepts(norm_type):
    assert ops.canonical_norm_type(norm_type) in (1.0, 2.0, math.inf)


@pytest.mark.parametrize("norm_type", [3, 0, "two", None, True, -math.inf])
def test_canonical_norm_type_rejects(norm_type):
    with pytest.raises(ValueError, match="`norm_type` must be one of 1, 2 or 'inf'.*Received: norm_type="):
        ops.canonical_norm_type(norm_type)


def test_unitwise_norm_shapes():
    kernel = np.arange(24, dtype="float32").reshape(2, 3, 4)
    got = ops.unitwise_norm(tf.constant(kernel)).numpy()
    np.testing.assert_allclose(got, np.sqrt((kernel**2).sum(axis=(0, 1), keepdims=True)), rtol=1e-6)
    bias = np.array([3.0, 4.0], "float32")
    assert float(ops.unitwise_norm(tf.constant(bias))) == pytest.approx(5.0)


def _huge_and_small(seed=0):
    """Gradients whose float32 sum of squares overflows (entries ~1e20), next to ordinary ones."""
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(30, 8)) * 1e20, rng.normal(size=(8,)) * 3e21, rng.normal(size=(3,))]


@pytest.mark.parametrize("jit", [False, True])
def test_l2_norms_do_not_overflow_and_match_float64(jit):
    arrays = _huge_and_small()
    fn = tf.function(ops.l2_norms, jit_compile=jit)
    norms, total = fn([tf.constant(a, tf.float32) for a in arrays])
    np.testing.assert_allclose([float(n) for n in norms], [np.linalg.norm(a) for a in arrays], rtol=1e-5)
    expected = np.sqrt(sum(np.sum(a**2) for a in arrays))
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)
    np.testing.assert_allclose(
        float(ops.global_norm([tf.constant(a, tf.float32) for a in arrays])), expected, rtol=1e-5
    )


@pytest.mark.parametrize("jit", [False, True])
def test_l2_norms_of_nonfinite_and_empty_gradients(jit):
    fn = tf.function(ops.l2_norms, jit_compile=jit)
    _, total = fn([tf.constant([1.0, math.inf]), tf.constant([1e30])])
    assert float(total) == math.inf
    _, total = fn([tf.constant([1.0, math.nan]), tf.constant([1e30])])
    assert math.isnan(float(total))
    norms, total = fn([tf.zeros([0, 3]), tf.constant([3.0, 4.0])])
    assert [float(n) for n in norms] == [0.0, 5.0] and float(total) == 5.0
    assert ops.l2_norms([])[0] == [] and float(ops.l2_norms([])[1]) == 0.0


def test_combine_norms_does_not_overflow_and_keeps_nan():
    big = [tf.constant(3e20), tf.constant(4e20)]
    assert float(ops.combine_norms(big)) == pytest.approx(5e20, rel=1e-6)
    assert math.isnan(float(ops.combine_norms([tf.constant(1.0), tf.constant(math.nan)])))
    assert float(ops.combine_norms([tf.constant(1.0), tf.constant(math.inf)])) == math.inf


def test_scale_multiplies_float16_in_float32():
    grad = tf.fill([100, 100], tf.constant(60000.0, tf.float16))
    factor = tf.constant(0.1 / (60000.0 * 100.0))  # ~1.7e-8: 0 in float16
    scaled = ops.scale(grad, factor)
    assert scaled.dtype == tf.float16
    np.testing.assert_allclose(scaled.numpy().astype(np.float64), 1e-3, rtol=1e-3)


def test_unitwise_norm_with_explicit_axes():
    kernel = np.arange(1, 25, dtype="float32").reshape(2, 3, 4)
    got = ops.unitwise_norm(tf.constant(kernel), axis=0).numpy()
    np.testing.assert_allclose(got, np.sqrt((kernel**2).sum(axis=0, keepdims=True)), rtol=1e-6)
    got = ops.unitwise_norm(tf.constant(kernel), axis=(0, -1)).numpy()
    np.testing.assert_allclose(got, np.sqrt((kernel**2).sum(axis=(0, 2), keepdims=True)), rtol=1e-6)

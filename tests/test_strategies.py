"""Fixed-threshold strategies: properties, goldens, references, numerics at the edges of float32 and float16.

The contract every strategy keeps (serialization, names, bad arguments, None, IndexedSlices, XLA) is
checked in `test_contract.py`.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_clip as kc
from keras_clip import ops
from keras_clip.callbacks import layout

NORM_TYPES = [1, 2, "inf"]


def _grads(scale=10.0, seed=0):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=s).astype("float32") * scale) for s in [(4, 3), (3,), (2, 2)]]


def _vars(grads):
    return [keras.Variable(tf.zeros_like(g)) for g in grads]


def _strategies():
    for nt in NORM_TYPES:
        yield kc.ClipByNorm(1.5, norm_type=nt)
        yield kc.ClipByGlobalNorm(1.5, norm_type=nt)
    yield kc.ClipByValue(0.5)


def _bound_holds(strategy, clipped):
    present = [g for g in clipped if g is not None]
    if isinstance(strategy, kc.ClipByValue):
        return all(float(tf.reduce_max(tf.abs(ops.values_of(g)))) <= strategy.clip_value + 1e-6 for g in present)
    if isinstance(strategy, kc.ClipByNorm):
        return all(
            float(ops.norm(ops.deduplicate(g), strategy.norm_type)) <= strategy.max_norm * (1 + 1e-5) for g in present
        )
    return float(ops.global_norm(present, strategy.norm_type)) <= strategy.max_norm * (1 + 1e-5)


@pytest.mark.parametrize("strategy", list(_strategies()), ids=repr)
@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_post_clip_within_threshold(strategy, mode):
    grads = _grads()
    variables = _vars(grads)

    def run(gs):
        return strategy.clip(gs, variables)

    if mode != "eager":
        run = tf.function(run, jit_compile=(mode == "xla"))
    clipped, stats = run(grads)
    assert _bound_holds(strategy, clipped)
    assert not all(np.allclose(a, b) for a, b in zip(clipped, grads))  # The scenario clips.
    np.testing.assert_allclose(stats["grad_norm"], ops.global_norm(grads), rtol=1e-5)
    np.testing.assert_allclose(stats["clipped_grad_norm"], ops.global_norm(clipped), rtol=1e-5)


@pytest.mark.parametrize("strategy", list(_strategies()), ids=repr)
def test_small_gradients_unchanged(strategy):
    grads = _grads(scale=1e-3)
    clipped, stats = strategy.clip(grads, _vars(grads))
    for a, b in zip(grads, clipped):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(stats["grad_norm"], stats["clipped_grad_norm"], rtol=1e-6)


def test_goldens_worked_by_hand():
    g = [tf.constant([3.0, 4.0]), tf.constant([12.0])]  # norms 5 and 12, global 13
    v = _vars(g)
    clipped, stats = kc.ClipByGlobalNorm(6.5).clip(g, v)
    np.testing.assert_allclose(clipped[0], [1.5, 2.0])
    np.testing.assert_allclose(clipped[1], [6.0])
    assert float(stats["grad_norm"]) == pytest.approx(13.0)
    assert float(stats["clipped_grad_norm"]) == pytest.approx(6.5)
    clipped, stats = kc.ClipByNorm(2.5).clip(g, v)
    np.testing.assert_allclose(clipped[0], [1.5, 2.0])
    np.testing.assert_allclose(clipped[1], [2.5])
    assert float(stats["clipped_grad_norm"]) == pytest.approx(math.sqrt(2.5**2 + 2.5**2))
    clipped, _ = kc.ClipByNorm(6.0, norm_type=1).clip(g, v)  # L1 norm 7 -> factor 6/7
    np.testing.assert_allclose(clipped[0], [18 / 7, 24 / 7], rtol=1e-6)
    clipped, _ = kc.ClipByGlobalNorm(6.0, norm_type="inf").clip(g, v)  # max |g| 12 -> factor 1/2
    np.testing.assert_allclose(clipped[0], [1.5, 2.0])
    clipped, stats = kc.ClipByValue(3.5).clip(g, v)
    np.testing.assert_allclose(clipped[0], [3.0, 3.5])
    np.testing.assert_allclose(clipped[1], [3.5])
    assert float(stats["clipped_grad_norm"]) == pytest.approx(math.sqrt(9 + 3.5**2 + 3.5**2))


def test_matches_tf_clip_references():
    grads = _grads()
    v = _vars(grads)
    expected, _ = tf.clip_by_global_norm(grads, 1.5)
    got, _ = kc.ClipByGlobalNorm(1.5).clip(grads, v)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    got, _ = kc.ClipByNorm(1.5).clip(grads, v)
    for a, g in zip(got, grads):
        np.testing.assert_allclose(a, tf.clip_by_norm(g, 1.5), rtol=1e-5)


def test_bad_threshold_message_exact():
    with pytest.raises(ValueError) as info:
        kc.ClipByGlobalNorm(-1.0)
    assert str(info.value) == "`max_norm` must be a positive finite number. Received: max_norm=-1.0"


@pytest.mark.parametrize(
    "strategy", [kc.ClipByGlobalNorm(0.1), kc.ClipByNorm(0.1), kc.AutoClip(0.0), kc.ZClip(max_norm=0.1)]
)
def test_float16_gradient_scaled_by_a_tiny_factor(strategy):
    # 60000 everywhere in 100 x 100: norm 6e6, factor ~1.7e-8, below float16's smallest subnormal (~6e-8).
    grad = tf.fill([100, 100], tf.constant(60000.0, tf.float16))
    if isinstance(strategy, kc.AutoClip):
        # History: one norm of 0.1; percentile 0 makes it the threshold.
        strategy.clip([tf.fill([100, 100], tf.constant(1e-3, tf.float16))])
    clipped, stats = strategy.clip([grad])
    values = clipped[0].numpy().astype(np.float64)
    assert clipped[0].dtype == tf.float16 and np.all(values > 0)
    np.testing.assert_allclose(np.linalg.norm(values), 0.1, rtol=1e-3)  # float16 keeps ~3 digits.
    np.testing.assert_allclose(float(stats["clipped_grad_norm"]), np.linalg.norm(values), rtol=1e-3)
    np.testing.assert_allclose(float(stats["grad_norm"]), 6e6, rtol=1e-6)


def _huge(seed=0):
    """Entries ~1e20: their float32 squares overflow, their norms do not."""
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(30, 8)) * 1e20, rng.normal(size=(8,)) * 3e21, rng.normal(size=(3,))]


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(
    "make", [lambda: kc.ClipByGlobalNorm(2.0), lambda: kc.Chain(kc.AutoClip(), kc.ZClip(max_norm=2.0))]
)
def test_overflowing_squares_still_clip_to_max_norm(make, jit):
    arrays = _huge()
    strategy = make()
    step = tf.function(lambda g: strategy.clip(g), jit_compile=jit)
    clipped, stats = step([tf.constant(a, tf.float32) for a in arrays])
    norm = np.sqrt(sum(np.sum(a**2) for a in arrays))  # float64 reference
    for got, a in zip(clipped, arrays):
        np.testing.assert_allclose(got.numpy(), a * 2.0 / norm, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(float(stats["grad_norm"]), norm, rtol=1e-5)
    np.testing.assert_allclose(float(stats["clipped_grad_norm"]), 2.0, rtol=1e-5)


@pytest.mark.parametrize("jit", [False, True])
def test_overflowing_squares_clip_each_variable_to_max_norm(jit):
    arrays = _huge()
    strategy = kc.ClipByNorm(2.0)
    step = tf.function(lambda g: strategy.clip(g), jit_compile=jit)
    clipped, stats = step([tf.constant(a, tf.float32) for a in arrays])
    norms = [np.linalg.norm(a) for a in arrays]
    want = [a * min(1.0, 2.0 / n) for a, n in zip(arrays, norms)]
    for got, w in zip(clipped, want):
        np.testing.assert_allclose(got.numpy(), w, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(float(stats["grad_norm"]), np.sqrt(sum(n**2 for n in norms)), rtol=1e-5)
    np.testing.assert_allclose(float(stats["clipped_grad_norm"]), np.sqrt(sum(np.sum(w**2) for w in want)), rtol=1e-5)
    np.testing.assert_allclose(float(stats["variable_norm"]), max(norms), rtol=1e-5)


@pytest.mark.parametrize("norm_type", [1, "inf"])
def test_global_norm_in_another_norm_is_reported_in_that_norm(norm_type):
    grads = _grads()
    clipped, stats = kc.ClipByGlobalNorm(1.5, norm_type=norm_type).clip(grads)
    flat = np.concatenate([g.numpy().ravel() for g in grads])
    flat_clipped = np.concatenate([g.numpy().ravel() for g in clipped])
    order = 1 if norm_type == 1 else np.inf
    np.testing.assert_allclose(float(stats["norm"]), np.linalg.norm(flat, order), rtol=1e-5)
    np.testing.assert_allclose(float(stats["clipped_norm"]), np.linalg.norm(flat_clipped, order), rtol=1e-5)
    assert float(stats["clipped_norm"]) == pytest.approx(float(stats["threshold"]), rel=1e-5)
    np.testing.assert_allclose(float(stats["grad_norm"]), np.linalg.norm(flat), rtol=1e-5)  # L2, as History keeps it.
    assert "norm" not in kc.ClipByGlobalNorm(1.5).clip(grads)[1]  # L2: grad_norm is already in its norm.


@pytest.mark.parametrize("norm_type", [1, 2, "inf"])
def test_clip_by_norm_reports_the_largest_variable_norm_in_its_norm(norm_type):
    grads = _grads()
    clipped, stats = kc.ClipByNorm(1.5, norm_type=norm_type).clip(grads)
    order = {1: 1, 2: 2, "inf": np.inf}[norm_type]
    np.testing.assert_allclose(
        float(stats["variable_norm"]), max(np.linalg.norm(g.numpy().ravel(), order) for g in grads), rtol=1e-5
    )
    np.testing.assert_allclose(
        float(stats["clipped_variable_norm"]), max(np.linalg.norm(g.numpy().ravel(), order) for g in clipped), rtol=1e-5
    )
    assert float(stats["clipped_variable_norm"]) == pytest.approx(float(stats["variable_threshold"]), rel=1e-5)


@pytest.mark.parametrize(
    "strategy",
    [kc.ClipByGlobalNorm(1.5, norm_type=1), kc.Chain(kc.ClipByValue(9.0), kc.ClipByGlobalNorm(1.5, norm_type="inf"))],
    ids=repr,
)
def test_threshold_is_charted_with_the_norms_it_bounds(strategy):
    _, stats = strategy.clip(_grads())
    scalars = layout.scalars_of({k: float(v) for k, v in stats.items()})
    charts = {chart.title: list(chart.multiline.tag) for chart in layout.layout().category[0].chart}
    [chart] = [tags for tags in charts.values() if f"^{layout.STRATEGY_NORM_THRESHOLD}$" in tags]
    on_chart = {tag: v for tag, v in scalars.items() if f"^{tag}$" in chart}
    assert on_chart == {
        layout.STRATEGY_NORM_PRE_CLIP: float(stats["norm"]),
        layout.STRATEGY_NORM_POST_CLIP: float(stats["clipped_norm"]),
        layout.STRATEGY_NORM_THRESHOLD: 1.5,
    }
    assert on_chart[layout.STRATEGY_NORM_POST_CLIP] == pytest.approx(1.5, rel=1e-5)
    assert layout.THRESHOLD not in scalars  # Not drawn beside the L2 norms.
    l2 = layout.scalars_of({"grad_norm": 3.0, "clipped_grad_norm": 1.0, "threshold": 1.0})
    assert l2[layout.THRESHOLD] == 1.0 and layout.STRATEGY_NORM_THRESHOLD not in l2

"""Fixed-threshold strategies: properties, goldens, serialization, bad input."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_clip as kc
from keras_clip import ops

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
def test_post_clip_within_threshold_and_idempotent(strategy, mode):
    grads = _grads()
    variables = _vars(grads)

    def run(gs):
        return strategy.clip(gs, variables)

    if mode != "eager":
        run = tf.function(run, jit_compile=(mode == "xla"))
    clipped, stats = run(grads)
    assert _bound_holds(strategy, clipped)
    again, _ = run(clipped)
    for a, b in zip(clipped, again):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
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


def test_none_gradients_pass_through():
    grads = [None, tf.constant([3.0, 4.0])]
    clipped, stats = kc.ClipByGlobalNorm(1.0).clip(grads, _vars([tf.zeros([1]), grads[1]]))
    assert clipped[0] is None
    assert float(stats["grad_norm"]) == pytest.approx(5.0)


@pytest.mark.parametrize("strategy", list(_strategies()), ids=repr)
def test_indexed_slices_clipped_like_their_dense_value(strategy):
    values = tf.constant([[3.0, 4.0], [1.0, -2.0], [6.0, 0.5]])
    slices = tf.IndexedSlices(values, tf.constant([2, 0, 2]), tf.constant([4, 2]))
    dense = tf.convert_to_tensor(slices)
    other = tf.constant([0.5, -7.0])
    variables = _vars([dense, other])
    got, got_stats = strategy.clip([slices, other], variables)
    want, want_stats = strategy.clip([dense, other], variables)
    assert isinstance(got[0], tf.IndexedSlices)
    np.testing.assert_allclose(tf.convert_to_tensor(got[0]), want[0], rtol=1e-6)
    np.testing.assert_allclose(got_stats["grad_norm"], want_stats["grad_norm"], rtol=1e-6)


@pytest.mark.parametrize("strategy", list(_strategies()), ids=repr)
def test_config_round_trip(strategy):
    config = keras.saving.serialize_keras_object(strategy)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(strategy)
    assert restored.get_config() == strategy.get_config()
    assert kc.get(config).get_config() == strategy.get_config()
    assert type(strategy).from_config(strategy.get_config()).get_config() == strategy.get_config()


@pytest.mark.parametrize(
    "identifier, cls",
    [
        ("value", kc.ClipByValue),
        ("norm", kc.ClipByNorm),
        ("global_norm", kc.ClipByGlobalNorm),
        ("ClipByGlobalNorm", kc.ClipByGlobalNorm),
        ("ClipByValue", kc.ClipByValue),
    ],
)
def test_get_by_name_uses_threshold_one(identifier, cls):
    strategy = kc.get(identifier)
    assert type(strategy) is cls
    assert next(iter(strategy.get_config().values())) == 1.0


def test_get_none_and_instance():
    assert kc.get(None) is None
    s = kc.ClipByValue(2.0)
    assert kc.get(s) is s


def test_get_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"Valid names are \[.*'global_norm'.*\]. Received: clipping='globalnorm'"):
        kc.get("globalnorm")


def test_get_wrong_type():
    with pytest.raises(TypeError, match="Received: clipping=3.5 \\(of type float\\)"):
        kc.get(3.5)


def test_get_dict_of_another_object():
    with pytest.raises(ValueError, match="must describe a keras_clip strategy"):
        kc.get(keras.saving.serialize_keras_object(keras.optimizers.SGD()))


@pytest.mark.parametrize("bad", [-1.0, 0.0, math.inf, math.nan])
@pytest.mark.parametrize(
    "cls, arg", [(kc.ClipByNorm, "max_norm"), (kc.ClipByGlobalNorm, "max_norm"), (kc.ClipByValue, "clip_value")]
)
def test_bad_thresholds(cls, arg, bad):
    with pytest.raises(ValueError, match=f"`{arg}` must be a positive finite number. Received: {arg}={bad!r}"):
        cls(bad)


def test_bad_threshold_message_exact():
    with pytest.raises(ValueError) as info:
        kc.ClipByGlobalNorm(-1.0)
    assert str(info.value) == "`max_norm` must be a positive finite number. Received: max_norm=-1.0"


@pytest.mark.parametrize("bad", ["1.0", None, True, [1.0]])
def test_threshold_wrong_type(bad):
    with pytest.raises(TypeError, match="`max_norm` must be a number. Received: max_norm="):
        kc.ClipByNorm(bad)


def test_bad_norm_type_at_construction():
    with pytest.raises(ValueError, match="Received: norm_type=3"):
        kc.ClipByGlobalNorm(1.0, norm_type=3)


def test_mismatched_lengths():
    with pytest.raises(ValueError, match="same length"):
        kc.ClipByValue(1.0).clip([tf.constant(1.0)], [])

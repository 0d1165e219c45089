"""The contract every strategy keeps, checked for every strategy `keras_clip.get` knows by name.

The list of strategies is read from the registry, so a strategy registered later is checked too;
`test_every_strategy_class_is_checked` fails for a serializable strategy class left out.
"""

import inspect
import math
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_clip as kc
from keras_clip import ops
from keras_clip.strategies import registry

# Strategies that take other strategies have no default instance: one example each.
COMPOSITES = {
    "Chain": lambda: kc.Chain(kc.ClipByValue(5.0), kc.AutoClip()),
    "ByVariable": lambda: kc.ByVariable(
        {"embeddings": kc.ClipByNorm(5.0), "bias": None}, default=kc.Chain(kc.ZClip(), kc.ClipByGlobalNorm(2.0))
    ),
}
VARIANTS = {
    "ClipByNorm_l1": lambda: kc.ClipByNorm(1.0, norm_type=1),
    "ClipByGlobalNorm_inf": lambda: kc.ClipByGlobalNorm(1.0, norm_type="inf"),
}
FACTORIES = {
    **{name: (lambda name=name: kc.get(name)) for name in registry.registered_names()},
    **VARIANTS,
    **COMPOSITES,
}
NAMES = list(FACTORIES)
# Strategies that never see a summed gradient, with the suite that checks them instead.
OWN_CONTRACT = {"PerExampleClip": "tests/test_privacy.py: it clips each example inside the model's step"}
# Defaults whose warm-up outlasts SCALES: a short one, so that the XLA comparison reaches the skip.
SHORT_WARMUP = {"SkipSpikes": lambda: kc.SkipSpikes(0.5, window=4, warmup_steps=2)}
SCALES = [1.0, 3.0, 0.5, 9.0]  # One gradient direction at four sizes: the adaptive strategies clip the second.


def problem(scale=1.0, sparse=True):
    """An embedding (IndexedSlices gradient with a repeated index), a Dense kernel and a bias."""
    rng = np.random.default_rng(0)
    variables = [
        keras.Variable(rng.normal(size=(6, 3)).astype("float32"), name="embeddings"),
        keras.Variable(rng.normal(size=(3, 2)).astype("float32"), name="kernel"),
        keras.Variable(np.zeros(2, "float32"), name="bias"),
    ]
    slices = tf.IndexedSlices(
        tf.constant(rng.normal(size=(3, 3)) * 10 * scale, tf.float32), tf.constant([4, 1, 4]), tf.constant([6, 3])
    )
    grads = [
        slices if sparse else tf.convert_to_tensor(slices),
        tf.constant(rng.normal(size=(3, 2)) * 3 * scale, tf.float32),
        tf.constant([2.0 * scale, -7.0 * scale]),
    ]
    return variables, grads


def dense(grad):
    return tf.convert_to_tensor(grad).numpy()


def assert_same(got, want, stats_got, stats_want, rtol=1e-5):
    for a, b in zip(got, want):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(dense(a), dense(b), rtol=rtol, atol=1e-6)
    assert set(stats_got) == set(stats_want)
    for key in stats_want:
        np.testing.assert_allclose(float(stats_got[key]), float(stats_want[key]), rtol=rtol, atol=1e-6)


def test_every_strategy_class_is_checked():
    classes = {
        cls.__name__
        for cls in keras.saving.get_custom_objects().values()
        if inspect.isclass(cls) and issubclass(cls, kc.ClipStrategy) and cls.__module__.startswith("keras_clip.")
    }
    checked = {type(factory()).__name__ for factory in FACTORIES.values()}
    missing = sorted(classes - set(OWN_CONTRACT) - checked)
    assert not missing, f"Register a name (or add an example) for {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name):
    strategy = FACTORIES[name]()
    config = keras.saving.serialize_keras_object(strategy)
    for restored in (keras.saving.deserialize_keras_object(config), kc.get(config)):
        assert type(restored) is type(strategy) and restored is not strategy
        assert restored.get_config() == strategy.get_config()
        assert repr(restored) == repr(strategy)
    assert type(strategy).from_config(strategy.get_config()).get_config() == strategy.get_config()


@pytest.mark.parametrize("name", registry.registered_names())
def test_get_by_class_name_builds_a_fresh_instance(name):
    strategy = kc.get(name)
    assert type(strategy).__name__ == name
    assert kc.get(name) is not strategy  # A stateful strategy must not be shared by two models.


@pytest.mark.parametrize(
    "short, expected",
    [
        ("value", kc.ClipByValue(1.0)),
        ("norm", kc.ClipByNorm(1.0)),
        ("global_norm", kc.ClipByGlobalNorm(1.0)),
        ("agc", kc.AdaptiveGradClip(0.01)),
        ("autoclip", kc.AutoClip()),
        ("zclip", kc.ZClip()),
    ],
)
def test_get_by_short_name(short, expected):
    strategy = kc.get(short)
    assert type(strategy) is type(expected) and strategy.get_config() == expected.get_config()


def test_get_none_instance_and_bad_identifiers():
    assert kc.get(None) is None
    strategy = kc.ClipByValue(2.0)
    assert kc.get(strategy) is strategy
    with pytest.raises(ValueError, match=r"Valid names are \[.*'global_norm'.*\]. Received: clipping='globalnorm'"):
        kc.get("globalnorm")
    with pytest.raises(TypeError, match=r"Received: clipping=3.5 \(of type float\)"):
        kc.get(3.5)
    with pytest.raises(ValueError, match="must describe a keras_clip strategy"):
        kc.get(keras.saving.serialize_keras_object(keras.optimizers.SGD()))


def _bad_numeric_arguments():
    """(name, argument, bad value) for every numeric constructor argument of every named strategy."""
    for name in registry.registered_names():
        for key, value in kc.get(name).get_config().items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                for bad in (math.nan, "1"):
                    yield name, key, bad


@pytest.mark.parametrize("name, key, bad", list(_bad_numeric_arguments()))
def test_bad_numeric_argument_is_refused_naming_it(name, key, bad):
    config = kc.get(name).get_config()
    cls = type(kc.get(name))
    with pytest.raises((TypeError, ValueError), match=rf"`{key}` must .*Received: {key}={bad!r}"):
        cls(**{**config, key: bad})


# Range rules beyond "a number": the boundary values each side of the rule.
OUT_OF_RANGE = [
    (kc.ClipByValue, {"clip_value": 0.0}),
    (kc.ClipByValue, {"clip_value": math.inf}),
    (kc.ClipByNorm, {"max_norm": -1.0}),
    (kc.ClipByGlobalNorm, {"max_norm": 1.0, "norm_type": 3}),
    (kc.AdaptiveGradClip, {"clipping": 0.0}),
    (kc.AdaptiveGradClip, {"clipping": 0.1, "eps": 0.0}),
    (kc.AutoClip, {"percentile": -1.0}),
    (kc.AutoClip, {"percentile": 100.5}),
    (kc.AutoClip, {"history_size": 0}),
    (kc.ZClip, {"alpha": 0.0}),
    (kc.ZClip, {"alpha": 1.0}),
    (kc.ZClip, {"z_threshold": math.inf}),
    (kc.ZClip, {"warmup_steps": 0}),
    (kc.ZClip, {"max_norm": 0.0}),
    (kc.ZClip, {"eps": -1e-6}),
]


@pytest.mark.parametrize("cls, kwargs", OUT_OF_RANGE, ids=lambda x: getattr(x, "__name__", str(x)))
def test_out_of_range_argument_is_refused_naming_it(cls, kwargs):
    key, value = list(kwargs.items())[-1]
    with pytest.raises(ValueError, match=rf"`{key}` must .*Received: {key}={value!r}"):
        cls(**kwargs)


@pytest.mark.parametrize("bad", [[1], {"a": 1.0}, True])
def test_bad_argument_types_raise_type_error(bad):
    with pytest.raises(TypeError, match="Received: max_norm="):
        kc.ClipByGlobalNorm(bad)
    with pytest.raises(TypeError, match="Received: history_size="):
        kc.AutoClip(history_size=bad)


@pytest.mark.parametrize("name", NAMES)
def test_none_gradients_stay_none_and_change_nothing_else(name):
    variables, grads = problem()
    unused = [keras.Variable(np.ones(2, "float32"), name=f"unused_{i}") for i in range(2)]
    with_none = [None, grads[0], grads[1], None, grads[2]]
    got, got_stats = FACTORIES[name]().clip(with_none, [unused[0], *variables[:2], unused[1], variables[2]])
    want, want_stats = FACTORIES[name]().clip(grads, variables)
    assert got[0] is None and got[3] is None
    assert_same([got[1], got[2], got[4]], want, got_stats, want_stats)


@pytest.mark.parametrize("name", NAMES)
def test_indexed_slices_clipped_like_their_dense_value(name):
    variables, _ = problem()
    sparse_strategy, dense_strategy = FACTORIES[name](), FACTORIES[name]()
    for scale in SCALES:
        got, got_stats = sparse_strategy.clip(problem(scale)[1], variables)
        want, want_stats = dense_strategy.clip(problem(scale, sparse=False)[1], variables)
        assert isinstance(got[0], tf.IndexedSlices)
        assert_same(got, want, got_stats, want_stats)


@pytest.mark.parametrize("name", NAMES)
def test_xla_matches_eager_step_by_step(name):
    variables, _ = problem()
    factory = SHORT_WARMUP.get(type(FACTORIES[name]()).__name__, FACTORIES[name])
    eager, compiled = factory(), factory()
    step = tf.function(lambda g: compiled.clip(g, variables), jit_compile=True)
    clipped_steps = 0
    for scale in SCALES:
        grads = problem(scale)[1]
        want, want_stats = eager.clip(grads, variables)
        got, got_stats = step(grads)
        assert_same(got, want, got_stats, want_stats)
        clipped_steps += float(want_stats["clipped_grad_norm"]) < float(want_stats["grad_norm"]) * (1 - 1e-6)
        clipped_steps += bool(want_stats.get("skip", False))
    assert clipped_steps > 0  # The scenario clips (or skips): the comparison covers that path.
    for key, variable in eager.state.items():
        np.testing.assert_allclose(compiled.state[key].numpy(), variable.numpy(), rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_clipping_an_already_clipped_gradient(name):
    """Changes nothing for a strategy whose threshold depends only on its arguments and the weights.

    A stateful strategy (`state` not empty) sets its threshold from the norms it has seen, and a
    clipped gradient is a new, smaller norm for it: AutoClip's percentile moves with the history,
    ZClip's mean and variance move and its adaptive threshold shrinks as the z-score grows. For
    those the second clip only never makes the gradient larger.
    """
    variables, grads = problem(3.0)
    strategy = FACTORIES[name]()
    once, stats = strategy.clip(grads, variables)
    twice, again = strategy.clip(once, variables)
    if not strategy.state:
        for a, b in zip(once, twice):
            np.testing.assert_allclose(dense(a), dense(b), rtol=1e-5, atol=1e-6)
    assert float(again["grad_norm"]) == pytest.approx(float(stats["clipped_grad_norm"]), rel=1e-5)
    assert float(again["clipped_grad_norm"]) <= float(again["grad_norm"]) * (1 + 1e-6)


# The strategies that only multiply each gradient by a factor (a composite rescales when all its members do).
RESCALING = {"ClipByNorm", "ClipByGlobalNorm", "AutoClip", "ZClip", "AdaptiveGradClip", "AdaGC", "ClipByBlockRMS"}


def _only_rescales(strategy):
    members = [*getattr(strategy, "strategies", ()), *getattr(strategy, "rules", {}).values()]
    if isinstance(strategy, kc.ByVariable):
        members.append(strategy.default)
    if members:
        return all(m is None or _only_rescales(m) for m in members)
    return type(strategy).__name__ in RESCALING


@pytest.mark.parametrize("name", NAMES)
def test_rescale_gives_the_factors_clip_applies(name):
    """`rescale`'s factors times the (deduplicated) gradients are `clip`'s result, step after step, state too."""
    variables, _ = problem()
    factory = SHORT_WARMUP.get(type(FACTORIES[name]()).__name__, FACTORIES[name])
    strategy, twin = factory(), factory()
    assert strategy.rescales == _only_rescales(strategy)
    if not strategy.rescales:
        with pytest.raises(NotImplementedError, match="does not clip by rescaling: call `clip`"):
            strategy.rescale(problem()[1], variables)
        return
    for scale in SCALES:
        grads = problem(scale)[1]
        factors, stats = strategy.rescale(grads, variables)
        want, want_stats = twin.clip(grads, variables)
        got = [ops.deduplicate(g) if f is None else ops.scale(ops.deduplicate(g), f) for g, f in zip(grads, factors)]
        assert_same(got, want, stats, want_stats)
    for key, variable in twin.state.items():
        np.testing.assert_allclose(strategy.state[key].numpy(), variable.numpy(), rtol=1e-6)


def test_a_class_overriding_clip_present_does_not_rescale():
    class Halving(kc.ClipByGlobalNorm):
        def clip_present(self, grads, variables):
            clipped, stats = super().clip_present(grads, variables)
            return [ops.scale(g, 0.5) for g in clipped], stats

    assert kc.ClipByGlobalNorm(1.0).rescales and not Halving(1.0).rescales
    assert not kc.Chain(kc.ClipByGlobalNorm(1.0), Halving(1.0)).rescales


@pytest.mark.parametrize("name", NAMES)
def test_stats_are_float32_scalars_with_the_global_l2_norms(name):
    variables, grads = problem(3.0)
    clipped, stats = FACTORIES[name]().clip(grads, variables)
    assert {"grad_norm", "clipped_grad_norm"} <= set(stats)
    # A strategy that can skip an update says so with a boolean `skip`; every other figure is float32.
    assert all(v.dtype == (tf.bool if k == "skip" else tf.float32) and v.shape.rank == 0 for k, v in stats.items())
    np.testing.assert_allclose(float(stats["grad_norm"]), float(ops.global_norm(grads)), rtol=1e-5)
    np.testing.assert_allclose(float(stats["clipped_grad_norm"]), float(ops.global_norm(clipped)), rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_variables_are_optional_unless_the_strategy_reads_them(name):
    variables, grads = problem(3.0)
    strategy = FACTORIES[name]()
    if strategy.needs_variables:
        with pytest.raises(ValueError, match=r"`variables` must be given .*Received: variables=None"):
            strategy.clip(grads)
        return
    got, got_stats = strategy.clip(grads)
    want, want_stats = FACTORIES[name]().clip(grads, variables)
    assert_same(got, want, got_stats, want_stats)


@pytest.mark.parametrize("name", NAMES)
def test_plain_tf_variables_work(name):
    keras_variables, grads = problem(3.0)
    plain = [tf.Variable(v.numpy(), name=v.name) for v in keras_variables]
    got, got_stats = FACTORIES[name]().clip(grads, plain)
    want, want_stats = FACTORIES[name]().clip(grads, keras_variables)
    assert_same(got, want, got_stats, want_stats)


@pytest.mark.parametrize("name", NAMES)
def test_state_is_named_and_lists_the_variables(name):
    variables, grads = problem()
    strategy = FACTORIES[name]()
    strategy.clip(grads, variables)
    assert all(isinstance(key, str) for key in strategy.state)
    assert [id(v) for v in strategy.state.values()] == [id(v) for v in strategy.variables]
    assert all(not v.trainable for v in strategy.variables)


def test_mismatched_lengths():
    with pytest.raises(ValueError, match=r"same length. Received: len\(grads\)=1, len\(variables\)=0"):
        kc.ClipByValue(1.0).clip([tf.constant(1.0)], [])


def test_custom_strategy_page_runs_and_its_strategy_keeps_the_contract():
    """Runs the code of docs/custom-strategy.md as it stands, then checks the strategy it builds."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "custom-strategy.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    namespace: dict = {}
    exec(compile("\n".join(blocks), "custom-strategy.md", "exec"), namespace)
    strategy_lines = blocks[0][blocks[0].index("@keras") :].strip().splitlines()
    assert len(strategy_lines) < 30
    history, stats, counting = namespace["history"].history, namespace["stats"], namespace["counting"]
    assert all(post < pre for pre, post in zip(history["grad_norm"], history["clipped_grad_norm"]))
    assert float(stats["grad_norm"]) == pytest.approx(math.sqrt(12 * 25.0), rel=1e-6)
    assert float(stats["clipped_grad_norm"]) == pytest.approx(0.1 * math.sqrt(12), rel=1e-6)
    assert int(counting.state["clipped_steps"]) == 1

    make = lambda: namespace["ClipByRMS"](0.5)  # noqa: E731
    config = keras.saving.serialize_keras_object(make())
    assert kc.get(config).get_config() == {"max_rms": 0.5}
    with pytest.raises(ValueError, match="Received: max_rms=-1"):
        namespace["ClipByRMS"](-1)
    variables, grads = problem(3.0)
    got, got_stats = make().clip(grads)
    step = tf.function(lambda g: make().clip(g, variables), jit_compile=True)
    for other, other_stats in (make().clip(problem(3.0, sparse=False)[1]), step(grads)):
        assert_same(got, other, got_stats, other_stats)
    for g, c in zip(grads, got):  # Each gradient's RMS bounded by 0.5, reached where it was above.
        rms, clipped_rms = (np.sqrt(np.mean(dense(x).astype(np.float64) ** 2)) for x in (g, c))
        assert clipped_rms == pytest.approx(min(rms, 0.5), rel=1e-5)
    # The same strategy written as a rescaling: the same clip, and the model may defer the products.
    rescaling = namespace["RescaleByRMS"](0.5)
    assert rescaling.rescales and not make().rescales
    same, same_stats = rescaling.clip(grads)
    assert_same(same, got, same_stats, got_stats)

"""ClippingOptimizer: the clip site every training step ends in (fit, custom steps, tape loops)."""


import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_clip as kc
from keras_clip.callbacks.layout import POST_CLIP, PRE_CLIP
from tests.helpers import mlp, read_run, scalars, script_result, sgd


def _data(n=64, features=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    return x, (x @ rng.normal(size=(features, 1)) * 10).astype("float32")


def test_a_plain_keras_model_is_clipped_as_keras_clips_on_one_device():
    x, y = _data()
    ours = mlp(keras.Model)
    ours.compile(optimizer=kc.ClippingOptimizer(sgd(), kc.ClipByGlobalNorm(0.5)), loss="mse", jit_compile=True)
    ours.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    reference = mlp(keras.Model)
    reference.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, global_clipnorm=0.5), loss="mse")
    reference.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(ours.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    report = ours.optimizer.report()
    assert float(report.grad_norm) > 0.5
    assert float(report.clipped_grad_norm) == pytest.approx(0.5, rel=1e-5)


def test_it_passes_through_what_users_touch():
    inner = keras.optimizers.Adam(1e-3)
    optimizer = kc.ClippingOptimizer(inner, "global_norm")
    assert optimizer.inner_optimizer is inner and isinstance(optimizer.clipping, kc.ClipByGlobalNorm)
    optimizer.learning_rate = 5e-4
    assert float(inner.learning_rate) == pytest.approx(5e-4)
    model = mlp(keras.Model)
    optimizer.build(model.trainable_variables)
    assert optimizer.iterations is inner.iterations
    assert all(any(v is w for w in optimizer.variables) for v in inner.variables)


def test_bad_arguments_are_refused_at_construction():
    with pytest.raises(ValueError, match="Received: on_nonfinite='ignore'"):
        kc.ClippingOptimizer("sgd", on_nonfinite="ignore")
    with pytest.raises(ValueError, match="Remove `clipnorm=1.0`"):
        kc.ClippingOptimizer(keras.optimizers.SGD(clipnorm=1.0), kc.ClipByNorm(1.0))
    with pytest.raises(ValueError, match=r"Received: \['momentum'\]"):
        kc.ClippingOptimizer("sgd", momentum=0.9)


def test_config_round_trip_and_keras_file(tmp_path):
    x, y = _data()
    model = mlp(keras.Model)
    model.compile(optimizer=kc.ClippingOptimizer(sgd(), kc.AutoClip(history_size=50)), loss="mse")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    config = model.optimizer.get_config()
    clone = kc.ClippingOptimizer.from_config(config)
    assert clone.get_config() == config
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, kc.ClippingOptimizer)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    assert int(loaded.optimizer.iterations.numpy()) == 4


def test_report_is_a_typed_record_that_merges_into_logs():
    x, y = _data()
    model = mlp(keras.Model)
    model.compile(optimizer=kc.ClippingOptimizer(sgd(), kc.ClipByGlobalNorm(0.5)), loss="mse")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    report = model.optimizer.report()
    assert isinstance(report, kc.ClipReport)
    assert report.grad_norm.dtype == tf.float32 and report.nonfinite_steps.dtype == tf.int64
    assert float(report.figures["threshold"]) == 0.5
    assert set(report.logs("d_")) == {"d_grad_norm", "d_clipped_grad_norm", "d_nonfinite_steps"}


class OwnStep(kc.ClippingMixin, keras.Model):
    """A model whose own train_step updates through `self.optimizer` (the Keras guide's shape)."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = keras.ops.mean((self(x, training=True) - y) ** 2)
        self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        return {"loss": loss, **self.optimizer.report().logs()}


def test_a_custom_train_step_is_clipped_and_logged():
    x, y = _data()
    model = OwnStep()
    model.compile(optimizer=sgd(), clipping=kc.ClipByGlobalNorm(1e-3))
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert history["grad_norm"][-1] > 1e-3
    assert history["clipped_grad_norm"][-1] == pytest.approx(1e-3, rel=1e-5)


class Bypass(OwnStep):
    def compile(self, **kwargs):
        super().compile(**kwargs)
        self.other = keras.optimizers.SGD(0.01)

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = keras.ops.mean((self(x, training=True) - y) ** 2)
        self.other.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        return {"loss": loss}


def test_a_step_that_bypasses_the_clipping_optimizer_warns_once():
    x, y = _data()
    model = Bypass()
    model.compile(optimizer="sgd", clipping=kc.ClipByGlobalNorm(1.0))
    with pytest.warns(UserWarning, match=r"never handed gradients to `self.optimizer.apply"):
        model.fit(x, y, batch_size=16, epochs=2, verbose=0)


class TinyGAN(keras.Model):
    """Two optimizers, each a ClippingOptimizer with its own strategy (the DCGAN example's shape)."""

    def __init__(self):
        super().__init__()
        self.generator = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4)], name="generator")
        self.discriminator = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)], name="discriminator")

    def compile(self, d_optimizer, g_optimizer):
        super().compile()
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer
        self.bce = keras.losses.BinaryCrossentropy(from_logits=True)

    def train_step(self, real):
        noise = keras.random.normal((tf.shape(real)[0], 2), seed=1)
        with tf.GradientTape() as tape:
            fake = self.generator(noise)
            logits = self.discriminator(keras.ops.concatenate([fake, real]))
            half = logits[: tf.shape(real)[0]]
            d_loss = self.bce(keras.ops.concatenate([keras.ops.ones_like(half), keras.ops.zeros_like(half)]), logits)
        weights = self.discriminator.trainable_variables
        self.d_optimizer.apply(tape.gradient(d_loss, weights), weights)
        with tf.GradientTape() as tape:
            judged = self.discriminator(self.generator(noise))
            g_loss = self.bce(keras.ops.zeros_like(judged), judged)
        weights = self.generator.trainable_variables
        self.g_optimizer.apply(tape.gradient(g_loss, weights), weights)
        return {"d_loss": d_loss, "g_loss": g_loss}


def test_a_gan_with_two_clipping_optimizers_is_clipped_and_logged(tmp_path):
    real = _data(n=64)[0] * 10
    gan = TinyGAN()
    gan.compile(
        d_optimizer=kc.ClippingOptimizer(keras.optimizers.Adam(1e-3), kc.ClipByGlobalNorm(1e-3)),
        g_optimizer=kc.ClippingOptimizer(keras.optimizers.Adam(1e-3), kc.ClipByValue(1e-4)),
    )
    gan.fit(real, batch_size=16, epochs=2, verbose=0, callbacks=[kc.GradientNormLogger(tmp_path)])
    events = read_run(tmp_path)
    d_post = [v for _, v in scalars(events, "d_optimizer/" + POST_CLIP)]
    d_pre = [v for _, v in scalars(events, "d_optimizer/" + PRE_CLIP)]
    g_pre = [s for s, _ in scalars(events, "g_optimizer/" + PRE_CLIP)]
    assert len(d_post) == len(g_pre) == 8  # one point per update of each
    assert max(d_post) <= 1e-3 * (1 + 1e-5) < min(d_pre)
    g_report = gan.g_optimizer.report()
    assert float(g_report.clipped_grad_norm) < float(g_report.grad_norm)
    assert gan.d_optimizer.clipping is not gan.g_optimizer.clipping


def _tape_step(model, optimizer, jit):
    @tf.function(jit_compile=jit)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = keras.ops.mean((model(x, training=True) - y) ** 2)
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    return step


def test_an_embedding_gradient_is_sorted_once_per_update():
    """The optimizer de-duplicates the slices; the strategy and each Chain member do not sort them again."""
    table = keras.Variable(np.ones((50, 4), "float32"))
    optimizer = kc.ClippingOptimizer(sgd(), kc.Chain(kc.ClipByValue(0.5), kc.ClipByGlobalNorm(1.0)))
    optimizer.build([table])

    @tf.function
    def update(values, indices):
        optimizer.apply([tf.IndexedSlices(values, indices, tf.constant([50, 4], tf.int64))], [table])

    values, indices = tf.ones((6, 4)), tf.constant([3, 7, 3, 1, 7, 3], tf.int64)
    graph = update.get_concrete_function(values, indices).graph
    sorts = [op for op in graph.get_operations() if op.type in ("TopKV2", "Sort")]
    body_sorts = sum(
        op.type in ("TopKV2", "Sort") for f in graph._functions.values() for op in f.graph.get_operations()
    )
    assert len(sorts) + body_sorts == 1
    update(values, indices)
    # Row 3 sums three rows of ones (3), clipped to 0.5; rows 1, 3, 7 then hold 0.5 each: norm sqrt(3).
    np.testing.assert_allclose(table.numpy()[3], 1 - 0.01 * 0.5 / np.sqrt(3), rtol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_a_gradient_tape_loop_equals_tf_clip_by_global_norm(jit):
    x, y = _data()
    ours, reference = mlp(keras.Model), mlp(keras.Model)
    optimizer = kc.ClippingOptimizer(sgd(), kc.ClipByGlobalNorm(0.5))
    plain = sgd()
    step = _tape_step(ours, optimizer, jit)

    @tf.function(jit_compile=jit)
    def reference_step(x, y):
        with tf.GradientTape() as tape:
            loss = keras.ops.mean((reference(x, training=True) - y) ** 2)
        grads, _ = tf.clip_by_global_norm(tape.gradient(loss, reference.trainable_variables), 0.5)
        plain.apply(grads, reference.trainable_variables)

    for i in range(0, 64, 16):
        step(x[i : i + 16], y[i : i + 16])
        reference_step(x[i : i + 16], y[i : i + 16])
    for a, b in zip(ours.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(optimizer.report().clipped_grad_norm) == pytest.approx(0.5, rel=1e-5)


def test_a_loss_scale_optimizer_around_it_gives_unscaled_norms():
    x, y = _data()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = mlp(keras.Model)
        optimizer = keras.optimizers.LossScaleOptimizer(kc.ClippingOptimizer(sgd(), kc.ClipByGlobalNorm(0.5)))
        model.compile(optimizer=optimizer, loss="mse")
        model.fit(x, y / 100, batch_size=16, epochs=1, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    report = optimizer.inner_optimizer.report()
    assert 0.5 < float(report.grad_norm) < 1e3  # not multiplied by the 32768 loss scale
    assert float(report.clipped_grad_norm) == pytest.approx(0.5, rel=1e-3)


@pytest.fixture(scope="module")
def tape_loops():
    return script_result("tape_loop_run.py", timeout=300)


@pytest.mark.slow
def test_a_tape_loop_under_mirrored_strategy_equals_one_device(tape_loops):
    result = tape_loops["plain"]
    assert result["single"][0] > 1.0  # the clip is exercised
    assert result["max_abs_diff"] < 1e-5, result
    assert result["mirrored"] == pytest.approx(result["single"], rel=1e-5)
    assert result["all_reduce_calls"] == [4, 4]  # one all-reduce per replica's step, all 4 gradients


@pytest.mark.slow
def test_an_overflow_on_one_replica_skips_the_update_on_both(tape_loops):
    """A LossScaleOptimizer inside, mixed_float16: replica 1 alone overflows in the second step."""
    result = tape_loops["scaled"]
    _, clipped, nonfinite, scale, iterations = result["mirrored"]
    assert nonfinite >= 1 and clipped == pytest.approx(1.0, rel=1e-3)
    assert (scale, iterations) == (2.0**10 / 2**nonfinite, 4 - nonfinite)  # each overflow: one skip, scale halved
    assert result["mirrored"][2:] == result["single"][2:]  # the same steps skipped as on one device
    assert result["max_abs_diff"] < 1e-3, result  # float16 weights
    assert result["all_reduce_calls"] == [4, 4]

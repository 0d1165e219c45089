"""The three model flavours, and what Keras's own train_step supports."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_clip as kc
from keras_clip import ops
from tests.helpers import mlp, sgd


class MixinNet(kc.ClippingMixin, keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.unused = keras.layers.Dense(3)  # built but never in the loss: its gradient is None
        self.out = keras.layers.Dense(1)

    def build(self, input_shape):
        self.hidden.build(input_shape)
        self.unused.build(input_shape)
        self.out.build((None, 8))

    def call(self, x):
        return self.out(self.hidden(x))


def _fit(model, data, **compile_kwargs):
    x, y = data
    compile_kwargs.setdefault("optimizer", "sgd")
    model.compile(loss="mse", **compile_kwargs)
    return model.fit(x, y, batch_size=16, epochs=1, verbose=0).history


@pytest.mark.parametrize("jit", [False, True])
def test_mixin_subclass_with_unused_variable(small_data, jit):
    model = MixinNet()
    model.build((None, 4))
    before = [w.copy() for w in model.unused.get_weights()]
    missing = r"Gradients do not exist for variables \['mixin_net[_0-9]*/dense[_0-9]*/kernel'"
    with pytest.warns(UserWarning, match=missing):
        history = _fit(model, small_data, clipping=kc.ClipByGlobalNorm(0.1), jit_compile=jit)
    assert history["clipped_grad_norm"][-1] <= 0.1 + 1e-6
    for a, b in zip(before, model.unused.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_run_eagerly(small_data):
    history = _fit(mlp(), small_data, clipping=kc.ClipByGlobalNorm(0.1), run_eagerly=True)
    assert history["clipped_grad_norm"][-1] <= 0.1 + 1e-6


@pytest.mark.parametrize("jit", [False, True])
def test_models_built_on_first_use(small_data, jit):
    sequential = kc.ClippingSequential([keras.layers.Dense(4), keras.layers.Dense(1)])
    history = _fit(sequential, small_data, clipping=kc.ClipByGlobalNorm(0.1), jit_compile=jit)
    assert history["clipped_grad_norm"][-1] <= 0.1 + 1e-6
    subclassed = MixinNet()
    with pytest.warns(UserWarning, match="Gradients do not exist"):  # its `unused` layer
        history = _fit(subclassed, small_data, clipping=kc.ClipByGlobalNorm(0.1), jit_compile=jit)
    assert history["clipped_grad_norm"][-1] <= 0.1 + 1e-6


def test_sequential(small_data):
    model = kc.ClippingSequential([keras.Input((4,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)])
    history = _fit(model, small_data, clipping="global_norm")
    assert set(history) == {"loss", "grad_norm", "clipped_grad_norm", "nonfinite_steps"}


def test_functional_multi_input_dict_outputs_sample_weights_metrics():
    rng = np.random.default_rng(0)
    a_in, b_in = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    merged = keras.layers.Concatenate()([a_in, b_in])
    outputs = {
        "reg": keras.layers.Dense(1, name="reg")(merged),
        "cls": keras.layers.Dense(1, activation="sigmoid", name="cls")(merged),
    }
    model = kc.ClippingModel({"a": a_in, "b": b_in}, outputs)
    model.compile(
        optimizer="adam",
        loss={"reg": "mse", "cls": "binary_crossentropy"},
        metrics={"cls": ["accuracy"]},
        clipping=kc.ClipByNorm(0.5),
        jit_compile=True,
    )
    x = {"a": rng.normal(size=(32, 3)).astype("float32"), "b": rng.normal(size=(32, 2)).astype("float32")}
    y = {"reg": rng.normal(size=(32, 1)).astype("float32") * 10, "cls": (rng.random((32, 1)) > 0.5).astype("float32")}
    weights = {"reg": rng.random(32).astype("float32"), "cls": np.ones(32, "float32")}
    history = model.fit(x, y, sample_weight=weights, batch_size=8, epochs=2, verbose=0).history
    assert "cls_accuracy" in history and "grad_norm" in history
    assert np.isfinite(history["loss"]).all()


def test_sample_weights_change_the_gradient(small_data):
    x, y = small_data
    norms = []
    for sw in (np.ones(len(x), "float32"), np.full(len(x), 3.0, "float32")):
        keras.utils.set_random_seed(0)
        model = mlp()
        model.compile(optimizer="sgd", loss="mse", clipping=None)
        norms.append(model.fit(x, y, sample_weight=sw, batch_size=64, epochs=1, verbose=0).history["grad_norm"][0])
    assert norms[1] == pytest.approx(3 * norms[0], rel=1e-4)


@pytest.mark.parametrize("jit", [False, True])
def test_embedding_gradient_stays_sparse_and_is_clipped_exactly(jit):
    tokens = np.array([[1, 1, 2, 1], [3, 1, 2, 2]], "int32")  # repeated tokens: repeated slice indices
    y = np.array([[50.0], [-40.0]], "float32")
    inputs = keras.Input((4,), dtype="int32")
    emb = keras.layers.Embedding(10, 3, name="embedding")(inputs)
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(emb))
    model = kc.ClippingModel(inputs, outputs)
    seen = {}

    class Spy(kc.ClipByNorm):
        def clip_present(self, grads, variables):
            seen["kinds"] = [type(g).__name__ for g in grads]
            return super().clip_present(grads, variables)

    model.compile(optimizer="sgd", loss="mse", clipping=Spy(0.1), jit_compile=jit)
    before = model.get_layer("embedding").get_weights()[0].copy()
    model.fit(tokens, y, batch_size=2, epochs=1, verbose=0)
    assert seen["kinds"][0] == "IndexedSlices"
    # SGD(0.01): the embedding moved by exactly lr * clipped gradient, whose norm is 0.1.
    delta = model.get_layer("embedding").get_weights()[0] - before
    assert np.linalg.norm(delta) == pytest.approx(0.01 * 0.1, rel=1e-4)
    assert np.count_nonzero(np.abs(delta).sum(axis=1)) == 3  # only rows 1, 2, 3 moved


@pytest.mark.parametrize("clipping", [None, "global_norm"])  # global_norm: the hook wins over a strategy's factors.
def test_clip_gradients_hook_can_be_overridden(small_data, clipping):
    calls = []

    class Halving(kc.ClippingOptimizer):
        def clip_gradients(self, grads, variables):
            calls.append(len(grads))
            halved = [ops.scale(g, tf.constant(0.5)) for g in grads]
            norm = ops.global_norm(grads)
            return halved, {"grad_norm": norm, "clipped_grad_norm": norm / 2}

    model = mlp()
    history = _fit(model, small_data, optimizer=Halving(sgd(), clipping))
    assert calls and history["clipped_grad_norm"][0] == pytest.approx(history["grad_norm"][0] / 2)


def test_a_clip_hook_left_on_the_model_is_refused():
    class OldStyle(kc.ClippingModel):
        def clip_gradients(self, grads, variables):
            return grads, {}

    with pytest.raises(TypeError, match="a subclass of `keras_clip.ClippingOptimizer`"):
        mlp(OldStyle).compile(optimizer="sgd", loss="mse")


def test_compile_refuses_optimizer_clipping():
    model = mlp()
    with pytest.raises(ValueError, match=r"\(`global_clipnorm=1.0`\).*Remove `global_clipnorm=1.0` from the optimizer"):
        model.compile(optimizer=keras.optimizers.Adam(global_clipnorm=1.0), loss="mse", clipping="global_norm")
    with pytest.raises(ValueError, match="`clipvalue=0.5`"):
        model.compile(keras.optimizers.SGD(clipvalue=0.5), "mse", clipping=kc.ClipByNorm(1.0))
    # Monitoring only: the optimizer's own clip is allowed.
    model.compile(optimizer=keras.optimizers.SGD(clipnorm=1.0), loss="mse", clipping=None)


def test_compile_bad_arguments_fail_before_changing_the_model():
    model = mlp()
    model.compile(optimizer="sgd", loss="mse", clipping="value")
    optimizer = model.optimizer
    with pytest.raises(
        ValueError,
        match=r"`on_nonfinite` must be one of .*'propagate'\]. Received: on_nonfinite='ignore'",
    ):
        model.compile(optimizer="adam", loss="mse", on_nonfinite="ignore")
    with pytest.raises(ValueError, match="Valid names are"):
        model.compile(optimizer="adam", loss="mse", clipping="nope")
    assert model.optimizer is optimizer and isinstance(model.clipping, kc.ClipByValue)


def test_functional_and_subclassed_clipping_models_in_one_process_in_either_order(small_data):
    class Net(kc.ClippingModel):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            return self.dense(x)

    for build in ("subclassed", "functional", "subclassed"):
        model = Net() if build == "subclassed" else mlp()
        history = _fit(model, small_data, clipping=kc.ClipByGlobalNorm(0.1))
        assert history["clipped_grad_norm"][-1] <= 0.1 + 1e-6, build
    assert kc.ClippingModel.__bases__ == (kc.ClippingMixin, keras.Model)  # never rewritten by Keras

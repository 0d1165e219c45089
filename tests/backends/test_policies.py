"""`on_nonfinite`, the figures and a custom step, on the active backend."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops as K

import keras_clip as kc


def _model(clipping=None, on_nonfinite="skip"):
    inputs = keras.Input((3,))
    model = kc.ClippingModel(inputs, keras.layers.Dense(1, name="out")(inputs))
    model.set_weights([np.array([[0.5], [-1.0], [2.0]], "float32"), np.array([0.1], "float32")])
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse", clipping=clipping, on_nonfinite=on_nonfinite
    )
    return model


def _data(bad: bool):
    x = np.ones((4, 3), "float32")
    y = np.full((4, 1), np.inf if bad else 10.0, "float32")
    return x, y


def _state(model):
    return [np.array(K.convert_to_numpy(v)) for v in [*model.weights, *model.optimizer.variables]]


def _iterations(model):
    return int(K.convert_to_numpy(model.optimizer.iterations))


def test_skip_leaves_weights_slots_and_counter():
    model = _model(kc.ClipByGlobalNorm(1.0))
    model.fit(*_data(False), batch_size=4, epochs=1, verbose=0)
    before, iterations = _state(model), _iterations(model)
    history = model.fit(*_data(True), batch_size=4, epochs=1, verbose=0)
    assert history.history["nonfinite_steps"] == [1.0]
    assert _iterations(model) == iterations == 1
    after = _state(model)
    changed = [i for i, (a, b) in enumerate(zip(before, after)) if not np.array_equal(a, b)]
    # Only the figures (the non-finite count and the norms measured) may change.
    names = [v.path for v in [*model.weights, *model.optimizer.variables]]
    assert all("grad_norm" in names[i] or "nonfinite" in names[i] or "figures" in names[i] for i in changed), [
        names[i] for i in changed
    ]


def test_propagate_applies_the_nonfinite_update():
    model = _model(kc.ClipByGlobalNorm(1.0), on_nonfinite="propagate")
    model.fit(*_data(True), batch_size=4, epochs=1, verbose=0)
    assert not np.all(np.isfinite(K.convert_to_numpy(model.weights[0])))
    assert _iterations(model) == 1


def test_zero_goes_on_with_a_zero_gradient():
    model = _model(None, on_nonfinite="zero")
    kernel = K.convert_to_numpy(model.weights[0]).copy()
    model.fit(*_data(True), batch_size=4, epochs=1, verbose=0)
    np.testing.assert_array_equal(K.convert_to_numpy(model.weights[0]), kernel)  # All entries were NaN: zeroed.
    assert _iterations(model) == 1


def test_raise_after_the_skipped_step():
    model = _model(kc.ClipByGlobalNorm(1.0), on_nonfinite="raise")
    kernel = K.convert_to_numpy(model.weights[0]).copy()
    with pytest.raises(kc.NonFiniteGradientError):
        model.fit(*_data(True), batch_size=4, epochs=1, verbose=0)
    np.testing.assert_array_equal(K.convert_to_numpy(model.weights[0]), kernel)
    assert _iterations(model) == 0


def test_figures_in_history_and_report():
    model = _model(kc.ClipByGlobalNorm(1.0))
    history = model.fit(*_data(False), batch_size=4, epochs=2, verbose=0)
    grad_norm, clipped = history.history["grad_norm"], history.history["clipped_grad_norm"]
    assert grad_norm[0] > 1.0 and clipped == pytest.approx([1.0, 1.0])
    report = model.optimizer.report()
    assert float(K.convert_to_numpy(report.clipped_grad_norm)) == pytest.approx(1.0)
    assert float(K.convert_to_numpy(report.figures["threshold"])) == 1.0


def test_sequential_and_a_subclassed_mixin_model():
    x, y = _data(False)
    sequential = kc.ClippingSequential([keras.Input((3,)), keras.layers.Dense(1)])
    sequential.compile(optimizer="sgd", loss="mse", clipping=kc.ClipByGlobalNorm(0.5))

    class Net(kc.ClippingMixin, keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net.compile(optimizer="sgd", loss="mse", clipping=kc.ClipByGlobalNorm(0.5))
    for model in (sequential, net):
        history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
        assert history.history["clipped_grad_norm"] == pytest.approx([0.5, 0.5])


def test_a_custom_train_step_through_apply():
    """PyTorch and TensorFlow: a step of one's own hands its gradients to `optimizer.apply`.

    JAX's own step is stateless: docs/custom-steps.md's example, run by tests/test_docs_jax_step.py.
    """
    gradients = _gradient_function()

    class Own(keras.Model):
        def train_step(self, *args):
            if keras.backend.backend() == "jax":
                return super().train_step(*args)
            x, y = args[0]
            grads, loss = gradients(self, x, y)
            self.optimizer.apply(grads, self.trainable_variables)
            return {"loss": loss, **self.optimizer.report().logs()}

    inputs = keras.Input((3,))
    model = Own(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=kc.ClippingOptimizer(keras.optimizers.SGD(0.1), kc.ClipByGlobalNorm(0.5)), loss="mse")
    model.fit(*_data(False), batch_size=4, epochs=2, verbose=0)
    report = model.optimizer.report()
    assert float(K.convert_to_numpy(report.grad_norm)) > 0.5
    assert float(K.convert_to_numpy(report.clipped_grad_norm)) == pytest.approx(0.5)
    assert _iterations(model) == 2


def _gradient_function():
    backend = keras.backend.backend()
    if backend == "torch":

        def torch_gradients(model, x, y):
            model.zero_grad()
            loss = model.compute_loss(x, y, model(x, training=True))
            loss.backward()
            return [v.value.grad for v in model.trainable_variables], loss

        return torch_gradients
    if backend == "tensorflow":
        import tensorflow as tf

        def tf_gradients(model, x, y):
            with tf.GradientTape() as tape:
                loss = model.compute_loss(x, y, model(x, training=True))
            return tape.gradient(loss, model.trainable_variables), loss

        return tf_gradients
    return None


@pytest.mark.parametrize(
    "clipping, inside",
    [(kc.ClipByGlobalNorm(1.0), True), (kc.Chain(kc.ClipByValue(5.0), kc.ClipByGlobalNorm(1.0)), False)],
)
def test_a_rescaling_strategy_multiplies_inside_the_update(monkeypatch, clipping, inside):
    """Factors from `rescale`, products formed in the conditional update (where XLA fuses them); else before it."""
    from keras_clip import ops
    from keras_clip.training import optimizer as optimizer_module

    where, in_update = [], [False]
    run_if, scale = optimizer_module.distribute.run_if, ops.scale

    def recording_run_if(pred, fn):
        def marked():
            in_update[0] = True
            try:
                fn()
            finally:
                in_update[0] = False

        run_if(pred, marked)

    monkeypatch.setattr(optimizer_module.distribute, "run_if", recording_run_if)
    monkeypatch.setattr(ops, "scale", lambda g, f: where.append(in_update[0]) or scale(g, f))
    model = _model(clipping)
    model.fit(*_data(False), batch_size=4, epochs=1, verbose=0)
    assert clipping.rescales is inside
    assert where and set(where) == {inside}
    # Clipped all the same: the update's gradient has the bounded norm.
    assert model.history.history["clipped_grad_norm"][0] == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("clipping", [kc.ClipByGlobalNorm(1.0), kc.AutoClip()])
def test_a_gradient_whose_squares_overflow_is_clipped_by_its_true_norm(clipping):
    """Entries of 3e20: the float32 sum of squares overflows, the norm (6e20) does not; nothing is skipped."""
    inputs = keras.Input((3,))
    model = kc.ClippingModel(inputs, keras.layers.Dense(1)(inputs))
    weights = [np.array([[0.5], [-1.0], [2.0]], "float32"), np.array([0.1], "float32")]
    model.set_weights(weights)
    # d(loss)/d(each weight) = 3e20 for inputs of ones.
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=lambda y, p: K.mean(p) * 3e20, clipping=clipping)
    history = model.fit(*_data(False), batch_size=4, epochs=1, verbose=0).history
    assert history["nonfinite_steps"] == [0.0]
    assert history["grad_norm"][0] == pytest.approx(6e20, rel=1e-5)
    assert _iterations(model) == 1
    # ClipByGlobalNorm(1): each entry 3e20 / 6e20; AutoClip's first step is not clipped.
    step = 0.5 if isinstance(clipping, kc.ClipByGlobalNorm) else 3e20
    for got, before in zip(model.get_weights(), weights):
        np.testing.assert_allclose(got, before - 0.1 * step, rtol=1e-5)
    if isinstance(clipping, kc.AutoClip):  # The true norm went into the history, once.
        assert int(K.convert_to_numpy(clipping.state["count"])) == 1
        assert float(K.convert_to_numpy(clipping.state["history"])[0]) == pytest.approx(6e20, rel=1e-5)

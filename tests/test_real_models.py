"""The mixin on models it did not write: a keras_hub task built from a config, parents with their own defaults."""

import keras
import numpy as np
import pytest

import keras_clip as kc

pytestmark = pytest.mark.slow  # a keras_hub model


def test_a_keras_hub_causal_lm_keeps_its_own_default_optimizer_and_is_clipped():
    keras_hub = pytest.importorskip("keras_hub")

    class LM(kc.ClippingMixin, keras_hub.models.GPT2CausalLM):
        pass

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16, max_sequence_length=16
    )
    lm = LM(backbone=backbone, preprocessor=None)
    lm.compile(clipping=kc.ClipByGlobalNorm(1e-3))  # the parent's compile() picks the optimizer
    inner = lm.optimizer.inner_optimizer
    assert type(inner) is keras.optimizers.Adam and float(inner.learning_rate) == pytest.approx(2e-5)
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(0, 50, (4, 16)), "padding_mask": np.ones((4, 16), bool)}
    history = lm.fit(x, rng.integers(0, 50, (4, 16)), batch_size=2, epochs=1, shuffle=False, verbose=0).history
    assert history["grad_norm"][-1] > 1e-3
    assert history["clipped_grad_norm"][-1] == pytest.approx(1e-3, rel=1e-4)


class _Parent(keras.Model):
    """A parent whose compile() has its own default, as keras_hub tasks do ("auto")."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)

    def call(self, x):
        return self.dense(x)

    def compile(self, optimizer="auto", **kwargs):
        if optimizer == "auto":
            optimizer = self.default_optimizer()
        super().compile(optimizer=optimizer, loss="mse", **kwargs)

    def default_optimizer(self):
        return keras.optimizers.Adam(2e-5)


class Child(kc.ClippingMixin, _Parent):
    pass


class ClippingParent(_Parent):
    def default_optimizer(self):
        return keras.optimizers.AdamW(1e-4, clipnorm=1.0)  # keras_hub's image-to-image default


class ClippingChild(kc.ClippingMixin, ClippingParent):
    pass


def test_the_parents_auto_default_is_passed_through():
    child = Child()
    child.compile(optimizer="auto", clipping="global_norm")
    assert float(child.optimizer.inner_optimizer.learning_rate) == pytest.approx(2e-5)


def test_a_parent_default_that_clips_asks_for_an_explicit_optimizer():
    with pytest.raises(ValueError, match=r"`clipnorm=1.0`.*pass an explicit optimizer"):
        ClippingChild().compile(clipping="global_norm")
    model = ClippingChild()
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), clipping="global_norm")  # the fix it names
    assert type(model.optimizer.inner_optimizer) is keras.optimizers.AdamW

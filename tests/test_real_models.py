"""The mixin on parents with their own compile() defaults (a keras_hub task: tests/backends/test_keras_hub.py)."""

import keras
import pytest

import keras_clip as kc


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

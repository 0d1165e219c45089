"""The mixin on a model it did not write, on every backend: a keras_hub task built from a config."""

import keras
import keras_hub
import numpy as np
import pytest

import keras_clip as kc

pytestmark = pytest.mark.slow  # a keras_hub model


def test_a_keras_hub_causal_lm_keeps_its_own_default_optimizer_and_is_clipped():
    class LM(kc.ClippingMixin, keras_hub.models.GPT2CausalLM):
        pass

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16, max_sequence_length=16
    )
    lm = LM(backbone=backbone, preprocessor=None)
    lm.compile(clipping=kc.ClipByGlobalNorm(1e-3))  # the parent's compile() picks the optimizer
    inner = lm.optimizer.inner_optimizer
    assert isinstance(inner, keras.optimizers.Adam) and float(inner.learning_rate) == pytest.approx(2e-5)
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(0, 50, (4, 16)), "padding_mask": np.ones((4, 16), bool)}
    history = lm.fit(x, rng.integers(0, 50, (4, 16)), batch_size=2, epochs=1, shuffle=False, verbose=0).history
    assert history["grad_norm"][-1] > 1e-3
    assert history["clipped_grad_norm"][-1] == pytest.approx(1e-3, rel=1e-4)

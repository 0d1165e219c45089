"""The seed article's experiment: no clipping diverges, clipping converges."""

import keras
import numpy as np
import pytest

import keras_clip as kc
from keras_clip.experiments import problems


def _run(data, clipping):
    keras.utils.set_random_seed(1)
    x, y = data
    model = problems.seed_model()  # Dense(25, relu) -> Dense(1)
    model.compile(
        optimizer=keras.optimizers.SGD(0.07, momentum=0.8),
        loss="mse",
        clipping=clipping,
        on_nonfinite="propagate",
        jit_compile=True,
    )
    return model.fit(x, y, batch_size=128, epochs=50, verbose=0).history


def test_without_clipping_the_loss_turns_nan(seed_data):
    history = _run(seed_data, None)
    assert np.isnan(history["loss"][-1])
    assert history["nonfinite_steps"][-1] > 0


@pytest.mark.parametrize(
    "clipping, final_below", [(kc.ClipByValue(1.0), 500.0), (kc.ClipByGlobalNorm(1.0), 20.0)], ids=repr
)
def test_with_clipping_it_converges(seed_data, clipping, final_below):
    history = _run(seed_data, clipping)
    losses = history["loss"]
    assert np.isfinite(losses).all()
    assert losses[-1] < final_below < losses[0]
    assert history["nonfinite_steps"][-1] == 0
    assert max(history["grad_norm"]) > 1.0  # the clip was active

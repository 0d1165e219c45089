"""Ready-made clipping models: functional and sequential."""

from __future__ import annotations

import keras

from keras_clip.training.mixin import ClippingMixin


@keras.saving.register_keras_serializable(package="keras_clip")
class ClippingModel(ClippingMixin, keras.Model):
    """A `keras.Model` whose `compile()` takes `clipping=` and `on_nonfinite=`.

    Build it like `keras.Model`: functionally (`ClippingModel(inputs,
    outputs)`) or by subclassing it. See `ClippingMixin` for the step.

    Example:

    ```python
    inputs = keras.Input((20,))
    hidden = keras.layers.Dense(25, activation="relu")(inputs)
    model = keras_clip.ClippingModel(inputs, keras.layers.Dense(1)(hidden))
    model.compile(optimizer="sgd", loss="mse", clipping=keras_clip.ClipByGlobalNorm(1.0))
    history = model.fit(x, y)
    history.history["grad_norm"]
    ```
    """


@keras.saving.register_keras_serializable(package="keras_clip")
class ClippingSequential(ClippingMixin, keras.Sequential):
    """A `keras.Sequential` whose `compile()` takes `clipping=` and `on_nonfinite=`.

    Example:

    ```python
    model = keras_clip.ClippingSequential([keras.Input((20,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", clipping="global_norm")
    ```
    """

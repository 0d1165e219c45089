"""Small model builders shared by the tests."""

import keras

import keras_clip as kc


def mlp(cls=kc.ClippingModel, features=4, hidden=8, seed=0):
    """Dense(hidden, relu) -> Dense(1), deterministic initial weights."""
    inputs = keras.Input((features,))
    init = keras.initializers.GlorotUniform(seed=seed)
    h = keras.layers.Dense(hidden, activation="relu", kernel_initializer=init, name="hidden")(inputs)
    outputs = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1), name="out")(h)
    return cls(inputs, outputs)


def sgd():
    return keras.optimizers.SGD(0.01, momentum=0.9)

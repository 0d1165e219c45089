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


def seed_model(clipping=None, lr=0.07, steps_per_execution=1, jit_compile=True, on_nonfinite="skip"):
    """The seed experiment's model: Dense(25, relu) -> Dense(1), SGD(lr, momentum 0.8), MSE, compiled."""
    inputs = keras.Input((20,))
    hidden = keras.layers.Dense(25, activation="relu", name="hidden")(inputs)
    model = kc.ClippingModel(inputs, keras.layers.Dense(1, name="out")(hidden))
    model.compile(
        optimizer=keras.optimizers.SGD(lr, momentum=0.8),
        loss="mse",
        clipping=clipping,
        on_nonfinite=on_nonfinite,
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    return model

"""Models, data and the loop-over-examples reference for the per-example clipping tests."""

import keras
import numpy as np
import tensorflow as tf

import keras_clip as kc

BATCH = 8


def build_model(cls=kc.ClippingModel, seed=0):
    """Embedding -> LayerNormalization and Conv2D branches -> Dense(8, tanh) -> Dense(3)."""
    keras.utils.set_random_seed(seed)
    ids = keras.Input((5,), dtype="int32", name="ids")
    image = keras.Input((6, 6, 1), name="image")
    e = keras.layers.Embedding(11, 4)(ids)
    e = keras.layers.Flatten()(keras.layers.LayerNormalization()(e))
    c = keras.layers.Flatten()(keras.layers.Conv2D(2, 3, activation="relu")(image))
    h = keras.layers.Dense(8, activation="tanh")(keras.layers.Concatenate()([e, c]))
    return cls([ids, image], keras.layers.Dense(3)(h))


def data(n=BATCH, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 11, (n, 5)).astype("int32")
    image = rng.normal(size=(n, 6, 6, 1)).astype("float32")
    y = (3.0 * rng.normal(size=(n, 3)) * rng.exponential(size=(n, 1))).astype("float32")
    return (ids, image), y


def example_gradients(model, x, y):
    """Each example's gradient (a tape per example, batch of one), as dense numpy arrays."""
    loss_fn = keras.losses.MeanSquaredError()
    grads = []
    for i in range(len(y)):
        with tf.GradientTape() as tape:
            loss = loss_fn(y[i : i + 1], model([x[0][i : i + 1], x[1][i : i + 1]], training=True))
        grads.append([tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, model.trainable_variables)])
    return grads


def reference_update(model, x, y, l2_norm_clip):
    """Clip each example's gradient to l2_norm_clip, sum, divide by the batch size; also the norms."""
    grads = example_gradients(model, x, y)
    norms = np.array([np.sqrt(sum(float(np.sum(g.astype("float64") ** 2)) for g in gs)) for gs in grads])
    total = [np.zeros(g.shape) for g in grads[0]]
    for gs, norm in zip(grads, norms):
        factor = min(1.0, l2_norm_clip / norm)
        total = [t + factor * g for t, g in zip(total, gs)]
    return [t / len(y) for t in total], norms


def zero_gradient_model(cls=kc.ClippingModel, features=50):
    """A Dense layer whose output is multiplied by 0: every gradient is exactly 0, so updates are the noise."""
    inputs = keras.Input((features,))
    outputs = keras.layers.Lambda(lambda h: h * 0.0)(keras.layers.Dense(1)(inputs))
    return cls(inputs, outputs)


class WeightTrace(keras.callbacks.Callback):
    """The flattened weights after every batch."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_train_begin(self, logs=None):
        self.weights.append(_flat(self.model))

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append(_flat(self.model))


def _flat(model):
    return np.concatenate([w.ravel() for w in model.get_weights()])


def noise_ratio(
    strategy,
    noise_multiplier=1.3,
    l2_norm_clip=0.7,
    batch=16,
    steps=120,
    lr=1.0,
    expected_batch_size=None,
    jit_compile="auto",
):
    """Empirical std of the updates over steps and coordinates, over the formula sigma * C / B; their mean; them."""
    with strategy.scope():
        model = zero_gradient_model()
        clip = kc.PerExampleClip(
            l2_norm_clip, noise_multiplier=noise_multiplier, seed=3, expected_batch_size=expected_batch_size
        )
        model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse", clipping=clip, jit_compile=jit_compile)
    x = np.random.default_rng(0).normal(size=(batch * steps, 50)).astype("float32")
    trace = WeightTrace()
    model.fit(
        x, np.zeros((len(x), 1), "float32"), batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[trace]
    )
    updates = np.diff(np.stack(trace.weights), axis=0) / lr
    divisor = expected_batch_size or batch
    return float(np.std(updates) / (noise_multiplier * l2_norm_clip / divisor)), float(np.mean(updates)), updates

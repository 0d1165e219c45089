"""Quickstart: the seed experiment, unclipped and clipped, with the norms printed.

Run: python examples/quickstart.py
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_clip as kc  # noqa: E402


def make_data(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """1000 x 20 regression data, 10 informative features, noise 0.1."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(1000, 20)).astype("float32")
    coef = np.zeros((20, 1), "float32")
    coef[:10, 0] = rng.uniform(0, 100, size=10)
    y = x @ coef + rng.normal(scale=0.1, size=(1000, 1)).astype("float32")
    return x, y.astype("float32")


def train(clipping: object, x: np.ndarray, y: np.ndarray, epochs: int = 50) -> keras.callbacks.History:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((20,))
    hidden = keras.layers.Dense(25, activation="relu", kernel_initializer="he_uniform")(inputs)
    model = kc.ClippingModel(inputs, keras.layers.Dense(1)(hidden))
    model.compile(
        optimizer=keras.optimizers.SGD(0.07, momentum=0.8),
        loss="mse",
        clipping=clipping,
        on_nonfinite="propagate",
        jit_compile=True,
    )
    return model.fit(x, y, batch_size=128, epochs=epochs, verbose=0)


def main() -> None:
    x, y = make_data()
    print(f"{'clipping':<46}{'final loss':>14}{'max grad_norm':>16}{'last clipped':>14}")
    for clipping in (None, kc.ClipByValue(1.0), kc.ClipByGlobalNorm(1.0)):
        history = train(clipping, x, y).history
        finite_norms = [n for n in history["grad_norm"] if np.isfinite(n)]
        print(
            f"{clipping!r:<46}{history['loss'][-1]:>14.4g}"
            f"{max(finite_norms, default=float('nan')):>16.4g}{history['clipped_grad_norm'][-1]:>14.4g}"
        )


if __name__ == "__main__":
    main()

"""Shared fixtures: tiny models and data, seeded."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def regression_data(n: int = 1000, features: int = 20, informative: int = 10, seed: int = 1):
    """make_regression-like data: coefficients up to 100, noise 0.1."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    coef = np.zeros((features, 1), "float32")
    coef[:informative, 0] = rng.uniform(0, 100, size=informative)
    y = x @ coef + rng.normal(scale=0.1, size=(n, 1)).astype("float32")
    return x, y.astype("float32")


@pytest.fixture(scope="session")
def seed_data():
    return regression_data()


@pytest.fixture(scope="session")
def small_data():
    return regression_data(n=64, features=4, informative=4, seed=3)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)

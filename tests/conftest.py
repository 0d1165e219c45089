"""Shared fixtures: tiny models and data, seeded."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402

from keras_clip.experiments.problems import regression_data  # noqa: E402


@pytest.fixture(scope="session")
def seed_data():
    return regression_data()


@pytest.fixture(scope="session")
def small_data():
    return regression_data(n=64, features=4, informative=4, seed=3)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)

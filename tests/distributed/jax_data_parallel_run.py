"""One device against `keras.distribution.DataParallel` over 2 CPU devices, on JAX.

Run with `KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2`.
Prints `RESULT {strategy: max relative difference}` (L2 norm of the
difference over the one-device weights' norm, the worst variable).
"""

from __future__ import annotations

import json

import jax
import keras

from tests.backends import seed_run


def main() -> None:
    assert len(jax.devices("cpu")) == 2, jax.devices()
    names = [n for n in seed_run.STRATEGIES if n != "none"]
    single = {name: seed_run.run(name, jit_compile=True)[0] for name in names}
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices("cpu")))
    result = {}
    for name in names:
        parallel, _ = seed_run.run(name, jit_compile=True)
        result[name] = seed_run.relative_difference(parallel, single[name])
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()

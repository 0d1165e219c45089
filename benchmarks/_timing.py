"""Timing helpers shared by the benchmarks: time a `fit()`, compare to a baseline, describe the machine.

The machine the benchmarks run on is shared and noisy, so every figure is a
median over interleaved rounds, reported with its min and max, next to the
CPU time of the process (all its threads) and the load average.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Callable, Sequence

import keras
import tensorflow as tf


def time_epoch(
    model: keras.Model, data: Any, batch_size: int | None, callbacks: list, **fit_kwargs: Any
) -> tuple[float, float]:
    """Wall-clock and CPU (all threads of this process) seconds per step of one `fit()` epoch.

    Args:
        model: keras.Model. Compiled.
        data: Tuple `(x, y)` of arrays, or a `tf.data.Dataset` (then pass
            `steps_per_epoch` in `fit_kwargs`).
        batch_size: Int or None (None for a dataset).
        callbacks: List of callbacks for this epoch.
        **fit_kwargs: Any other argument of `fit()`.
    """
    if isinstance(data, tuple):
        x, y = data
        steps = len(x) // batch_size
        args: dict[str, Any] = {"x": x, "y": y, "batch_size": batch_size, "shuffle": False}
    else:
        steps = fit_kwargs["steps_per_epoch"]
        args = {"x": data}
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(**args, epochs=1, verbose=0, callbacks=callbacks, **fit_kwargs)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def ratios(times: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Round-by-round ratios `times[i] / baseline[i]` (both measured in the same round)."""
    return [t / b for t, b in zip(times, baseline)]


def summary(times: Sequence[float], baseline: Sequence[float]) -> tuple[float, float, float, float]:
    """`(median time, median ratio, min ratio, max ratio)` of one variant against the baseline."""
    r = ratios(times, baseline)
    return statistics.median(times), statistics.median(r), min(r), max(r)


def report(name: str, times: Sequence[float], baseline: Sequence[float], width: int = 30) -> str:
    """One table line: name, median ms/step, and median, min and max of the ratio."""
    median, mid, low, high = summary(times, baseline)
    return f"{name:<{width}}{median * 1e3:>9.3f}{mid:>8.3f}{low:>7.3f}{high:>7.3f}"


def interleaved(
    names: Sequence[str],
    rounds: int,
    measure: Callable[[str], tuple[float, float]],
    rotate: bool = False,
    warmup: int = 1,
) -> tuple[dict[str, list[float]], dict[str, list[float]], list[float]]:
    """Runs `rounds` rounds of `measure(name)` for every name, interleaved (A B C ... A B C ...).

    No variant is timed twice in a row, so drift in the machine's load hits
    all of them alike. With `rotate`, round r starts at the r-th name, so no
    variant always follows the same neighbour. The first `warmup` rounds are
    not kept: building a model calls `keras.utils.set_random_seed`, after
    which every model's next `fit()` retraces its step (~0.1 s, no compile).

    Returns:
        `(wall, cpu, load)`: per name, the seconds per step of each round (in
        round order), and the 1-minute load average after each round.
    """
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    load = []
    names = list(names)
    for name in names * warmup:
        measure(name)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)] if rotate else names
        for name in order:
            seconds, cpu_seconds = measure(name)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
        load.append(os.getloadavg()[0])
    return wall, cpu, load


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what `platform` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def steal_seconds() -> float:
    """CPU seconds stolen from this (virtual) machine by its host so far, from /proc/stat (0 if unknown)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_description() -> str:
    """One line: OS, CPUs, CPU model, TensorFlow, Keras, GPUs."""
    gpus = len(tf.config.list_physical_devices("GPU"))
    return (
        f"{platform.platform()}, {os.cpu_count()} CPUs ({cpu_model()}), "
        f"tensorflow {tf.__version__}, keras {keras.__version__}, {gpus} GPU"
    )

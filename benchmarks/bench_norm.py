"""What the overflow-safe global norm costs next to the plain one, on realistic gradient lists.

`ops.l2_norms` sums squares as before and recomputes from prescaled gradients only when that sum
is `inf`, inside a `tf.cond`; this script times it against the plain `sqrt(sum of squares)` on
the gradients of the benchmark models (an MLP 784-1024x4-10 and a small transformer block, float32),
compiled with XLA and as a plain `tf.function`. Each round times every variant in turn (rotating
the start) over `--calls` calls; the table gives the median CPU time per call (all threads of the
process) and the median, min and max over the rounds of the ratio new / old timed in the same round.
Then it checks both on gradients whose squares overflow: the plain norm is `inf`, the new one finite.

    python benchmarks/bench_norm.py                 # about a minute
    python benchmarks/bench_norm.py --rounds 31 --calls 200
    python benchmarks/bench_norm.py --tiny          # smoke test
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _timing import machine_description  # noqa: E402

from keras_clip import ops  # noqa: E402

SHAPES = {
    "mlp": [(784, 1024), (1024,)] + [(1024, 1024), (1024,)] * 3 + [(1024, 10), (10,)],
    "transformer": [(30000, 256), (256, 8, 32), (8, 32)] * 1
    + [(256, 8, 32), (8, 32)] * 2
    + [(8, 32, 256), (256,), (256,), (256,), (256, 1024), (1024,), (1024, 256), (256,), (256,), (256,)],
}
TINY_SHAPES = {"mlp": [(32, 64), (64,), (64, 10), (10,)]}


def plain_norm(grads: list[tf.Tensor]) -> tf.Tensor:
    """The norm as computed before: one float32 sum of squares (overflows past ~1.8e19 per entry)."""
    return ops.root_sum_squares([ops.sum_of_squares(g) for g in grads])


def safe_norm(grads: list[tf.Tensor]) -> tf.Tensor:
    """The overflow-safe norm the strategies use now."""
    return ops.l2_norms(grads)[1]


def time_calls(fn, grads: list[tf.Tensor], calls: int) -> tuple[float, float]:
    """Wall and CPU seconds per call, the result read back once at the end."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        result = fn(grads)
    float(result)
    return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls


def compare(name: str, shapes: list[tuple[int, ...]], jit: bool, rounds: int, calls: int) -> str:
    rng = np.random.default_rng(0)
    grads = [tf.constant(rng.normal(size=s).astype("float32") * 1e-2) for s in shapes]
    variants = {
        "old": tf.function(plain_norm, jit_compile=jit),
        "new": tf.function(safe_norm, jit_compile=jit),
    }
    values = {k: float(fn(grads)) for k, fn in variants.items()}  # Trace and compile.
    assert abs(values["new"] - values["old"]) <= 1e-5 * values["old"], values
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants)
    for r in range(rounds):
        for k in order[r % 2 :] + order[: r % 2]:
            cpu[k].append(time_calls(variants[k], grads, calls)[1])
    ratios = [n / o for n, o in zip(cpu["new"], cpu["old"])]
    entries = sum(int(np.prod(s)) for s in shapes)
    return (
        f"| {name} ({entries / 1e6:.1f}M entries) | {'XLA' if jit else 'tf.function'} "
        f"| {statistics.median(cpu['old']) * 1e6:.0f} | {statistics.median(cpu['new']) * 1e6:.0f} "
        f"| {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |"
    )


def overflow_check() -> str:
    grads = [tf.constant(np.full((100, 100), 1e20, "float32")), tf.constant([3.0, 4.0])]
    old, new = float(plain_norm(grads)), float(safe_norm(grads))
    return f"Entries 1e20 (100 x 100): old norm {old}, new norm {new:.6g} (float64: {1e20 * 100:.6g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--tiny", action="store_true", help="smoke test: tiny gradients, 3 rounds")
    args = parser.parse_args()
    rounds, calls, shapes = (3, 5, TINY_SHAPES) if args.tiny else (args.rounds, args.calls, SHAPES)
    print(machine_description())
    print(f"{rounds} rounds of {calls} calls; CPU microseconds per call (median); ratio new / old per round\n")
    print("| gradients | compiled | old us | new us | ratio median (min-max) |")
    print("|---|---|---|---|---|")
    for name, model_shapes in shapes.items():
        for jit in (True, False):
            print(compare(name, model_shapes, jit, rounds, calls), flush=True)
    print()
    print(overflow_check())
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Where a training step's time goes, per XLA fusion, for the variants of bench_step.py.

Runs each variant (same models and data as `bench_step.py`), warms it up,
records `--steps` steps with the TensorFlow profiler and sums, per step, the
time of every XLA:CPU thunk (one fusion, dot or copy of the compiled step)
over all threads. Thunk names are XLA's, with the `.N` suffix dropped so the
same kind of fusion of different layers adds up; `cond` and `while` thunks
only wrap others and are shown apart, not added. Thunk time is not the step's
CPU time (the host, the runtime and idle threads are not in it); it shows what
the compiled step computes and which part a change moved.

    python benchmarks/profile_step.py --model mlp --variants keras,keras_clipnorm,kc,barrier
    XLA_FLAGS=--xla_dump_to=/tmp/dump python benchmarks/profile_step.py --variants kc   # + the HLO
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402
from bench_step import MODELS, VARIANTS, build, callbacks_for, dataset  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

# Runtime events around the thunks, not work of the compiled step.
_RUNTIME = re.compile(r"^(end: |ThunkExecutor|ThreadpoolListener|SlinkyThreadPool)")
_WRAPPERS = re.compile(r"^(cond|while)")


def thunk_times(logdir: str, steps: int) -> dict[str, float]:
    """Milliseconds per step of each XLA thunk kind, from the profiler's XSpace."""
    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals: collections.Counter[str] = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if "Eigen" not in line.name:  # XLA:CPU runs its thunks on the intra-op threads
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if not _RUNTIME.match(name):
                    totals[re.sub(r"\.\d+$", "", name)] += event.duration_ps / 1e9 / steps
    return dict(totals)


def profile(model: str, variant: str, steps: int, tiny: bool) -> dict[str, float]:
    net = build(model, variant, 1, tiny)
    data = dataset(model, tiny)
    with tempfile.TemporaryDirectory() as log_dir, tempfile.TemporaryDirectory() as trace_dir:
        callbacks = callbacks_for(variant, log_dir)
        net.fit(data, epochs=2, steps_per_epoch=steps, shuffle=False, verbose=0, callbacks=callbacks)
        tf.profiler.experimental.start(trace_dir)
        net.fit(data, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0, callbacks=callbacks)
        tf.profiler.experimental.stop()
        return thunk_times(trace_dir, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp", choices=list(MODELS))
    parser.add_argument("--variants", default="keras,keras_clipnorm,kc,barrier")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--top", type=int, default=8, help="thunk kinds listed per variant")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant: {variant}")
        times = profile(args.model, variant, args.steps, args.tiny)
        work = {k: v for k, v in times.items() if not _WRAPPERS.match(k)}
        print(f"\n{args.model} / {variant}: {sum(work.values()):.2f} ms of XLA thunks per step (all threads)")
        for name, ms in sorted(work.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"  {ms:8.3f}  {name}")
        wrappers = {k: v for k, v in times.items() if _WRAPPERS.match(k)}
        for name, ms in wrappers.items():
            print(f"  ({ms:7.3f}  {name}: wraps thunks listed above, not added)")


if __name__ == "__main__":
    main()

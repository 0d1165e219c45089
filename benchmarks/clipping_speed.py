"""Does clipping make training faster? A tuned comparison on three model families.

For each family (the seed regression and the IRNN sum task of
`keras_clip.experiments.problems`, and a small Transformer classifier on
synthetic tokens, `_speed_families.py`), every learning rate of a log-spaced
grid is trained with SGD + momentum and no clipping, `ClipByGlobalNorm` at
three thresholds, `AutoClip()`, `ZClip()` and `AdaptiveGradClip(0.01)`, for
each seed and the same epoch budget. Per family it prints, for each kind, the
best configuration (lowest median final loss over the seeds), its final loss
and its ratio to the best of all kinds, the steps it took to reach the target
loss, which learning rates reach the target, and the spread over seeds.

Then the rule of `keras-clip suggest` is tried: a short unclipped run at the
family's reference learning rate is logged with `GradientNormLogger`, the
threshold is a percentile of its logged pre-clip norms, and the family is
trained with that threshold at that learning rate, to compare with the best
tuned run.

The answer and the measured figures are in docs/clipping-speed.md.

    python benchmarks/clipping_speed.py            # 3 seeds, 7 learning rates: 13 minutes on 2 busy CPUs
    python benchmarks/clipping_speed.py --quick    # smoke test: 1 seed, 3 learning rates, 1 threshold, tiny data
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
from _speed_families import Family, families, kind_of, kinds  # noqa: E402
from _speed_report import best_per_kind, configurations, figure, kind_table, suggest_line  # noqa: E402
from _speed_runs import Runner, check_reuse, short_run_norms  # noqa: E402
from _timing import machine_description  # noqa: E402

import keras_clip as kc  # noqa: E402
from keras_clip.cli import suggest as suggest_cli  # noqa: E402

SUGGEST_PERCENTILES = (50.0, 90.0)
SHORT_RUN_EPOCHS = 2


def sweep(family: Family, seeds: tuple[int, ...], quick: bool, check: bool) -> tuple[list[dict], float, Runner]:
    """Every (strategy, learning rate, seed) run of one family; the reuse check's result (if `check`); the
    unclipped runner."""
    records, reuse, unclipped = [], math.nan, None
    middle = f"ClipByGlobalNorm({family.max_norms[1]:g})"
    # --quick: one threshold, the middle one.
    chosen = {k: v for k, v in kinds(family).items() if not quick or kind_of(k) != "ClipByGlobalNorm" or k == middle}
    for label, make in chosen.items():
        start = time.perf_counter()
        runner = Runner(family, make)
        unclipped = runner if label == "none" else unclipped
        for lr in family.learning_rates:
            for seed in seeds:
                losses = runner.run(lr, seed)
                records.append({"family": family.name, "label": label, "kind": kind_of(label), "lr": lr,
                                "seed": seed, "losses": losses})
        if check and label == middle:
            reuse = check_reuse(runner, make, family.learning_rates[1], seeds[0])
        print(f"  {family.name}: {label} done in {time.perf_counter() - start:.0f}s", flush=True)
    return records, reuse, unclipped


def suggest_rows(unclipped: Runner, seeds: tuple[int, ...], best: float, quick: bool) -> list[dict]:
    """The rule of `keras-clip suggest`, tried at each percentile: its runs' final losses against `best`."""
    family = unclipped.family
    norms = short_run_norms(unclipped, 1 if quick else SHORT_RUN_EPOCHS)
    rows = []
    for percentile in SUGGEST_PERCENTILES[-1:] if quick else SUGGEST_PERCENTILES:
        row = {"percentile": percentile, "lr": family.reference_lr, "norms": norms}
        try:
            threshold = suggest_cli.suggest(norms, percentile).threshold
        except ValueError as error:
            rows.append({**row, "threshold": None, "why": str(error)})
            continue
        runner = Runner(family, lambda t=threshold: kc.ClipByGlobalNorm(t))
        finals = []
        for seed in seeds:
            last = runner.run(family.reference_lr, seed)[-1]
            finals.append(last if math.isfinite(last) else math.inf)
        final = float(np.median(finals))
        rows.append({**row, "threshold": threshold, "finals": finals, "final": final,
                     "ratio": final / best if math.isfinite(final) else math.inf})
    return rows


def describe_family(family: Family, seeds: tuple[int, ...]) -> str:
    """The family's setting in one line."""
    return (
        f"### {family.name}\n\n{len(family.data[0])} samples, batch {family.batch_size}, {family.epochs} epochs "
        f"({family.epochs * family.steps_per_epoch} steps), SGD momentum {family.momentum:g}, learning rates "
        f"{', '.join(f'{lr:g}' for lr in family.learning_rates)}, seeds {', '.join(map(str, seeds))}; target "
        f"loss {family.target:.4g} ({family.target_fraction:g} x the best constant prediction's "
        f"{family.baseline:.4g})."
    )


def _clean(value: object) -> object:
    """`value` with every non-finite float, however deeply nested, as a string (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def measure(quick: bool, seeds: tuple[int, ...]) -> tuple[list[dict], list[dict]]:
    """Per family: its sweep's summary, the rule's rows and the reuse check; and every run's record."""
    results, everything = [], []
    for i, family in enumerate(families(quick=quick)):
        records, reuse, unclipped = sweep(family, seeds, quick, check=not quick or i == 0)
        configs = configurations(records, family)
        rows = best_per_kind(configs, family)
        suggested = suggest_rows(unclipped, seeds, min(r["final"] for r in rows), quick)
        results.append({"family": family, "configs": configs, "rows": rows, "suggest": suggested, "reuse": reuse})
        everything += records
    return results, everything


def report(result: dict, seeds: tuple[int, ...]) -> str:
    """One family's section: its setting, its table, the rule's rows and the reuse check."""
    family = result["family"]
    best = min(r["final"] for r in result["rows"])
    lines = [describe_family(family, seeds), "", kind_table(result["rows"], family), ""]
    lines += [suggest_line(row, best) for row in result["suggest"]]
    if math.isfinite(result["reuse"]):  # --quick checks the first family only
        lines.append(f"- reused compiled model vs a fresh one, largest relative difference of the epoch losses: "
                     f"{result['reuse']:.2g}")
    return "\n".join(lines) + "\n"


def write_json(path: str, results: list[dict], records: list[dict], seconds: float) -> None:
    """Every run's epoch losses and each family's summary (non-finite numbers as strings)."""
    summary = [{"family": r["family"].name, "target": r["family"].target, "rows": r["rows"],
                "suggest": [{k: v for k, v in s.items() if k != "norms"} for s in r["suggest"]],
                "reuse_difference": r["reuse"]} for r in results]
    payload = {"seconds": seconds, "machine": machine_description(), "summary": summary, "runs": records}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(_clean(payload), indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 learning rates, 1 threshold, tiny data")
    parser.add_argument("--json", help="write every run and the summaries here")
    parser.add_argument("--figure", help="draw the loss vs learning rate figure here (PNG)")
    args = parser.parse_args()
    start = time.perf_counter()
    seeds = (0,) if args.quick else (0, 1, 2)
    print(f"# Does clipping make training faster?{' (quick)' if args.quick else ''}\n", flush=True)
    results, records = measure(args.quick, seeds)
    for result in results:
        print(report(result, seeds))
    seconds = time.perf_counter() - start
    print(f"{len(records)} runs in {seconds:.0f}s on {machine_description()}; load average at end "
          f"{os.getloadavg()[0]:.1f}")
    if args.figure:
        figure(results, args.figure)
        print(f"Figure: {args.figure}")
    if args.json:
        write_json(args.json, results, records, seconds)
        print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()

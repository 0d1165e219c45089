"""The `keras-clip` command: see clipping work, sweep learning rates, pick a threshold.

Run `keras-clip --help`, or `keras-clip COMMAND --help` for `demo`, `lr-sweep` and `suggest`.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["build_parser", "main"]

DEFAULT_LEARNING_RATES = "0.001,0.003,0.01,0.03,0.1,0.3"
DEFAULT_MAX_NORMS = "1,10"
DEFAULT_PERCENTILE = 90.0
VERBOSE_HELP = "show TensorFlow's own logs (hidden by default)"


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer. Received: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer. Received: {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number. Received: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number. Received: {text!r}")
    return value


def momentum(text: str) -> float:
    """An argparse type: a float in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1). Received: {text!r}")
    return value


def percentile(text: str) -> float:
    """An argparse type: a float in (0, 100]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 100.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 100]. Received: {text!r}")
    return value


def float_list(text: str) -> list[float]:
    """An argparse type: comma-separated positive numbers, e.g. "0.01,0.1"."""
    values = [positive_float(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive numbers. Received: {text!r}")
    return sorted(set(values))


def check_writable(parser: argparse.ArgumentParser, logdir: str) -> Path:
    """Creates `logdir` and writes a probe file into it, or exits with a usage error."""
    path = Path(logdir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".keras-clip-probe-"):
            pass
    except OSError as error:
        parser.error(f"argument --logdir: cannot write to {str(path)!r} ({error.strerror or error}).")
    return path


def _add_common(parser: argparse.ArgumentParser, logdir: str, writes: str, epochs: int) -> None:
    parser.add_argument("--logdir", default=logdir, metavar="DIR", help=f"where {writes} go (default: {logdir})")
    parser.add_argument(
        "--epochs", type=positive_int, default=epochs, metavar="N", help=f"epochs per run (default: {epochs})"
    )
    parser.add_argument(
        "--seed", type=int, default=1, metavar="S", help="random seed for data and weights (default: 1)"
    )
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    parser.set_defaults(subparser=parser, writes=True)


def _subcommand(commands: Any, name: str, help: str, description: str) -> argparse.ArgumentParser:
    # No abbreviations: `--verbose` is read from the raw command line before TensorFlow loads.
    return commands.add_parser(name, help=help, description=description, allow_abbrev=False)


def _add_demo(commands: Any) -> None:
    demo = _subcommand(
        commands,
        "demo",
        help="train with and without clipping; print a table, draw a figure, log to TensorBoard",
        description=(
            "Reproduces the seed experiment (Dense(25, relu) -> Dense(1) on make_regression-like data, "
            "SGD 0.07 with momentum 0.8, batch 128) without clipping, with ClipByValue(1.0), with "
            "ClipByGlobalNorm(1.0) and with AdaptiveGradClip(0.1) (AGC), then a recurrent network (an "
            "IRNN on a long-range sum) without and with clipping. Writes TensorBoard logs per run, "
            "demo.png and results.json into --logdir and prints a table."
        ),
    )
    _add_common(demo, "runs/demo", "the TensorBoard logs, demo.png and results.json", 50)
    demo.add_argument(
        "--backend",
        choices=["tensorflow", "jax", "torch"],
        default=None,
        help="the Keras backend to train on (default: the active one, KERAS_BACKEND)",
    )


def _add_sweep(commands: Any) -> None:
    sweep = _subcommand(
        commands,
        "lr-sweep",
        help="train the seed model over a range of learning rates, with and without clipping",
        description=(
            "Trains the seed experiment's model (SGD with momentum, batch 128) at each learning rate "
            "without clipping and with ClipByGlobalNorm at each --max-norms threshold, prints which rates "
            "diverge, the loss each reaches and how fast, and plots it to lr_sweep.png in --logdir."
        ),
    )
    _add_common(sweep, "runs/lr-sweep", "lr_sweep.png and results.json", 20)
    sweep.add_argument(
        "--learning-rates", "--lrs", dest="learning_rates", type=float_list,
        default=float_list(DEFAULT_LEARNING_RATES), metavar="LR,LR,...",
        help=f"comma-separated learning rates (default: {DEFAULT_LEARNING_RATES})",
    )
    sweep.add_argument(
        "--max-norms", dest="max_norms", type=float_list, default=float_list(DEFAULT_MAX_NORMS),
        metavar="X,X,...", help=f"ClipByGlobalNorm thresholds of the clipped runs (default: {DEFAULT_MAX_NORMS})",
    )
    sweep.add_argument("--momentum", type=momentum, default=0.8, metavar="M", help="SGD momentum (default: 0.8)")


def _add_suggest(commands: Any) -> None:
    suggest = _subcommand(
        commands,
        "suggest",
        help="report what a run's logged pre-clip norms show, and a percentile of them as a threshold",
        description=(
            "Reads the pre-clip global gradient norm of every step (tag grad_norm/pre_clip, written by "
            "keras_clip.GradientNormLogger into RUN/train) from a run's TensorBoard event files. Prints the "
            "median, the chosen percentile, the largest norm, how much the norms grew over the run, and how "
            "many steps that percentile would have clipped as a ClipByGlobalNorm threshold; warns when the "
            "norms are a diverging run's. Not a tuned setting: tune the learning rate with the threshold. "
            "Best read from a healthy run."
        ),
    )
    suggest.add_argument(
        "--logdir", required=True, metavar="RUN",
        help="the log_dir given to GradientNormLogger (or its train/ subdirectory)",
    )
    suggest.add_argument(
        "--percentile", type=percentile, default=DEFAULT_PERCENTILE, metavar="P",
        help=f"the percentile of the logged norms to suggest, in (0, 100] (default: {DEFAULT_PERCENTILE:g})",
    )
    suggest.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    suggest.set_defaults(subparser=suggest, writes=False)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `keras-clip` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="keras-clip",
        description=(
            "Gradient clipping for Keras 3: see it work, compare strategies, sweep learning rates, "
            "pick a threshold from a logged run."
        ),
        epilog="Also runs as `python -m keras_clip`. Help on a command: keras-clip COMMAND --help",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo(commands)
    _add_sweep(commands)
    _add_suggest(commands)
    return parser


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    # Imported only when a command runs: they load matplotlib and build models.
    if name == "demo":
        from keras_clip.cli import demo

        return demo.run
    if name == "suggest":
        from keras_clip.cli import suggest

        return suggest.run
    from keras_clip.cli import sweep

    return sweep.run


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `keras-clip` with `argv` (default: the command line); returns the exit status.

    Args:
        argv: List of strings. The arguments after the command's name (default: `sys.argv[1:]`).

    Returns:
        0 on success; usage errors exit with status 2, as argparse does.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.writes:
        if importlib.util.find_spec("matplotlib") is None:
            args.subparser.error(
                "the figures need matplotlib: pip install 'keras-clip[demo]' (or pip install matplotlib)."
            )
        args.logdir = str(check_writable(args.subparser, args.logdir))
    return _command(args.command)(args)

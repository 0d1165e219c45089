"""Quiets the backend's logs when this process is the `keras-clip` command.

TensorFlow reads `TF_CPP_MIN_LOG_LEVEL` once, when it is imported, and
`import keras_clip` imports it. Even then, the lines its libraries log while
they load (before absl's logging is initialized) go to stderr whatever the
level, so the command imports TensorFlow with the file descriptor of stderr
redirected, and passes on every captured line that is not a backend log. Both ways of starting the command import the
package before any code of the command runs (`keras-clip` through its
`keras_clip.cli:main` target, `python -m keras_clip` to find `__main__`), so
the package's `__init__` imports this module first, and importing it calls
`configure()`. It changes nothing
in any other process: importing `keras_clip` in a program, a notebook or a
test leaves the logging configuration alone.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from typing import Sequence

VERBOSE_FLAG = "--verbose"
BACKEND_FLAG = "--backend"
BACKENDS = ("tensorflow", "jax", "torch")
COMMAND_NAMES = ("keras-clip", "keras-clip.exe")
MODULE = "keras_clip"
# A line of TensorFlow's C++ logging: absl's "I0000 00:00:1796131337.422687    6046 port.cc:153] ..." (and the
# warning absl prints before its first such line), or the older "2024-01-01 10:00:00.000000: I tensorflow/...".
BACKEND_LOG_LINE = re.compile(
    r"^([IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\s:]+:\d+\]"
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called)"
)


def _module_of(orig_argv: Sequence[str]) -> str | None:
    """The module `python -m MODULE` ran, from the interpreter's own arguments, or None."""
    for i, arg in enumerate(orig_argv[1:], start=1):
        if arg == "-m":
            return orig_argv[i + 1] if i + 1 < len(orig_argv) else None
        if arg.startswith("-m") and not arg.startswith("--"):
            return arg[2:]
    return None


def is_command(argv: Sequence[str], orig_argv: Sequence[str]) -> bool:
    """Whether the process is `keras-clip ...` or `python -m keras_clip ...`.

    Args:
        argv: `sys.argv`. Its first item is the console script's path, or
            "-m" while `python -m` imports the package.
        orig_argv: `sys.orig_argv`, the interpreter's own arguments.
    """
    if not argv:
        return False
    if os.path.basename(argv[0]) in COMMAND_NAMES:
        return True
    return argv[0] == "-m" and _module_of(orig_argv) == MODULE


def configure(argv: Sequence[str] | None = None, orig_argv: Sequence[str] | None = None) -> bool:
    """Sets TensorFlow's and absl's log levels if this process is the command.

    Without `--verbose`, TensorFlow's C++ logs are off unless the environment
    already chose a level (`TF_CPP_MIN_LOG_LEVEL` is set only if unset), its
    Python and absl loggers report errors only, and TensorFlow is imported
    here, with the lines its libraries log while loading dropped. With
    `--verbose`, every backend log is shown (`TF_CPP_MIN_LOG_LEVEL=0`).

    Args:
        argv: The command line (default: `sys.argv`).
        orig_argv: The interpreter's arguments (default: `sys.orig_argv`).

    Returns:
        True if the process is the command and the levels were set.
    """
    argv = sys.argv if argv is None else argv
    orig_argv = getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv
    if not is_command(argv, orig_argv):
        return False
    _choose_backend(argv[1:])
    if VERBOSE_FLAG in argv[1:]:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    if "tensorflow" not in sys.modules and os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        _import_without_backend_logs()
    return True


def _choose_backend(args: Sequence[str]) -> None:
    """`--backend NAME` (or `--backend=NAME`) sets `KERAS_BACKEND` before Keras is imported."""
    for i, arg in enumerate(args):
        value = args[i + 1] if arg == BACKEND_FLAG and i + 1 < len(args) else None
        if arg.startswith(BACKEND_FLAG + "="):
            value = arg.split("=", 1)[1]
        if value in BACKENDS:
            os.environ["KERAS_BACKEND"] = value


def _import_without_backend_logs() -> None:
    """Imports TensorFlow with stderr captured; writes back every line that is not a backend log."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            sys.stderr.writelines(line for line in text.splitlines(True) if not BACKEND_LOG_LINE.match(line))


configure()

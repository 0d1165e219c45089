"""Variable-path patterns shared by the strategies that pick variables."""

from __future__ import annotations

import fnmatch
import warnings
from typing import Any, Sequence


def patterns_arg(name: str, value: Any) -> tuple[str, ...]:
    """Validates a string or a sequence of strings (fnmatch patterns)."""
    patterns = (value,) if isinstance(value, str) else value
    if not isinstance(patterns, Sequence) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            f"`{name}` must be a string or a sequence of strings (variable path patterns). Received: {name}={value!r}"
        )
    return tuple(patterns)


def path_of(variable: Any) -> str:
    """A variable's path: `keras.Variable.path`, or a `tf.Variable`'s name without the `:0`."""
    path = getattr(variable, "path", None)
    if path is None:
        name = getattr(variable, "name", None) or ""
        path = name.rsplit(":", 1)[0] if ":" in name else name
    return path


def inside_model(path: str) -> str:
    """The path without its first segment when that names the model: `model/layer/variable`.

    A `Sequential` or subclassed model puts its own, auto-numbered name first
    (`clipping_sequential_7/hidden/kernel`); a functional model does not
    (`hidden/kernel`). Paths of two segments or fewer are returned whole.
    """
    return path.split("/", 1)[1] if path.count("/") >= 2 else path


def matches(path: str, patterns: Sequence[str]) -> bool:
    """Whether a variable path matches any of the fnmatch patterns (case-sensitive).

    A pattern may name the full path or the path inside the model
    (`inside_model`), so `"classifier/*"` matches `classifier/kernel` of a
    functional model and `clipping_sequential_7/classifier/kernel` alike,
    whatever number Keras gave the model in this process.
    """
    candidates = {path, inside_model(path)}
    return any(fnmatch.fnmatchcase(c, p) for c in candidates for p in patterns)


def warn_unmatched(owner: str, patterns: Sequence[str], variables: Sequence[Any]) -> None:
    """Warns, in one message, about every pattern that matches none of the variables."""
    paths = [path_of(v) for v in variables]
    unmatched = [p for p in patterns if not any(matches(path, (p,)) for path in paths)]
    if unmatched:
        warnings.warn(
            f"{owner}: the variable path patterns {unmatched} match no variable. "
            f"Variable paths look like {paths[:4]}; patterns use fnmatch syntax, "
            "for example 'dense_1/*' or '*/bias'.",
            UserWarning,
            stacklevel=4,
        )

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


def matches(path: str, patterns: Sequence[str]) -> bool:
    """Whether a variable path matches any of the fnmatch patterns (case-sensitive)."""
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def warn_unmatched(owner: str, patterns: Sequence[str], variables: Sequence[Any]) -> None:
    """Warns, in one message, about every pattern that matches none of the variables."""
    paths = [path_of(v) for v in variables]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(path, p) for path in paths)]
    if unmatched:
        warnings.warn(
            f"{owner}: the variable path patterns {unmatched} match no variable. "
            f"Variable paths look like {paths[:4]}; patterns use fnmatch syntax, "
            "for example 'dense_1/*' or '*/bias'.",
            UserWarning,
            stacklevel=4,
        )

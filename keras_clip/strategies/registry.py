"""`keras_clip.get`: strategies from None, names, dicts or instances."""

from __future__ import annotations

from typing import Any, Callable

import keras

from keras_clip.strategies.base import ClipStrategy
from keras_clip.strategies.fixed import ClipByGlobalNorm, ClipByNorm, ClipByValue

# Short names build with threshold 1.0, the value the seed experiment uses.
_SHORT_NAMES: dict[str, Callable[[], ClipStrategy]] = {
    "value": lambda: ClipByValue(1.0),
    "norm": lambda: ClipByNorm(1.0),
    "global_norm": lambda: ClipByGlobalNorm(1.0),
}
_CLASS_NAMES: dict[str, Callable[[], ClipStrategy]] = {
    "ClipByValue": lambda: ClipByValue(1.0),
    "ClipByNorm": lambda: ClipByNorm(1.0),
    "ClipByGlobalNorm": lambda: ClipByGlobalNorm(1.0),
}


def register_name(name: str, factory: Callable[[], ClipStrategy], *, short: bool = False) -> None:
    """Makes `keras_clip.get(name)` build a strategy with `factory()`."""
    (_SHORT_NAMES if short else _CLASS_NAMES)[name] = factory


def registered_names(short: bool = False) -> list[str]:
    """The names `get` accepts: class names (default) or short names, sorted."""
    return sorted(_SHORT_NAMES if short else _CLASS_NAMES)


def get(identifier: Any) -> ClipStrategy | None:
    """Returns a clipping strategy from an identifier.

    Args:
        identifier: None (no clipping), a `ClipStrategy` (returned as is), a
            short name (`"value"`, `"norm"`, `"global_norm"`, threshold 1.0),
            a class name (`"ClipByGlobalNorm"`, threshold 1.0), or a dict made
            by `keras.saving.serialize_keras_object(strategy)`.

    Returns:
        A `ClipStrategy` or None.

    Raises:
        ValueError: For an unknown name or a dict that is not a strategy.
        TypeError: For any other type.

    Example:

    ```python
    keras_clip.get("global_norm")   # ClipByGlobalNorm(max_norm=1.0, norm_type=2)
    ```
    """
    if identifier is None or isinstance(identifier, ClipStrategy):
        return identifier
    if isinstance(identifier, str):
        factory = _SHORT_NAMES.get(identifier) or _CLASS_NAMES.get(identifier)
        if factory is None:
            valid = sorted(_SHORT_NAMES) + sorted(_CLASS_NAMES)
            raise ValueError(
                f"Unknown clipping strategy name. Valid names are {valid}. Received: clipping={identifier!r}"
            )
        return factory()
    if isinstance(identifier, dict):
        strategy = keras.saving.deserialize_keras_object(identifier)
        if not isinstance(strategy, ClipStrategy):
            raise ValueError(f"A clipping dict must describe a keras_clip strategy. Received: clipping={identifier!r}")
        return strategy
    raise TypeError(
        "`clipping` must be None, a keras_clip strategy, a name or a serialized dict. "
        f"Received: clipping={identifier!r} (of type {type(identifier).__name__})"
    )


# Adaptive strategies and composition (issue 5). Imported here, after `register_name`
# exists, so `keras_clip.get("AutoClip")` works once the package is imported.
from keras_clip.strategies.adagc import AdaGC  # noqa: E402
from keras_clip.strategies.agc import AdaptiveGradClip  # noqa: E402
from keras_clip.strategies.autoclip import AutoClip  # noqa: E402
from keras_clip.strategies.block_rms import ClipByBlockRMS  # noqa: E402
from keras_clip.strategies.skip import SkipSpikes  # noqa: E402
from keras_clip.strategies.zclip import ZClip  # noqa: E402

# AGC has no scale-free default: 0.01 is the NFNets factor (batch 4096); smaller
# batches tolerate larger factors (Brock et al. 2021, figure 3).
for _name, _factory in (
    ("AdaptiveGradClip", lambda: AdaptiveGradClip(0.01)),
    ("AutoClip", AutoClip),
    ("ZClip", ZClip),
    ("AdaGC", AdaGC),
    ("SkipSpikes", SkipSpikes),
    ("ClipByBlockRMS", lambda: ClipByBlockRMS(1.0)),
):
    register_name(_name, _factory)
for _name, _factory in (
    ("agc", lambda: AdaptiveGradClip(0.01)),
    ("autoclip", AutoClip),
    ("zclip", ZClip),
    ("adagc", AdaGC),
    ("skip_spikes", SkipSpikes),
    ("block_rms", lambda: ClipByBlockRMS(1.0)),
):
    register_name(_name, _factory, short=True)

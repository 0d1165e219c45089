"""Block-RMS clipping: each variable's gradient bounded by its root mean square."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops as K

from keras_clip import ops
from keras_clip.strategies import _validation
from keras_clip.strategies.base import ClipStrategy, Stats


def block_rms_factor(square: Any, size: Any, threshold: float) -> Any:
    """`1 / max(1, RMS / threshold)` for a gradient of `size` entries and squared norm `square`.

    The RMS is taken over every entry of the variable (for `IndexedSlices` the
    absent rows count as zeros), as optax's `clip_by_block_rms` does on dense
    arrays.
    """
    rms = K.sqrt(square / K.maximum(K.cast(size, "float32"), 1.0))
    return 1.0 / K.maximum(1.0, rms / threshold)


@keras.saving.register_keras_serializable(package="keras_clip")
class ClipByBlockRMS(ClipStrategy):
    """Divides each variable's gradient by `max(1, RMS(g) / threshold)`.

    `RMS(g) = sqrt(mean(g ** 2))` over all entries of one variable's gradient,
    so a gradient whose root mean square exceeds `threshold` is rescaled to
    RMS `threshold` and a smaller one is left as it is. Unlike a norm, the RMS
    does not grow with the size of the variable, so one threshold suits
    small biases and large kernels alike. This is Adafactor's update clipping
    (there applied to the update, here to the gradient) and optax's
    `clip_by_block_rms`.

    Stateless. A non-finite gradient gives a NaN factor (left for the
    model's non-finite policy).

    Stats: `grad_norm`, `clipped_grad_norm` (global L2 norms, the latter
    derived from the factors), `rms_threshold` (`threshold`, a bound on
    each variable's RMS, logged as `clipping/rms_threshold`) and
    `clipped_fraction` (share of the variables rescaled this step).

    Args:
        threshold: Float. Positive finite bound on each variable's gradient
            RMS.

    Example:

    ```python
    model.compile(optimizer="adam", loss="mse", clipping=keras_clip.ClipByBlockRMS(1.0))
    ```

    References:
        Shazeer, Stern. [Adafactor: Adaptive Learning Rates with Sublinear
        Memory Cost](https://arxiv.org/abs/1804.04235), 2018 (update clipping,
        section 6).
    """

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = _validation.positive_finite("threshold", threshold)

    def rescale_present(self, grads: list[ops.Gradient], variables: list[Any]) -> tuple[list[Any], Stats]:
        squares = [ops.sum_of_squares(g) for g in grads]
        factors = [block_rms_factor(s, ops.dense_size(g), self.threshold) for s, g in zip(squares, grads)]
        # No gradient: the stats of an empty step (norms 0, nothing clipped).
        seen, kept = (squares, factors) if grads else ([ops.constant(0.0)], [ops.constant(1.0)])
        stats = {
            "grad_norm": K.sqrt(ops.add_n(seen)),
            # Derived, not measured again: ||f g||^2 = f^2 ||g||^2.
            "clipped_grad_norm": K.sqrt(ops.add_n([s * K.square(f) for s, f in zip(seen, kept)])),
            "rms_threshold": ops.constant(self.threshold),
            "clipped_fraction": K.mean(K.cast(K.stack(kept) < 1.0, "float32")),
        }
        return factors, stats

    def get_config(self) -> dict[str, Any]:
        return {"threshold": self.threshold}

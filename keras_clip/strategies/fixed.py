"""Clipping with a fixed threshold: by value, by norm, by global norm."""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops as K

from keras_clip import ops
from keras_clip.strategies import _validation
from keras_clip.strategies.base import ClipStrategy, Stats


def _norm_type_config(norm_type: float) -> int | str:
    return "inf" if norm_type == math.inf else int(norm_type)


@keras.saving.register_keras_serializable(package="keras_clip")
class ClipByValue(ClipStrategy):
    """Clips every gradient entry to `[-clip_value, clip_value]`.

    The cheapest clip, but it changes the gradient's direction whenever some
    entries are clipped and others are not (Goodfellow et al., 2016).

    Stats: `grad_norm`, `clipped_grad_norm` (global L2 norms, the latter
    measured again: clipping entries has no closed form for it) and
    `value_threshold` (`clip_value`).

    Args:
        clip_value: Float. Positive finite bound on each entry's magnitude.

    Example:

    ```python
    model.compile(optimizer="sgd", loss="mse", clipping=keras_clip.ClipByValue(1.0))
    ```

    References:
        Goodfellow, Bengio, Courville. [Deep Learning, section 10.11.1](
        https://www.deeplearningbook.org/contents/rnn.html), 2016.
    """

    def __init__(self, clip_value: float) -> None:
        super().__init__()
        self.clip_value = _validation.positive_finite("clip_value", clip_value)

    def clip_present(self, grads: list[ops.Gradient], variables: list[Any]) -> tuple[list[ops.Gradient], Stats]:
        _, pre = ops.l2_norms(grads)
        clipped = [ops.clip_values(g, self.clip_value) for g in grads]
        _, post = ops.l2_norms(clipped)
        # A bound on entries, not on a norm: named apart from `threshold` (logged as `clipping/value_threshold`).
        return clipped, {"grad_norm": pre, "clipped_grad_norm": post, "value_threshold": ops.constant(self.clip_value)}

    def get_config(self) -> dict[str, Any]:
        return {"clip_value": self.clip_value}


class _NormBound(ClipStrategy):
    """Base of the strategies that bound a norm: validates and stores `max_norm` and `norm_type`."""

    def __init__(self, max_norm: float, norm_type: int | float | str = 2) -> None:
        super().__init__()
        self.max_norm = _validation.positive_finite("max_norm", max_norm)
        self.norm_type = ops.canonical_norm_type(norm_type)

    def get_config(self) -> dict[str, Any]:
        return {"max_norm": self.max_norm, "norm_type": _norm_type_config(self.norm_type)}


@keras.saving.register_keras_serializable(package="keras_clip")
class ClipByNorm(_NormBound):
    """Rescales each variable's gradient on its own so its norm is <= `max_norm`.

    For each gradient `g` with `n = ||g||` (1-, 2- or inf-norm), returns
    `g * max_norm / n` when `n > max_norm`, else `g`. This is the optimizer's
    `clipnorm` in Keras, applied after gradients are aggregated.

    Stats: `grad_norm`, `clipped_grad_norm` (global L2 norms),
    `variable_threshold` (`max_norm`, the bound on each variable's norm;
    logged as `grad_norm_by_variable/threshold`, beside the per-variable
    norms), and `variable_norm`, `clipped_variable_norm` (the largest
    variable's norm before and after clipping, in `norm_type`, the norm the
    threshold bounds).

    Args:
        max_norm: Float. Positive finite bound on each gradient's norm.
        norm_type: Int, float or str. `1`, `2` (default) or `"inf"`.

    Example:

    ```python
    model.compile(optimizer="adam", loss="mse", clipping=keras_clip.ClipByNorm(5.0))
    ```

    References:
        Pascanu, Mikolov, Bengio. [On the difficulty of training recurrent
        neural networks](https://arxiv.org/abs/1211.5063), 2013.
    """

    def rescale_present(self, grads: list[ops.Gradient], variables: list[Any]) -> tuple[list[Any], Stats]:
        l2, pre = ops.l2_norms(grads)
        norms = l2 if self.norm_type == 2.0 else [ops.norm(g, self.norm_type) for g in grads]
        factors = [ops.clip_factor(n, self.max_norm) for n in norms]
        # Derived, not measured again: ||f g|| = f ||g||.
        post = ops.combine_norms([n * f for n, f in zip(l2, factors)]) if grads else pre
        # Its threshold bounds each variable's norm, not the global norm: named apart so the
        # logger draws it beside the largest per-variable norms, in the same norm.
        stats = {
            "grad_norm": pre,
            "clipped_grad_norm": post,
            "variable_threshold": ops.constant(self.max_norm),
            "variable_norm": _largest(norms),
            "clipped_variable_norm": _largest([n * f for n, f in zip(norms, factors)]),
        }
        return factors, stats


def _largest(norms: list[Any]) -> Any:
    return K.max(K.stack(norms)) if norms else ops.constant(0.0)


@keras.saving.register_keras_serializable(package="keras_clip")
class ClipByGlobalNorm(_NormBound):
    """Rescales all gradients together so their joint norm is <= `max_norm`.

    With `n` the norm of all gradients concatenated into one vector, every
    gradient is multiplied by `max_norm / n` when `n > max_norm`. The update's
    direction is kept exactly; only its length is bounded. The recommended
    default: the seed experiment converges best with it.

    Stats: `grad_norm`, `clipped_grad_norm` (global L2 norms), `threshold`
    (`max_norm`); with `norm_type` 1 or `"inf"` also `norm` and
    `clipped_norm`, the global norm before and after in that norm (the one
    the threshold bounds; TensorBoard draws them with the threshold).

    Args:
        max_norm: Float. Positive finite bound on the global norm.
        norm_type: Int, float or str. `1`, `2` (default) or `"inf"`.

    Example:

    ```python
    model.compile(optimizer="sgd", loss="mse", clipping=keras_clip.ClipByGlobalNorm(1.0))
    ```

    References:
        Pascanu, Mikolov, Bengio. [On the difficulty of training recurrent
        neural networks](https://arxiv.org/abs/1211.5063), 2013.
    """

    def rescale_present(self, grads: list[ops.Gradient], variables: list[Any]) -> tuple[list[Any], Stats]:
        _, pre = ops.l2_norms(grads)
        if self.norm_type == 2.0:
            factor = ops.clip_factor(pre, self.max_norm)
            stats = {}
        else:
            measured = ops.combine_norms([ops.norm(g, self.norm_type) for g in grads], self.norm_type)
            factor = ops.clip_factor(measured, self.max_norm)
            # The norm the threshold bounds, so the chart of the threshold compares like with like.
            stats = {"norm": measured, "clipped_norm": measured * factor}
        stats.update({"grad_norm": pre, "clipped_grad_norm": pre * factor, "threshold": ops.constant(self.max_norm)})
        return [factor] * len(grads), stats

"""AdaGC: each variable's gradient clipped to an EMA of its own past clipped norms."""

from __future__ import annotations

import math
from typing import Any, Sequence

import keras
from keras import ops as K

from keras_clip import ops
from keras_clip.strategies import _validation
from keras_clip.strategies.base import ClipStrategy, Stats, keep_if


@keras.saving.register_keras_serializable(package="keras_clip")
class AdaGC(ClipStrategy):
    """AdaGC: per-variable thresholds that follow each variable's own norms.

    With `t` the step (counted from 1 over steps with a finite gradient) and
    `g_i` the gradient of variable `i`:

    - while `t <= warmup_steps`: `h = min(1, absolute / (G + eps))`, `G` the
      global L2 norm (global clipping to `absolute`); `ĝ_i = h g_i`;
      `γ_i = ||ĝ_i||` at `t = 1`, else `γ_i = min(γ_i, ||ĝ_i||)`;
    - after: `h_i = min(1, relative * γ_i / (||g_i|| + eps))`; `ĝ_i = h_i g_i`;
      `γ_i = beta * γ_i + (1 - beta) * ||ĝ_i||`.

    Each variable is bounded by a small multiple of its own recent clipped
    norm, so a spike in one layer is cut back without shrinking the others,
    and no global threshold needs tuning after warm-up. But warm-up sets the
    scale for good: after it a bound can grow by at most a factor
    `beta + (1 - beta) * relative` per step (0.1% with the defaults), so
    `absolute` must suit the gradient's own scale, as a `ClipByGlobalNorm`
    threshold would; far below it, every later step is held small. A variable
    whose gradient is zero at some warm-up step gets `γ_i = 0` and is frozen
    from then on (the running minimum cannot recover from 0).

    State: one float32 `γ_i` per variable and an int64 step counter, in
    Keras variables (saved, checkpointed and restored with the model). A
    non-finite global norm changes no state, the counter included.

    Stats: `grad_norm`, `clipped_grad_norm` (global L2 norms), `threshold`
    (the largest global norm the step can keep: `absolute` during warm-up,
    then the L2 norm of the per-variable bounds `relative * γ_i`) and
    `clipped_fraction` (share of the variables whose factor is below 1).

    Args:
        beta: Float in [0, 1). EMA smoothing factor of the thresholds.
        relative: Float. Positive finite factor `λ_rel` on each variable's
            EMA threshold.
        absolute: Float. Positive finite global-norm bound `λ_abs` during
            warm-up.
        warmup_steps: Integer >= 1. Steps of global clipping that set the
            initial thresholds.
        eps: Float. Non-negative, added to the norms divided by.

    Example:

    ```python
    model.compile(optimizer="adamw", loss="mse", clipping=keras_clip.AdaGC(warmup_steps=100))
    ```

    References:
        Wang et al. [AdaGC: Improving Training Stability for Large Language
        Model Pretraining](https://arxiv.org/abs/2502.11034), 2025
        (Algorithm 1).
    """

    def __init__(
        self,
        beta: float = 0.98,
        relative: float = 1.05,
        absolute: float = 1.0,
        warmup_steps: int = 100,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.beta = _validation.in_range("beta", beta, 0.0, 1.0, closed="left")
        self.relative = _validation.positive_finite("relative", relative)
        self.absolute = _validation.positive_finite("absolute", absolute)
        self.warmup_steps = _validation.positive_int("warmup_steps", warmup_steps)
        self.eps = _validation.in_range("eps", eps, 0.0, math.inf, closed="left")
        self._gamma: keras.Variable | None = None
        self._count: keras.Variable | None = None
        self._slots: dict[int, int] = {}

    def build(self, variables: Sequence[keras.Variable]) -> None:
        """Creates one threshold per variable and the step counter."""
        if not self.built:
            self._slots = {id(v): i for i, v in enumerate(variables)}
            self._gamma = self.add_state("gamma", [0.0] * len(variables), "float32")
            self._count = self.add_state("count", 0, ops.wide("int64"))
        super().build(variables)

    def _slot(self, variable: keras.Variable) -> int:
        slot = self._slots.get(id(variable))
        if slot is None:
            raise ValueError(
                "AdaGC keeps one threshold per variable it was built for; this variable is not one of "
                f"them. Build it with every variable it will clip. Received: variable={variable.path!r}"
            )
        return slot

    def rescale_present(self, grads: list[ops.Gradient], variables: list[Any]) -> tuple[list[Any], Stats]:
        if not grads:
            zero = ops.constant(0.0)
            threshold = ops.constant(self.absolute)
            return [], {"grad_norm": zero, "clipped_grad_norm": zero, "threshold": threshold, "clipped_fraction": zero}
        slots = [self._slot(v) for v in variables]
        gamma_all, count = self._gamma.value, self._count.value
        gamma = K.take(gamma_all, K.convert_to_tensor(slots, "int32"))
        norms = K.sqrt(K.stack([ops.sum_of_squares(g) for g in grads]))
        total = K.sqrt(K.sum(K.square(norms)))
        step = count + 1
        warm = step <= self.warmup_steps
        h_warm = K.minimum(1.0, self.absolute / (total + self.eps))
        h_after = K.minimum(1.0, self.relative * gamma / (norms + self.eps))
        h = K.where(warm, K.full(K.shape(norms), h_warm), h_after)
        kept = h * norms
        new_gamma = K.where(
            warm,
            K.where(step == 1, kept, K.minimum(gamma, kept)),
            self.beta * gamma + (1.0 - self.beta) * kept,
        )
        finite = K.isfinite(total)
        scattered = K.scatter_update(gamma_all, [[i] for i in slots], new_gamma)
        self._gamma.assign(keep_if(finite, scattered, gamma_all))
        self._count.assign(count + K.cast(finite, ops.wide("int64")))
        bound = K.sqrt(K.sum(K.square(self.relative * gamma)))
        stats = {
            "grad_norm": total,
            "clipped_grad_norm": K.sqrt(K.sum(K.square(kept))),
            "threshold": K.where(warm, ops.constant(self.absolute), bound),
            "clipped_fraction": K.mean(K.cast(h < 1.0, "float32")),
        }
        return [h[i] for i in range(len(grads))], stats

    def get_config(self) -> dict[str, Any]:
        return {
            "beta": self.beta,
            "relative": self.relative,
            "absolute": self.absolute,
            "warmup_steps": self.warmup_steps,
            "eps": self.eps,
        }

"""`ClippingMixin`: `compile(clipping=...)` for any Keras model."""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Any

import keras
from keras import ops as K

from keras_clip.strategies import get as get_strategy
from keras_clip.strategies.base import ClipStrategy
from keras_clip.training.optimizer import ClippingOptimizer, clipping_optimizers, unwrap
from keras_clip.training.policy import NonFiniteGradientError, validate_policy

if keras.backend.backend() == "tensorflow":
    from keras_clip.training.multiworker import MultiWorkerTrainer
else:

    class MultiWorkerTrainer:  # type: ignore[no-redef]
        """Multi-worker fixes are for TensorFlow's trainer only."""


class ClippingMixin(MultiWorkerTrainer):
    """Adds configurable, correctly placed gradient clipping to a Keras model.

    Use it first in the bases of a subclassed model
    (`class Net(ClippingMixin, keras.Model)`), or use `ClippingModel` /
    `ClippingSequential`. `compile()` takes two more arguments, `clipping` and
    `on_nonfinite`, and wraps the optimizer the model would otherwise use (the
    one passed, or the parent class's default) in a `ClippingOptimizer`;
    everything else about `compile()`, `fit()` and saving is Keras's own.

    Every update then sums the gradient across replicas once, removes the loss
    scale, applies the non-finite policy, clips it with the strategy and
    applies it. `train_step` adds three entries to the logs and `History`:
    `grad_norm` (global L2 norm before clipping), `clipped_grad_norm` (after)
    and `nonfinite_steps` (non-finite steps met so far). A model with its own
    `train_step` is clipped as long as its gradients go through
    `self.optimizer.apply` (or another `ClippingOptimizer`); it warns once if
    they never do.

    Example:

    ```python
    @keras.saving.register_keras_serializable(package="my_project")  # to load it from a .keras file
    class Net(keras_clip.ClippingMixin, keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net.compile(optimizer="sgd", loss="mse", clipping=keras_clip.ClipByGlobalNorm(1.0))
    ```
    """

    def compile(self, *args: Any, clipping: Any = None, on_nonfinite: str = "skip", **kwargs: Any) -> None:
        """Configures the model for training, with gradient clipping.

        Takes every argument of the parent's `compile`, plus:

        Args:
            clipping: A `ClipStrategy`, a name (`"value"`, `"norm"`,
                `"global_norm"`), a class name or a serialized dict (see
                `keras_clip.get`). None (the default) clips nothing but still
                reports the gradient norm.
            on_nonfinite: String. What an update does when the gradient holds
                a NaN or an infinity: `"skip"` (default) applies nothing, so
                weights, optimizer slots and the iteration counter stay as if
                the batch was never seen; `"zero"` sets the non-finite entries
                to 0 and goes on; `"raise"` skips the step too, then raises
                `NonFiniteGradientError` after the execution; `"propagate"`
                applies it as Keras does (the weights become NaN). `"skip"` is
                the default because one bad batch should not destroy a run:
                the skipped steps are counted in `nonfinite_steps`, which is
                how `LossScaleOptimizer` treats overflow too.

        Raises:
            ValueError: For an unknown strategy or policy, or an optimizer
                that clips on its own while `clipping` is set.
        """
        strategy = get_strategy(clipping)
        policy = validate_policy(on_nonfinite)
        if hasattr(self, "clip_gradients"):
            raise TypeError(
                f"{type(self).__name__} defines `clip_gradients`, which the model no longer calls: "
                "the clip hook lives on the optimizer. Move it to a subclass of "
                "`keras_clip.ClippingOptimizer` (same signature) and pass "
                "`optimizer=YourOptimizer(inner_optimizer, clipping=...)` to compile()."
            )
        super().compile(*args, **kwargs)
        with _strategy_scope(self):
            self.optimizer = _wrap(self.optimizer, strategy, policy)
        if _per_example(strategy):
            from keras_clip.privacy import step as per_example

            per_example.check_compiled(self, strategy)
        self._nonfinite_seen = 0
        self._compile_config.config.update(clipping=strategy, on_nonfinite=policy)

    @property
    def clipping(self) -> ClipStrategy | None:
        """The strategy of the model's `ClippingOptimizer` (None: monitoring only)."""
        optimizer = unwrap(getattr(self, "optimizer", None))
        return optimizer.clipping if optimizer is not None else None

    @property
    def on_nonfinite(self) -> str:
        """The non-finite policy of the model's `ClippingOptimizer`."""
        optimizer = unwrap(getattr(self, "optimizer", None))
        return optimizer.on_nonfinite if optimizer is not None else "skip"

    def compile_from_config(self, config: dict[str, Any]) -> None:
        """Compiles from `get_compile_config()`, restoring the clipping too."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            with _strategy_scope(self):
                self.optimizer.build(self.trainable_variables)

    def train_step(self, *args: Any) -> Any:
        """Keras's step (its update goes through the `ClippingOptimizer`), plus the clip's figures.

        On JAX the step is stateless, `train_step(state, data) -> (logs,
        state)`, and the figures are read from the new optimizer variables.
        With a `PerExampleClip` (TensorFlow), the step computes, clips and sums
        per-example gradients instead (`keras_clip.privacy.step.train_step`).
        """
        optimizer = unwrap(self.optimizer)
        if keras.backend.backend() == "jax":
            logs, state = super().train_step(*args)
            if optimizer is None or not optimizer.built:
                return logs, state
            mapping = list(zip(self.optimizer.variables, state[2]))
            with keras.StatelessScope(state_mapping=mapping):
                figures = optimizer.report().logs()
            return {**logs, **figures}, state
        if optimizer is not None and _per_example(optimizer.clipping):
            from keras_clip.privacy import step as per_example

            logs = per_example.train_step(self, *args)
        else:
            logs = super().train_step(*args)
        if optimizer is None or not optimizer.built:
            return logs
        return {**logs, **optimizer.report().logs()}

    def make_train_function(self, force: bool = False) -> Any:
        """Keras's train function, checked after it runs.

        After its first execution it warns once if the step never handed its
        gradients to the `ClippingOptimizer` (a custom `train_step` that uses
        another optimizer, or none). With `on_nonfinite="raise"` it checks the
        non-finite counter after each execution (one scalar read).
        """
        rebuilt = self.train_function is None or force
        result = super().make_train_function(force)
        optimizer = unwrap(self.optimizer)
        if rebuilt and optimizer is not None:
            self.train_function = self._checked(self.train_function, optimizer)
        return result if result is not None else self.train_function

    def _checked(self, train_function: Any, optimizer: ClippingOptimizer) -> Any:
        state = {"first": True}

        def updates() -> int:
            return sum(o.traced_updates for _, o in clipping_optimizers(self))

        def checked(*args: Any) -> Any:
            first = state["first"]
            before = updates() if first else 0  # Only around the first execution: it walks the model.
            result = train_function(*args)
            if first:
                state["first"] = False
                bypassed = optimizer.clipping is not None and updates() == before
                if bypassed and not getattr(self, "_bypass_warned", False):
                    self._bypass_warned = True
                    warnings.warn(_bypass_message(self, optimizer), UserWarning, stacklevel=2)
            if optimizer.on_nonfinite == "raise":
                self._raise_if_nonfinite(optimizer, result)
            return result

        return checked

    def _raise_if_nonfinite(self, optimizer: ClippingOptimizer, result: Any) -> None:
        if keras.backend.backend() == "jax":
            # `(logs, state)`: the count is in the logs; the state is written back before raising.
            logs, state = result
            seen = int(K.convert_to_numpy(logs.get("nonfinite_steps", 0)))
            if seen > getattr(self, "_nonfinite_seen", 0):
                names = ("trainable_variables", "non_trainable_variables", "optimizer_variables", "metrics_variables")
                self._jax_state, self._jax_state_synced = dict(zip(names, state)), False
                self.jax_state_sync()
        else:
            seen = int(K.convert_to_numpy(optimizer.figures.nonfinite_steps)) if optimizer.built else 0
        if seen > getattr(self, "_nonfinite_seen", 0):
            self._nonfinite_seen = seen
            raise NonFiniteGradientError(
                "A non-finite gradient (NaN or inf) was met; that step was not "
                f"applied ({seen} such steps so far). Lower the learning rate, "
                "clip harder, or compile with on_nonfinite='skip' to skip such steps."
            )


def _per_example(strategy: Any) -> bool:
    """Whether `strategy` is a `PerExampleClip` (whose module loads only on TensorFlow, when used)."""
    module = sys.modules.get("keras_clip.privacy.clip")
    return module is not None and isinstance(strategy, module.PerExampleClip)


def _strategy_scope(model: Any) -> Any:
    """The model's `tf.distribute` scope on TensorFlow; nothing on other backends."""
    strategy = getattr(model, "distribute_strategy", None)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _wrap(optimizer: Any, strategy: ClipStrategy | None, policy: str) -> Any:
    """The model's optimizer wrapped in a `ClippingOptimizer` (unless it is one)."""
    if unwrap(optimizer) is not None:
        if strategy is not None:
            raise ValueError(
                "The optimizer is a ClippingOptimizer already and `clipping` was passed too; "
                f"give the strategy to one of them. Received: clipping={strategy!r}, "
                f"optimizer={unwrap(optimizer)!r}"
            )
        return optimizer
    # Around a loss scaler too, so that overflows are counted (the scaler still skips them).
    return ClippingOptimizer(optimizer, strategy, policy)


def _bypass_message(model: Any, optimizer: ClippingOptimizer) -> str:
    return (
        f"{type(model).__name__} was compiled with clipping={optimizer.clipping!r}, but its training "
        "step never handed gradients to `self.optimizer.apply(...)`, so nothing was clipped or "
        "measured. A custom `train_step` must update through `self.optimizer` (a "
        "`keras_clip.ClippingOptimizer`), or wrap each optimizer it uses: "
        "`keras_clip.ClippingOptimizer(optimizer, clipping=...)`."
    )

"""`ClippingMixin`: a Keras `train_step` that clips where clipping is correct."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import keras
import tensorflow as tf
from keras.src.losses import loss as loss_module
from keras.src.trainers.data_adapters import data_adapter_utils

from keras_clip import ops
from keras_clip.strategies import get as get_strategy
from keras_clip.strategies.base import ClipStrategy, Stats
from keras_clip.training import accumulation, update
from keras_clip.training.policy import NonFiniteGradientError, validate_policy
from keras_clip.training.state import ClipState

_OPTIMIZER_CLIP_ARGS = ("clipnorm", "clipvalue", "global_clipnorm")


class ClippingMixin:
    """Adds configurable, correctly placed gradient clipping to a Keras model.

    Use it first in the bases of a subclassed model
    (`class Net(ClippingMixin, keras.Model)`), or use `ClippingModel` /
    `ClippingSequential`. `compile()` takes two more arguments, `clipping` and
    `on_nonfinite`; everything else about `compile()`, `fit()` and saving is
    Keras's own.

    Each training step computes the gradient, sums it across replicas once,
    removes the loss scale, applies the non-finite policy, clips it with the
    strategy (through the overridable `clip_gradients` hook) and hands it to
    the optimizer. It adds three entries to the logs and `History`:
    `grad_norm` (global L2 norm before clipping), `clipped_grad_norm` (after)
    and `nonfinite_steps` (non-finite steps met so far); with a strategy
    that can skip an update (its `skip` stat, e.g. `SkipSpikes`), also
    `skipped_steps` (finite steps not applied so far).

    Example:

    ```python
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

        Takes every argument of `keras.Model.compile`, plus:

        Args:
            clipping: A `ClipStrategy`, a name (`"value"`, `"norm"`,
                `"global_norm"`), a class name or a serialized dict (see
                `keras_clip.get`). None (the default) clips nothing but still
                reports the gradient norm.
            on_nonfinite: String. What a step does when the gradient holds a
                NaN or an infinity: `"skip"` (default) applies nothing, so
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
        if args:
            args = (keras.optimizers.get(args[0]), *args[1:])
        else:
            kwargs["optimizer"] = keras.optimizers.get(kwargs.get("optimizer", "rmsprop"))
        _refuse_double_clipping(args[0] if args else kwargs["optimizer"], strategy)
        super().compile(*args, **kwargs)
        with self.distribute_strategy.scope():
            self._clip_state = ClipState(strategy)
        self._on_nonfinite = policy
        self._nonfinite_seen = 0
        self._compile_config.config.update(clipping=strategy, on_nonfinite=policy)

    @property
    def clipping(self) -> ClipStrategy | None:
        """The strategy given to `compile()` (None: monitoring only)."""
        state = getattr(self, "_clip_state", None)
        return state.strategy if state is not None else None

    @property
    def on_nonfinite(self) -> str:
        """The non-finite policy given to `compile()`."""
        return getattr(self, "_on_nonfinite", "skip")

    def compile_from_config(self, config: dict[str, Any]) -> None:
        """Compiles from `get_compile_config()`, restoring the clipping too."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)
            self._build_clip_state()

    def _build_clip_state(self) -> None:
        if not self._clip_state.built:
            with self.distribute_strategy.scope():
                self._clip_state.build(self.trainable_variables)

    def _build_training_state(self) -> None:
        """Creates the clipping state and the optimizer's variables, once.

        The step reads the loss scale, which exists once the optimizer is
        built, and stateful strategies size their state by the variables.
        """
        if getattr(self, "_clip_state", None) is not None:
            self._build_clip_state()
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def make_train_function(self, force: bool = False) -> Any:
        """Builds the clipping state, then Keras's train function.

        A model built on first use (no `Input`) is built by the first trace
        instead, and the state right after it (see `train_step`).
        With `on_nonfinite="raise"` the function is wrapped to check the
        non-finite counter after each execution (one scalar read).
        """
        if self.built:
            self._build_training_state()
        rebuilt = self.train_function is None or force
        result = super().make_train_function(force)
        if rebuilt and self.on_nonfinite == "raise":
            self.train_function = self._raise_on_nonfinite(self.train_function)
        return result if result is not None else self.train_function

    def _raise_on_nonfinite(self, train_function: Any) -> Any:
        def checked(iterator: Any) -> Any:
            logs = train_function(iterator)
            seen = int(self._clip_state.nonfinite_steps.numpy())
            if seen > self._nonfinite_seen:
                self._nonfinite_seen = seen
                raise NonFiniteGradientError(
                    "A non-finite gradient (NaN or inf) was met; that step was not "
                    f"applied ({seen} such steps so far). Lower the learning rate, "
                    "clip harder, or compile with on_nonfinite='skip' to skip such steps."
                )
            return logs

        return checked

    def train_step(self, data: Any) -> dict[str, Any]:
        """One training step: forward, gradient, aggregate, unscale, clip, apply."""
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True) if self._call_has_training_arg else self(x)
            self._build_training_state()  # no-op unless the call above just built the model
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            batch = tf.shape(next(i for i in tf.nest.flatten(x) if i is not None))[0]
            self._loss_tracker.update_state(loss_module.unscale_loss_for_distribution(loss), sample_weight=batch)
            scaled_loss = self.optimizer.scale_loss(loss) if self.optimizer is not None else loss
        variables = self.trainable_variables
        stats: dict[str, Any] = {}
        if variables:
            grads = tape.gradient(scaled_loss, variables)
            stats = self._clip_and_apply(grads, variables)
        else:
            warnings.warn("The model does not have any trainable weights.", stacklevel=2)
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        return {**logs, **stats}

    def _clip_and_apply(self, grads: list[Any], variables: list[keras.Variable]) -> dict[str, tf.Tensor]:
        grads = update.all_reduce(grads)
        scale = update.loss_scale(self.optimizer)
        grads = update.rescale(grads, scale, divide=True)
        accumulating = accumulation.accumulation_steps(self.optimizer) is not None
        # Under a loss scaler a non-finite gradient is an overflow: never zeroed, always skipped.
        zeroing = self.on_nonfinite == "zero" and not isinstance(self.optimizer, update.LossScaleOptimizer)
        finite = None
        if zeroing or accumulating:
            finite = ops.all_finite(grads)
        if zeroing:
            grads = [None if g is None else ops.zero_nonfinite(g) for g in grads]
        if accumulating:
            # The optimizer clips the averaged gradient on each real update.
            clipped, stats = grads, None
        else:
            clipped, stats = self.clip_gradients(grads, variables)
            if finite is None:
                finite = tf.math.is_finite(stats["grad_norm"])
        counter = self._clip_state.nonfinite_steps
        counter.assign_add(tf.where(finite, tf.constant(0, tf.int64), tf.constant(1, tf.int64)))
        # A strategy that wants the update not applied reports `skip` (a bool scalar).
        skip = stats.pop("skip", None) if stats is not None else None
        counts = {"nonfinite_steps": counter.value}
        if skip is not None:
            skipped = self._clip_state.skipped_steps
            skipped.assign_add(tf.cast(tf.logical_and(finite, skip), tf.int64))
            counts["skipped_steps"] = skipped.value
        self._apply(update.rescale(clipped, scale, divide=False), variables, finite, skip)
        if stats is None:
            stats = self._clip_state.update_stats()
        recorder = getattr(self, "_step_recorder", None)
        if recorder is not None:
            recorder.record({**stats, **counts}, grads, variables)
        return {
            "grad_norm": stats["grad_norm"],
            "clipped_grad_norm": stats["clipped_grad_norm"],
            **{name: tf.identity(value) for name, value in counts.items()},
        }

    def _apply(
        self, grads: list[Any], variables: list[keras.Variable], finite: tf.Tensor, skip: tf.Tensor | None = None
    ) -> None:
        # Variables without a gradient (unused in the loss) are left out.
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        grads, variables = [g for g, _ in pairs], [v for _, v in pairs]
        optimizer = self.optimizer
        if accumulation.accumulation_steps(optimizer) is not None:
            accumulation.install_clip_hook(self, variables)
        with update.apply_as_given(optimizer):
            if isinstance(optimizer, update.LossScaleOptimizer) or self.on_nonfinite in ("zero", "propagate"):
                # A LossScaleOptimizer skips non-finite steps and halves its scale itself.
                if skip is None:
                    optimizer.apply(grads, variables)
                else:
                    update.run_if(tf.logical_not(skip), lambda g: optimizer.apply(g, variables), args=(grads,))
            else:
                gate = finite if skip is None else tf.logical_and(finite, tf.logical_not(skip))
                update.run_if(gate, lambda g: optimizer.apply(g, variables), args=(grads,))

    def clip_gradients(
        self, grads: Sequence[ops.Gradient | None], variables: Sequence[keras.Variable]
    ) -> tuple[list[ops.Gradient | None], Stats]:
        """The clip hook: override it to change how gradients are clipped.

        It receives the gradient of the global batch, all-reduced and unscaled,
        once per optimizer update, and returns `(clipped, stats)` where `stats`
        holds at least `grad_norm` and `clipped_grad_norm` (float32 scalars).

        Args:
            grads: Sequence of Tensor, IndexedSlices or None.
            variables: Sequence of keras.Variable, the matching variables.
        """
        strategy = self._clip_state.strategy
        if strategy is None:
            norm = ops.global_norm(grads)
            return list(grads), {"grad_norm": norm, "clipped_grad_norm": norm}
        return strategy.clip(grads, variables)


def _refuse_double_clipping(optimizer: keras.optimizers.Optimizer, strategy: ClipStrategy | None) -> None:
    if strategy is None:
        return
    inner = optimizer.inner_optimizer if isinstance(optimizer, update.LossScaleOptimizer) else optimizer
    set_args = [name for name in _OPTIMIZER_CLIP_ARGS if getattr(inner, name, None)]
    if set_args:
        listed = ", ".join(f"`{name}={getattr(inner, name)!r}`" for name in set_args)
        raise ValueError(
            f"The optimizer clips gradients itself ({listed}) and `clipping={strategy!r}` "
            "was passed to compile(): gradients would be clipped twice, the optimizer's "
            f"clip before gradients are aggregated. Remove {listed} from the optimizer, "
            "or pass clipping=None."
        )

"""`ClippingOptimizer`: the one place that clips, where every Keras training step ends."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import keras
from keras import ops as K

from keras_clip import ops
from keras_clip.strategies import get as get_strategy
from keras_clip.strategies.base import ClipStrategy, Stats, rescaled
from keras_clip.training import backend as distribute
from keras_clip.training import recorder as recorder_lib
from keras_clip.training.policy import NonFinitePolicy
from keras_clip.training.report import ClipReport, UpdateFigures

LossScaleOptimizer = keras.optimizers.LossScaleOptimizer
_OPTIMIZER_CLIP_ARGS = ("clipnorm", "clipvalue", "global_clipnorm")


@keras.saving.register_keras_serializable(package="keras_clip")
class ClippingOptimizer(keras.optimizers.Optimizer):
    """Wraps any Keras optimizer so that every update it makes is clipped.

    Once per real update, `apply(grads, variables)` (and `apply_gradients`):
    sums the gradient across replicas once (under `tf.distribute`), removes
    the loss scale, applies the non-finite policy, clips with the strategy
    (through the overridable `clip_gradients`) and hands the result to the
    inner optimizer. Any training step that gives gradients to an optimizer is
    clipped this way: `fit`, a custom `train_step`, a GAN with two optimizers,
    a `tf.GradientTape` loop. The latest update's figures are read with
    `report()`; the gradient callbacks read them every step.

    With `gradient_accumulation_steps=k` on the inner optimizer, the wrapper
    accumulates the (all-reduced, unscaled) micro-batch gradients itself and
    clips their average once per real update, as Keras clips it.

    Args:
        optimizer: keras.optimizers.Optimizer, or a name or config that
            `keras.optimizers.get` accepts. The optimizer that updates the
            weights. It must not clip on its own (`clipnorm`, ...).
        clipping: A `ClipStrategy`, a name or a serialized dict (see
            `keras_clip.get`). None clips nothing and still reports norms.
        on_nonfinite: String. `"skip"` (default), `"zero"`, `"raise"` or
            `"propagate"` (see `NonFinitePolicy`).
        name: String. The optimizer's name.

    Example:

    ```python
    optimizer = keras_clip.ClippingOptimizer(keras.optimizers.Adam(1e-3), keras_clip.ClipByGlobalNorm(1.0))
    model.compile(optimizer=optimizer, loss="mse")          # any keras.Model
    with tf.GradientTape() as tape:                          # or a loop of your own
        loss = loss_fn(y, model(x, training=True))
    optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    optimizer.report().grad_norm
    ```
    """

    def __init__(
        self, optimizer: Any, clipping: Any = None, on_nonfinite: str = "skip", name: str | None = None, **kwargs: Any
    ) -> None:
        if kwargs:
            raise ValueError(
                "ClippingOptimizer takes no optimizer arguments of its own; set them on the inner "
                f"optimizer. Received: {sorted(kwargs)}"
            )
        inner = keras.optimizers.get(optimizer)
        strategy = get_strategy(clipping)
        policy = NonFinitePolicy(on_nonfinite)
        _refuse_double_clipping(inner, strategy)
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner
        self._strategy = strategy
        self._policy = policy
        # The wrapper accumulates itself (it must clip the average of all-reduced gradients).
        holder = inner.inner_optimizer if isinstance(inner, LossScaleOptimizer) else inner
        self.accumulation_steps = holder.gradient_accumulation_steps or None
        holder.gradient_accumulation_steps = None
        self.traced_updates = 0  # Python count of traced (or eager) `apply` calls.
        self.recorder: Any = None  # Owned by the training side; the callbacks read it.
        self.recording: Any = None  # What the callbacks asked to record (see `recorder.attach`).

    @property
    def clipping(self) -> ClipStrategy | None:
        """The clipping strategy (None: monitoring only)."""
        return self._strategy

    @property
    def on_nonfinite(self) -> str:
        """The non-finite policy's name."""
        return self._policy.name

    @keras.src.utils.tracking.no_automatic_dependency_tracking
    def build(self, var_list: Sequence[keras.Variable]) -> None:
        """Creates the inner optimizer's, the strategy's and the figures' variables."""
        var_list = list(var_list)
        if not self.inner_optimizer.built:
            self.inner_optimizer.build(var_list)
        super().build(var_list)
        self.figures = UpdateFigures(self._make_variable)
        self._accumulators = []
        if self.accumulation_steps:
            self._accumulators = [
                self.add_variable_from_reference(v, name="accumulated_gradient") for v in var_list
            ]
        if self._strategy is not None:
            if not self._strategy.built:
                self._strategy.build(var_list)
            for variable in self._strategy.variables:
                self._track_variable(variable)

    def _make_variable(self, name: str, shape: tuple, dtype: str) -> keras.Variable:
        return self.add_variable(
            shape, initializer="zeros", dtype=dtype, aggregation="only_first_replica", name=name
        )

    @property
    def variables(self) -> list[keras.Variable]:
        """The wrapper's variables (counters, figures, strategy state), then the inner optimizer's."""
        return self._variables + self.inner_optimizer.variables

    def apply(self, grads: Sequence[Any], trainable_variables: Sequence[keras.Variable] | None = None) -> None:
        """Clips the gradient of the global batch once and updates the weights.

        Args:
            grads: Sequence of Tensor, IndexedSlices or None (the gradient of
                the possibly scaled loss, as Keras's steps compute it).
            trainable_variables: Sequence of keras.Variable. Needed on the
                first call (it builds the optimizer), else the built ones.
        """
        self.traced_updates += 1
        if trainable_variables is None:
            trainable_variables = self._trainable_variables
        variables = list(trainable_variables)
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(variables)
            self.built = True
        if self.recorder is None and self.recording is not None:
            recorder_lib.ensure_recorder(self)
        grads = distribute.all_reduce(grads)
        positions = [i for i, g in enumerate(grads) if g is not None]
        if not positions:
            raise ValueError("No gradients provided for any variable.")
        _warn_missing(grads, variables)
        present = [ops.deduplicate(grads[i]) for i in positions]
        variables = [variables[i] for i in positions]
        scale = self._loss_scale()
        unscaled = _rescale(present, scale, divide=True)
        overflow = isinstance(self.inner_optimizer, LossScaleOptimizer)
        unscaled, finite = self._policy.repair(unscaled, overflow=overflow)
        if self.accumulation_steps:
            finite = ops.all_finite(unscaled) if finite is None else finite
            self.figures.count_nonfinite(finite)
            self._accumulate(unscaled, variables, self._policy.allows(finite, overflow=overflow), scale)
        else:
            if finite is not None:
                self.figures.count_nonfinite(finite)
            self._clip_and_update(unscaled, variables, finite, scale)
        if self.recorder is not None:
            self.recorder.record(self.figures.stats(), grads, list(trainable_variables))

    def _clip_and_update(
        self, grads: list[Any], variables: list[keras.Variable], finite: Any, scale: Any
    ) -> None:
        """Clips, records the figures and applies unless the policy or the strategy says skip.

        `finite`: whether the incoming gradient was finite, when the policy
        already looked; None: read off the clip's `grad_norm` and counted here.
        """
        clipped, stats = self._clip(grads, variables)
        if finite is None:
            finite = K.isfinite(stats["grad_norm"])
            self.figures.count_nonfinite(finite)
        skip = _skip_of(stats)
        self.figures.store(stats, skip)
        go = self._policy.allows(finite)
        if isinstance(self.inner_optimizer, LossScaleOptimizer):
            # The loss scaler checks the gradient itself: it skips and lowers its scale on overflow.
            go = K.convert_to_tensor(True)
        distribute.run_if(
            K.logical_and(go, K.logical_not(skip)),
            lambda: distribute.apply_reduced(self.inner_optimizer, _rescale(clipped(), scale, divide=False), variables),
        )

    def _clip(self, grads: list[Any], variables: list[keras.Variable]) -> tuple[Callable[[], list], Stats]:
        """The clip hook's result, with the clipped gradients formed by a function the update calls.

        For a strategy that only rescales (and no `clip_gradients` override),
        the products are formed inside the update: XLA does not fuse across
        the conditional update, so clipped gradients formed before it would be
        written out and read back once more; inside, they fuse into the inner
        optimizer's arithmetic. The strategy's state moves here, either way.
        """
        strategy = self._strategy
        if strategy is not None and strategy.rescales and type(self).clip_gradients is ClippingOptimizer.clip_gradients:
            factors, stats = strategy.rescale(grads, variables)
            return (lambda: rescaled(grads, factors)), stats
        clipped, stats = self.clip_gradients(grads, variables)
        return (lambda: clipped), stats

    def _accumulate(self, grads: list[Any], variables: list[keras.Variable], go: Any, scale: Any) -> None:
        """Adds a micro-batch's gradient; every k-th one, clips the average and updates.

        The strategy sees only the averaged gradient of real updates (its
        state moves once per update); between them the figures keep
        describing the last real update.
        """
        steps = self.accumulation_steps
        accumulators = [self._accumulators[self._get_variable_index(v)] for v in variables]
        totals = [a.value + ops.densify(g, a.shape) for a, g in zip(accumulators, grads)]
        real = K.equal((self._iterations + 1) % steps, 0)

        def add() -> None:
            for a, t in zip(accumulators, totals):
                a.assign(t)
            self._iterations.assign_add(1)

        def update() -> None:
            # Only finite micro-batches were added (counted above, as they came).
            self._clip_and_update([t / steps for t in totals], variables, K.convert_to_tensor(True), scale)
            for a in accumulators:
                a.assign(K.zeros_like(a))
            self._iterations.assign_add(1)

        distribute.run_if(K.logical_and(go, K.logical_not(real)), add)
        distribute.run_if(K.logical_and(go, real), update)

    def clip_gradients(self, grads: Sequence[ops.Gradient], variables: Sequence[keras.Variable]) -> tuple[list, Stats]:
        """The clip hook: override it in a subclass to change how gradients are clipped.

        It receives the gradient of the global batch (all-reduced, unscaled,
        no None), once per update, and returns `(clipped, stats)` where
        `stats` holds at least `grad_norm` and `clipped_grad_norm` (float32
        scalars).

        Args:
            grads: Sequence of Tensor or IndexedSlices.
            variables: Sequence of keras.Variable, the matching variables.
        """
        if self._strategy is None:
            norm = ops.global_norm(grads)
            return list(grads), {"grad_norm": norm, "clipped_grad_norm": norm}
        return self._strategy.clip(grads, variables)

    def report(self, optimizer_variables: Sequence[Any] | None = None) -> ClipReport:
        """The latest update's figures, as one typed record of tensors.

        Args:
            optimizer_variables: Sequence of tensors or None. In a stateless
                step (JAX), the values of `variables` that `stateless_apply`
                returned: the figures are read from them. None reads the
                variables themselves.
        """
        if not self.built:
            raise ValueError("The optimizer has made no update yet: call `apply` (or `fit`) first.")
        if optimizer_variables is None:
            return self.figures.report()
        with keras.StatelessScope(state_mapping=list(zip(self.variables, optimizer_variables))):
            return self.figures.report()

    def _loss_scale(self) -> Any:
        inner = self.inner_optimizer
        if isinstance(inner, LossScaleOptimizer):
            return inner.dynamic_scale
        return inner.loss_scale_factor

    def scale_loss(self, loss: Any) -> Any:
        """Scales the loss as the inner optimizer does (mixed precision)."""
        return self.inner_optimizer.scale_loss(loss)

    @property
    def learning_rate(self) -> Any:
        """The inner optimizer's learning rate (settable)."""
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate: Any) -> None:
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self) -> Any:
        """The inner optimizer's count of real updates."""
        return self.inner_optimizer.iterations

    def finalize_variable_values(self, var_list: Sequence[keras.Variable]) -> None:
        """Lets the inner optimizer finalize (e.g. swap in EMA weights)."""
        self.inner_optimizer.finalize_variable_values(var_list)

    def stateless_apply(self, optimizer_variables: Any, grads: Any, trainable_variables: Any) -> tuple[list, list]:
        """The stateless update (JAX): clips and applies, returns the new values.

        Strategy state and the update's figures are optimizer variables, so
        they come in with `optimizer_variables` and go out with the result,
        like the inner optimizer's slots. A skipped update (non-finite
        gradient under `"skip"`, or a strategy's skip) returns every value
        unchanged, the iteration counter included.

        Args:
            optimizer_variables: List of tensors, the values of `variables`.
            grads: List of tensors, one per trainable variable.
            trainable_variables: List of tensors, the values of the
                variables the optimizer was built with.

        Returns:
            `(trainable_variables, optimizer_variables)`: the new values.
        """
        return super().stateless_apply(optimizer_variables, grads, trainable_variables)

    def get_config(self) -> dict[str, Any]:
        """The inner optimizer, strategy and policy, serialized."""
        inner = keras.saving.serialize_keras_object(self.inner_optimizer)
        if self.accumulation_steps:
            inner["config"]["gradient_accumulation_steps"] = self.accumulation_steps
        return {
            "name": self.name,
            "optimizer": inner,
            "clipping": None if self._strategy is None else keras.saving.serialize_keras_object(self._strategy),
            "on_nonfinite": self.on_nonfinite,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> ClippingOptimizer:
        """Builds the wrapper from `get_config()`."""
        config = dict(config)
        optimizer = keras.saving.deserialize_keras_object(config.pop("optimizer"), custom_objects=custom_objects)
        return cls(optimizer, **config)

    def __repr__(self) -> str:
        return f"ClippingOptimizer({type(self.inner_optimizer).__name__}, clipping={self._strategy!r})"


def _skip_of(stats: Stats) -> Any:
    skip = stats.get("skip")
    return K.convert_to_tensor(False) if skip is None else K.cast(skip, "bool")


def _rescale(grads: Sequence[Any], factor: Any, *, divide: bool) -> list[Any]:
    """Divides (or multiplies) gradients by a loss scale; powers of two make it exact."""
    if factor is None:
        return list(grads)
    factor = K.cast(K.convert_to_tensor(factor), "float32")
    factor = 1.0 / factor if divide else factor
    return [ops.scale(g, factor) for g in grads]


def _warn_missing(grads: Sequence[Any], variables: Sequence[keras.Variable]) -> None:
    missing = [getattr(v, "path", v.name) for g, v in zip(grads, variables) if g is None]
    if missing:
        warnings.warn(
            f"Gradients do not exist for variables {missing} when minimizing the loss. "
            "If using `model.compile()`, did you forget to provide a `loss` argument?",
            stacklevel=3,
        )


def _refuse_double_clipping(optimizer: keras.optimizers.Optimizer, strategy: ClipStrategy | None) -> None:
    if strategy is None:
        return
    inner = optimizer.inner_optimizer if isinstance(optimizer, LossScaleOptimizer) else optimizer
    set_args = [name for name in _OPTIMIZER_CLIP_ARGS if getattr(inner, name, None)]
    if set_args:
        listed = ", ".join(f"`{name}={getattr(inner, name)!r}`" for name in set_args)
        raise ValueError(
            f"The optimizer clips gradients itself ({listed}) and `clipping={strategy!r}` "
            "was passed: gradients would be clipped twice, the optimizer's clip before "
            f"gradients are aggregated. Remove {listed} from the optimizer (pass an "
            "explicit optimizer if this one was a default), or pass clipping=None."
        )


def clipping_optimizers(model: Any) -> list[tuple[str, ClippingOptimizer]]:
    """Every `ClippingOptimizer` a model holds, with the tag prefix of each.

    `model.optimizer` comes first, with the prefix `""`; any other attribute
    holding one (`d_optimizer`, ...) is prefixed by its name (`"d_optimizer/"`).
    A `LossScaleOptimizer` around one counts as the one inside.
    """
    found: list[tuple[str, ClippingOptimizer]] = []
    seen: set[int] = set()
    candidates = [("optimizer", getattr(model, "optimizer", None))]
    candidates += [(k, v) for k, v in vars(model).items() if not k.startswith("_") and k != "optimizer"]
    for name, value in candidates:
        optimizer = unwrap(value)
        if optimizer is not None and id(optimizer) not in seen:
            seen.add(id(optimizer))
            found.append(("" if name == "optimizer" else f"{name}/", optimizer))
    return found


def unwrap(optimizer: Any) -> ClippingOptimizer | None:
    """The `ClippingOptimizer` that is, or is inside, `optimizer` (else None)."""
    if isinstance(optimizer, LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    return optimizer if isinstance(optimizer, ClippingOptimizer) else None

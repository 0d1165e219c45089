"""Ready-made clipping models: functional and sequential."""

from __future__ import annotations

from typing import Any

import keras
from keras.src.models.functional import Functional
from keras.src.models.model import functional_init_arguments
from keras.src.saving import object_registration

from keras_clip.training.mixin import ClippingMixin

# One functional twin per class built with `(inputs, outputs)`, made once.
_FUNCTIONAL_TWINS: dict[type, type] = {}


@keras.saving.register_keras_serializable(package="keras_clip")
class ClippingModel(ClippingMixin, keras.Model):
    """A `keras.Model` whose `compile()` takes `clipping=` and `on_nonfinite=`.

    Build it like `keras.Model`: functionally (`ClippingModel(inputs,
    outputs)`) or by subclassing it, in either order in one process. See
    `ClippingMixin` for `compile()` and `ClippingOptimizer` for the update.

    Like `keras.Model(inputs, outputs)`, which is a `Functional`, a model
    built functionally is an instance of a functional twin of the class (a
    subclass of both it and `Functional`), so the class itself is never
    rewritten and stays usable for subclassing.

    Example:

    ```python
    inputs = keras.Input((20,))
    hidden = keras.layers.Dense(25, activation="relu")(inputs)
    model = keras_clip.ClippingModel(inputs, keras.layers.Dense(1)(hidden))
    model.compile(optimizer="sgd", loss="mse", clipping=keras_clip.ClipByGlobalNorm(1.0))
    history = model.fit(x, y)
    history.history["grad_norm"]
    ```
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if functional_init_arguments(args, kwargs) and not issubclass(cls, Functional):
            cls = functional_twin(cls)
        return super().__new__(cls, *args, **kwargs)


def functional_twin(cls: type) -> type:
    """`cls` with `Functional` after it in the MRO, saved and loaded under `cls`'s name.

    Keras's own way (`inject_functional_model_class`) rewrites the bases of
    the class used functionally, and of its bases, for good: a later
    `class Net(ClippingModel)` built by subclassing would then need
    `inputs` and `outputs`. The twin leaves `cls` as it is.
    """
    twin = _FUNCTIONAL_TWINS.get(cls)
    if twin is None:
        twin = type(cls.__name__, (cls, Functional), {"__module__": cls.__module__, "__doc__": cls.__doc__})
        object_registration.GLOBAL_CUSTOM_NAMES[twin] = object_registration.get_registered_name(cls)
        _FUNCTIONAL_TWINS[cls] = twin
    return twin


@keras.saving.register_keras_serializable(package="keras_clip")
class ClippingSequential(ClippingMixin, keras.Sequential):
    """A `keras.Sequential` whose `compile()` takes `clipping=` and `on_nonfinite=`.

    Example:

    ```python
    model = keras_clip.ClippingSequential([keras.Input((20,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", clipping="global_norm")
    ```
    """

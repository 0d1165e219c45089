"""keras_clip: gradient clipping for Keras 3, configured in `compile()`.

Example:

```python
import keras, keras_clip as kc

model = kc.ClippingModel(inputs, outputs)
model.compile(optimizer="adam", loss="mse", clipping=kc.ClipByGlobalNorm(1.0))
model.fit(x, y)   # logs grad_norm, clipped_grad_norm, nonfinite_steps
```
"""

# First: when this process is the `keras-clip` command, set the backend's log levels before TensorFlow loads.
import keras_clip._entry  # noqa: F401
from keras_clip import ops
from keras_clip.callbacks import GradientNormLogger, GradientSpikeMonitor
from keras_clip.strategies import (
    AdaGC,
    AdaptiveGradClip,
    AutoClip,
    ByVariable,
    Chain,
    ClipByBlockRMS,
    ClipByGlobalNorm,
    ClipByNorm,
    ClipByValue,
    ClipStrategy,
    SkipSpikes,
    ZClip,
    get,
)
from keras_clip.training import (
    NONFINITE_POLICIES,
    ClippingMixin,
    ClippingModel,
    ClippingOptimizer,
    ClippingSequential,
    ClipReport,
    NonFiniteGradientError,
)
from keras_clip.training.backend import BACKEND as _BACKEND

__version__ = "0.1.0"

# Per-example clipping (DP-SGD) is built on TensorFlow: it is imported only on that backend.
_TF_ONLY = ("PerExampleClip", "privacy")
if _BACKEND == "tensorflow":
    from keras_clip import privacy
    from keras_clip.privacy import PerExampleClip

__all__ = [
    "NONFINITE_POLICIES",
    "AdaGC",
    "AdaptiveGradClip",
    "AutoClip",
    "ByVariable",
    "Chain",
    "ClipByBlockRMS",
    "ClipByGlobalNorm",
    "ClipByNorm",
    "ClipByValue",
    "ClipReport",
    "ClipStrategy",
    "ClippingMixin",
    "ClippingModel",
    "ClippingOptimizer",
    "ClippingSequential",
    "GradientNormLogger",
    "GradientSpikeMonitor",
    "NonFiniteGradientError",
    "PerExampleClip",
    "SkipSpikes",
    "ZClip",
    "get",
    "ops",
    "privacy",
]
if _BACKEND != "tensorflow":
    __all__ = [name for name in __all__ if name not in _TF_ONLY]


def __getattr__(name: str):
    if name in _TF_ONLY:
        import keras_clip.privacy  # noqa: F401  (raises: TensorFlow backend only)
    raise AttributeError(f"module 'keras_clip' has no attribute {name!r}")

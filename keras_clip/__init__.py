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
from keras_clip import ops, privacy
from keras_clip.callbacks import GradientNormLogger, GradientSpikeMonitor
from keras_clip.privacy import PerExampleClip
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

__version__ = "0.1.0"

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

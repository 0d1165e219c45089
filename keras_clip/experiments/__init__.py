"""The experiment harness behind `keras-clip`, the benchmarks and the tests.

Two seeded, synthetic problems where clipping decides the outcome (the seed
regression and an IRNN on a long-range sum), their models and optimizers,
and a driver that trains one named run and summarizes what its gradients
did. Everything here is deterministic on one machine and needs no download.

Example:

```python
from keras_clip import ClipByGlobalNorm
from keras_clip.experiments import RunSpec, problems, train

spec = RunSpec(
    name="seed/global-norm",
    build_model=problems.seed_model,
    build_optimizer=lambda: problems.sgd(problems.SEED_LEARNING_RATE, problems.SEED_MOMENTUM),
    data=problems.regression_data(),
    clipping=ClipByGlobalNorm(1.0),
    label="ClipByGlobalNorm(1.0)",
    epochs=50,
    batch_size=problems.SEED_BATCH_SIZE,
)
result = train(spec, callbacks=[], seed=1)
result.outcome, result.steps_clipped   # ("converged", 400): every step was clipped
```
"""

from keras_clip.experiments import problems
from keras_clip.experiments.runs import NormRecorder, RunResult, RunSpec, train

__all__ = ["NormRecorder", "RunResult", "RunSpec", "problems", "train"]

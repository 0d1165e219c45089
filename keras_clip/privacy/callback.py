"""`PrivacyBudget`: ε after every epoch, in the logs and TensorBoard, and a stop at a budget."""

from __future__ import annotations

from typing import Any

from keras_clip.callbacks.base import WriterCallback
from keras_clip.privacy.accounting import epsilon
from keras_clip.privacy.clip import PerExampleClip
from keras_clip.training.optimizer import unwrap


class PrivacyBudget(WriterCallback):
    """Logs the privacy spent (ε) after every epoch and stops training before a budget is exceeded.

    After each epoch it computes ε with `keras_clip.privacy.epsilon` for the
    updates made so far (the optimizer's `iterations`), adds it to the logs
    (`epsilon`, so `History` keeps it) and, with `log_dir`, writes it to
    TensorBoard as `privacy/epsilon` under `<log_dir>/train` against the
    update count. With `max_epsilon`, it stops training when one more epoch
    would spend more than the budget, so the budget is never exceeded.

    The guarantee assumes Poisson sampling with probability `sample_rate`
    (see `keras_clip.privacy.poisson_batches` and `docs/privacy.md`).

    Args:
        sample_rate: Float. The probability that an example joins a batch
            (batch size / dataset size), in (0, 1].
        delta: Float. The δ of (ε, δ).
        log_dir: String or None. Where to write `privacy/epsilon` (none by default).
        max_epsilon: Float or None. The budget: training stops before it is exceeded.
        noise_multiplier: Float or None. Defaults to the model's `PerExampleClip`'s.

    Example:

    ```python
    budget = keras_clip.privacy.PrivacyBudget(sample_rate=256 / len(x), delta=1e-5, log_dir="runs/dp",
                                             max_epsilon=3.0)
    model.fit(x, y, batch_size=256, epochs=100, callbacks=[budget])
    ```
    """

    def __init__(
        self,
        sample_rate: float,
        delta: float,
        log_dir: str | None = None,
        max_epsilon: float | None = None,
        noise_multiplier: float | None = None,
    ) -> None:
        super().__init__()
        if max_epsilon is not None and not max_epsilon > 0:
            raise ValueError(f"`max_epsilon` must be positive or None. Received: max_epsilon={max_epsilon}")
        epsilon(1.0, sample_rate, 0, delta)  # validates sample_rate and delta
        self.sample_rate = sample_rate
        self.delta = delta
        self.log_dir = log_dir
        self.max_epsilon = max_epsilon
        self.noise_multiplier = noise_multiplier
        self.epsilon: float | None = None

    def _sigma(self) -> float:
        if self.noise_multiplier is not None:
            return float(self.noise_multiplier)
        optimizer = unwrap(getattr(self.model, "optimizer", None))
        clipping = optimizer.clipping if optimizer is not None else None
        if not isinstance(clipping, PerExampleClip):
            raise ValueError(
                "PrivacyBudget needs the noise multiplier: compile the model with "
                "clipping=keras_clip.PerExampleClip(...) or pass noise_multiplier=. "
                f"Received: clipping={clipping!r}"
            )
        return clipping.noise_multiplier

    def _epsilon(self, steps: int) -> float:
        return epsilon(self._sigma(), self.sample_rate, steps, self.delta)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        steps = int(self.model.optimizer.iterations.numpy())
        self.epsilon = self._epsilon(steps)
        if logs is not None:
            logs["epsilon"] = self.epsilon
        if self.log_dir is not None:
            self._train_writer.scalars(steps, {"privacy/epsilon": self.epsilon})
        per_epoch = self.params.get("steps") if self.params else None
        if self.max_epsilon is not None and per_epoch:
            if self._epsilon(steps + int(per_epoch)) > self.max_epsilon:
                self.model.stop_training = True

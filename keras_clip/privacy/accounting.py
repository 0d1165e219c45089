"""The privacy budget of DP-SGD, from Google's `dp-accounting` package (RDP accountant).

The guarantee these functions compute assumes Poisson sampling: at each step
every example joins the batch independently with probability `sample_rate`.
See `docs/privacy.md` for what shuffled fixed-size batches change.
"""

from __future__ import annotations

from typing import Any


def _dp_accounting() -> Any:
    try:
        import dp_accounting
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Privacy accounting needs Google's `dp-accounting` package: `pip install keras-clip[privacy]` "
            "(or `pip install dp-accounting`)."
        ) from error
    return dp_accounting


def _validate(sample_rate: float, steps: int, delta: float) -> None:
    if not 0 < sample_rate <= 1:
        raise ValueError(f"`sample_rate` must be in (0, 1]. Received: sample_rate={sample_rate}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"`steps` must be an int >= 0. Received: steps={steps!r}")
    if not 0 < delta < 1:
        raise ValueError(f"`delta` must be in (0, 1). Received: delta={delta}")


def dp_sgd_event(noise_multiplier: float, sample_rate: float, steps: int) -> Any:
    """The `dp_accounting` event of `steps` Poisson-sampled Gaussian steps.

    Args:
        noise_multiplier: Float. The noise's std in units of the clip norm.
        sample_rate: Float. The probability q that an example joins a batch
            (batch size / dataset size).
        steps: Int. The number of updates.
    """
    dp = _dp_accounting()
    step = dp.PoissonSampledDpEvent(sample_rate, dp.GaussianDpEvent(noise_multiplier))
    return dp.SelfComposedDpEvent(step, steps)


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """The ε of (ε, δ)-differential privacy that DP-SGD training gives.

    Computed by `dp_accounting`'s RDP accountant (its default orders) for
    `steps` updates, each a Gaussian mechanism of std `noise_multiplier`
    (in units of the clip norm) on a Poisson-sampled batch.

    Args:
        noise_multiplier: Float. `PerExampleClip`'s `noise_multiplier` (>= 0;
            0 gives infinity).
        sample_rate: Float. The probability that an example joins a batch,
            in (0, 1]: the expected batch size over the dataset size.
        steps: Int. The number of updates (`epochs * steps_per_epoch`).
        delta: Float. The δ of (ε, δ), in (0, 1); commonly below 1 / dataset size.

    Returns:
        ε as a float (`inf` without noise).

    Example:

    ```python
    keras_clip.privacy.epsilon(1.1, sample_rate=256 / 60000, steps=60 * 60000 // 256, delta=1e-5)  # about 3
    ```

    References:
        - Mironov, [Rényi Differential Privacy](https://arxiv.org/abs/1702.07476), 2017.
        - Mironov, Talwar, Zhang, [Rényi Differential Privacy of the Sampled Gaussian
          Mechanism](https://arxiv.org/abs/1908.10530), 2019.
    """
    _validate(sample_rate, steps, delta)
    if noise_multiplier < 0:
        raise ValueError(f"`noise_multiplier` must be >= 0. Received: noise_multiplier={noise_multiplier}")
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    accountant = _dp_accounting().rdp.RdpAccountant()
    accountant.compose(dp_sgd_event(noise_multiplier, sample_rate, steps))
    return float(accountant.get_epsilon(delta))


def noise_multiplier_for(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier whose `epsilon(...)` is at most `target_epsilon`.

    Searched by `dp_accounting.calibrate_dp_mechanism` with the same RDP
    accountant as `epsilon`, so `epsilon(noise_multiplier_for(e, ...), ...)
    <= e`, within the search's tolerance below it.

    Args:
        target_epsilon: Float. The budget ε, positive.
        delta: Float. The δ of (ε, δ), in (0, 1).
        sample_rate: Float. The probability that an example joins a batch, in (0, 1].
        steps: Int. The number of updates, positive.

    Example:

    ```python
    sigma = keras_clip.privacy.noise_multiplier_for(3.0, delta=1e-5, sample_rate=0.01, steps=1000)
    ```
    """
    _validate(sample_rate, steps, delta)
    if not target_epsilon > 0:
        raise ValueError(f"`target_epsilon` must be positive. Received: target_epsilon={target_epsilon}")
    if steps == 0:
        return 0.0
    dp = _dp_accounting()
    return float(
        dp.calibrate_dp_mechanism(
            dp.rdp.RdpAccountant,
            lambda sigma: dp_sgd_event(sigma, sample_rate, steps),
            target_epsilon,
            delta,
            bracket_interval=dp.LowerEndpointAndGuess(0.0, 1.0),
            tol=1e-4,
        )
    )

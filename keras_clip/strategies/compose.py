"""Composition: strategies applied in turn (`Chain`) or per variable (`ByVariable`)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import keras
from keras import ops as K

from keras_clip import ops
from keras_clip.strategies._paths import matches, path_of, warn_unmatched
from keras_clip.strategies.base import ClipStrategy, Stats, implements_rescale, rescaled


def _strategy_arg(name: str, value: Any, *, allow_none: bool = False) -> ClipStrategy | None:
    """A strategy instance, a serialized one (dict), or None where allowed."""
    if isinstance(value, dict):
        value = keras.saving.deserialize_keras_object(value)
    if isinstance(value, ClipStrategy) or (allow_none and value is None):
        return value
    kind = "a keras_clip strategy or None" if allow_none else "a keras_clip strategy"
    raise TypeError(f"`{name}` must be {kind}. Received: {name}={value!r} (of type {type(value).__name__})")


def _refuse_shared(name: str, strategies: Sequence[ClipStrategy | None]) -> None:
    """One instance used twice would be built twice and step its state twice."""
    present = [s for s in strategies if s is not None]
    if len({id(s) for s in present}) != len(present):
        raise ValueError(
            f"Each strategy in `{name}` must be a separate instance (a stateful one would "
            f"update its state twice per step). Received: {name}={list(strategies)!r}"
        )


def _serialize(strategy: ClipStrategy | None) -> dict[str, Any] | None:
    return None if strategy is None else keras.saving.serialize_keras_object(strategy)


@keras.saving.register_keras_serializable(package="keras_clip")
class Chain(ClipStrategy):
    """Applies strategies one after another, each to the previous one's output.

    `Chain(ClipByValue(5.0), ClipByGlobalNorm(1.0))` first bounds every entry,
    then the global norm of what is left. Each member keeps its own state.

    Stats: `grad_norm` is the first member's (the gradient as it came in),
    `clipped_grad_norm` the last member's (what the optimizer gets),
    `threshold` that of the last member that reports one (omitted if none do),
    with that member's `norm` and `clipped_norm` when it reports them;
    `skip` when a member reports one: True when any member's is; the model
    then does not apply the update, and every member's state is put back
    as it was before the step.

    Args:
        *strategies: ClipStrategy. One or more strategies, applied in order;
            each a separate instance.

    Example:

    ```python
    clipping = keras_clip.Chain(keras_clip.ClipByValue(5.0), keras_clip.AutoClip())
    model.compile(optimizer="adam", loss="mse", clipping=clipping)
    ```

    References:
        Babuschkin et al. [The DeepMind JAX Ecosystem: optax.chain](
        https://github.com/google-deepmind/optax), 2020.
    """

    def __init__(self, *strategies: ClipStrategy) -> None:
        super().__init__()
        if not strategies:
            raise ValueError("`strategies` must hold at least one strategy. Received: strategies=()")
        self.strategies = tuple(_strategy_arg("strategies", s) for s in strategies)
        _refuse_shared("strategies", self.strategies)

    def build(self, variables: Sequence[keras.Variable]) -> None:
        """Builds every member for the same variables."""
        for strategy in self.strategies:
            if not strategy.built:
                strategy.build(variables)
        super().build(variables)

    @property
    def needs_variables(self) -> bool:  # type: ignore[override]
        """Whether any member reads the variables."""
        return any(s.needs_variables for s in self.strategies)

    @property
    def state(self) -> dict[str, keras.Variable]:
        """The members' state, keyed `"<position>/<name>"` (e.g. `"1/history"`), in member order."""
        return {f"{i}/{name}": v for i, s in enumerate(self.strategies) for name, v in s.state.items()}

    @property
    def rescales(self) -> bool:  # type: ignore[override]
        """Whether every member only rescales (the chain's factors are then their products)."""
        return implements_rescale(self, Chain) and all(s.rescales for s in self.strategies)

    def clip_present(self, grads: list[ops.Gradient], variables: list[Any]) -> tuple[list[ops.Gradient], Stats]:
        before = _read(self.variables)
        all_stats = []
        for strategy in self.strategies:
            grads, stats = strategy.clip(grads, variables)
            all_stats.append(stats)
        return grads, self._combined(all_stats, before)

    def rescale_present(self, grads: list[ops.Gradient], variables: list[Any]) -> tuple[list[Any], Stats]:
        before = _read(self.variables)
        factors: list[Any] = [None] * len(grads)
        step: list[Any] = [None] * len(grads)
        all_stats = []
        for strategy in self.strategies:
            # What this member measures: the previous member's products (XLA fuses them into its norms).
            grads = rescaled(grads, step)
            step, stats = strategy.rescale(grads, variables)
            factors = [_product(f, g) for f, g in zip(factors, step)]
            all_stats.append(stats)
        return factors, self._combined(all_stats, before)

    def _combined(self, all_stats: list[Stats], before: list[Any]) -> Stats:
        """The chain's stats from its members' (see the class docstring)."""
        result = {"grad_norm": all_stats[0]["grad_norm"], "clipped_grad_norm": all_stats[-1]["clipped_grad_norm"]}
        with_threshold = [s for s in all_stats if "threshold" in s]
        if with_threshold:
            result.update(threshold_stats(with_threshold[-1]))
        skips = [s["skip"] for s in all_stats if "skip" in s]
        if skips:
            result["skip"] = _skip_leaves_no_state(skips, self.variables, before)
        return result

    def get_config(self) -> dict[str, Any]:
        return {"strategies": [_serialize(s) for s in self.strategies]}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Chain:
        """Creates a chain from `get_config()` (members may be serialized dicts)."""
        return cls(*config["strategies"])

    def __repr__(self) -> str:
        return f"Chain({', '.join(repr(s) for s in self.strategies)})"


@keras.saving.register_keras_serializable(package="keras_clip")
class ByVariable(ClipStrategy):
    """Clips groups of variables with different strategies, chosen by path.

    Each variable goes to the first rule whose `fnmatch` pattern matches its
    path (`variable.path`, e.g. `"embedding/embeddings"`; `*` also matches
    `/`), else to `default`. A rule or default of None leaves its variables
    unclipped. Each strategy sees only its group, so `ClipByGlobalNorm`
    under a rule bounds that group's joint norm. A pattern that matches no
    variable warns once, when the strategy is built.

    Stats: `grad_norm` and `clipped_grad_norm` are global L2 norms over
    every variable (combined from the groups' own norms, no extra pass);
    `threshold` is the default's (omitted when it reports none), with its
    `norm` and `clipped_norm` when it reports them; `skip`, when a strategy
    reports one, is True when any group's is (and then every strategy's
    state is put back as it was before the step).

    Args:
        rules: Dict mapping str to ClipStrategy or None. Variable-path
            patterns to the strategy for the variables they match, tried in
            order; each strategy a separate instance.
        default: ClipStrategy or None. The strategy for variables no rule
            matches; None (the default) leaves them unclipped.

    Example:

    ```python
    clipping = keras_clip.ByVariable(
        {"embedding/*": keras_clip.ClipByNorm(5.0)}, default=keras_clip.ClipByGlobalNorm(1.0)
    )
    model.compile(optimizer="adam", loss="mse", clipping=clipping)
    ```

    References:
        Brock, De, Smith, Simonyan. [High-Performance Large-Scale Image
        Recognition Without Normalization](https://arxiv.org/abs/2102.06171),
        2021 (clipping rules that differ per layer).
    """

    needs_variables = True  # It routes by variable path.

    def __init__(self, rules: Mapping[str, ClipStrategy | None], default: ClipStrategy | None = None) -> None:
        super().__init__()
        if not isinstance(rules, Mapping) or not all(isinstance(p, str) for p in rules):
            raise TypeError(
                f"`rules` must be a dict mapping variable path patterns (str) to strategies. Received: rules={rules!r}"
            )
        self.rules = {p: _strategy_arg(f"rules[{p!r}]", s, allow_none=True) for p, s in rules.items()}
        self.default = _strategy_arg("default", default, allow_none=True)
        _refuse_shared("rules and default", [*self.rules.values(), self.default])

    @property
    def _members(self) -> list[ClipStrategy | None]:
        return [*self.rules.values(), self.default]

    def _group(self, path: str) -> int:
        """Index of the rule a variable path falls under (`len(rules)` = default)."""
        for i, pattern in enumerate(self.rules):
            if matches(path, (pattern,)):
                return i
        return len(self.rules)

    def build(self, variables: Sequence[keras.Variable]) -> None:
        """Builds each strategy for its group; warns about patterns matching nothing."""
        if not self.built:
            warn_unmatched(type(self).__name__, list(self.rules), variables)
            for i, strategy in enumerate(self._members):
                if strategy is not None and not strategy.built:
                    strategy.build([v for v in variables if self._group(path_of(v)) == i])
        super().build(variables)

    @property
    def state(self) -> dict[str, keras.Variable]:
        """The strategies' state, keyed `"<pattern>/<name>"` or `"default/<name>"`: rules in order, then the default."""
        keys = [*self.rules, "default"]
        return {f"{k}/{name}": v for k, s in zip(keys, self._members) if s is not None for name, v in s.state.items()}

    @property
    def rescales(self) -> bool:  # type: ignore[override]
        """Whether every strategy only rescales (a group without one keeps its gradients)."""
        return implements_rescale(self, ByVariable) and all(s.rescales for s in self._members if s is not None)

    def clip_present(self, grads: list[ops.Gradient], variables: list[Any]) -> tuple[list[ops.Gradient], Stats]:
        return self._by_group(grads, variables, rescale=False)

    def rescale_present(self, grads: list[ops.Gradient], variables: list[Any]) -> tuple[list[Any], Stats]:
        return self._by_group(grads, variables, rescale=True)

    def _by_group(self, grads: list[ops.Gradient], variables: list[Any], *, rescale: bool) -> tuple[list[Any], Stats]:
        """Each group through its strategy's `clip` (or `rescale`): the gradients (or factors), the stats."""
        groups: list[list[int]] = [[] for _ in self._members]
        for position, variable in enumerate(variables):
            groups[self._group(path_of(variable))].append(position)
        out: list[Any] = [None] * len(grads) if rescale else list(grads)
        pre_norms, post_norms, skips = [], [], []
        before = _read(self.variables)
        stats: Stats = {}
        for strategy, positions in zip(self._members, groups):
            if not positions:
                continue  # No gradient in this group: its state sees no step.
            if strategy is None:
                norms, _ = ops.l2_norms([grads[i] for i in positions])
                pre_norms += norms
                post_norms += norms
                continue
            run = strategy.rescale if rescale else strategy.clip
            group_out, stats = run([grads[i] for i in positions], [variables[i] for i in positions])
            for i, g in zip(positions, group_out):
                out[i] = g
            if "skip" in stats:
                skips.append(stats["skip"])
            pre_norms.append(stats["grad_norm"])
            post_norms.append(stats["clipped_grad_norm"])
        result = {"grad_norm": ops.combine_norms(pre_norms), "clipped_grad_norm": ops.combine_norms(post_norms)}
        if self.default is not None and groups[-1] and "threshold" in stats:
            result.update(threshold_stats(stats))
        if skips:
            result["skip"] = _skip_leaves_no_state(skips, self.variables, before)
        return out, result

    def get_config(self) -> dict[str, Any]:
        return {"rules": {p: _serialize(s) for p, s in self.rules.items()}, "default": _serialize(self.default)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ByVariable:
        """Creates the strategy from `get_config()` (strategies may be serialized dicts)."""
        return cls(**config)

    def __repr__(self) -> str:
        return f"ByVariable({self.rules!r}, default={self.default!r})"


def _product(a: Any, b: Any) -> Any:
    """Two factors multiplied; None is 1."""
    if a is None or b is None:
        return b if a is None else a
    return a * b


def threshold_stats(stats: Stats) -> Stats:
    """A member's `threshold`, with the norms in the threshold's own norm when it reports them."""
    return {k: stats[k] for k in ("threshold", "norm", "clipped_norm") if k in stats}


def _read(variables: list[keras.Variable]) -> list[Any]:
    """The variables' values now (tensors, not the variables themselves)."""
    return [K.copy(v.value) for v in variables]


def _skip_leaves_no_state(
    flags: list[Any], variables: list[keras.Variable], before: list[Any]
) -> Any:
    """A skip from any member skips the update; then every member's state is put back as it was.

    The model will not apply the step, so no member may remember it (a member
    before or after the one that skipped would otherwise have counted it).
    """
    skip = K.any(K.stack(flags))
    for variable, old in zip(variables, before):
        variable.assign(K.where(skip, old, variable.value))
    return skip


"""Search spaces of `proj.sweep`: a YAML file mapping CLI keys to the distributions a sampler draws from.

    model.optimizer.lr: {type: float, low: 1.0e-4, high: 0.1, log: true}
    model.hidden_size: {type: int, low: 64, high: 512, step: 64}
    data.batch_size: {type: categorical, choices: [64, 128, 256]}
    model.optimizer:                 # a choice may be a whole sub-config; a mapping names the choices
      type: categorical
      choices:
        sgd: {class_path: torch.optim.SGD, init_args: {momentum: 0.9, nesterov: true}}
        adamw: {class_path: torch.optim.AdamW}
    model.scheduler_interval: epoch  # a plain value (not a mapping): the same in every trial

Keys are the CLI's (`python -m proj fit --config ... --print_config` shows them; `model.optimizer.lr` and
`model.init_args.optimizer.init_args.lr` both work). A trial passes `--KEY VALUE` for each entry, parents
before children, so `model.optimizer.lr` sets the rate of whichever optimizer `model.optimizer` chose.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from proj.errors import UserError

FIELDS = {"float": ("low", "high", "step", "log"), "int": ("low", "high", "step", "log"), "categorical": ("choices",)}
Override = tuple[str, Any]  # (CLI key, value): one `--KEY VALUE` of a trial


def flow(value: Any) -> str:
    """A value as one line of YAML, which is how jsonargparse reads a flag's value (1e-05 -> "1.0e-05")."""
    return str(yaml.safe_dump(value, default_flow_style=True, width=math.inf)).removesuffix("\n...\n").strip()


def cli_args(overrides: Iterable[Override]) -> list[str]:
    """`--KEY VALUE` flags; strings go as they are, anything else as YAML (sub-configs included)."""
    return [arg for key, value in overrides for arg in (f"--{key}", value if isinstance(value, str) else flow(value))]


def depth(key: str) -> int:
    """Nesting of a key, `init_args` not counted: model.optimizer (2) applies before model.optimizer.lr (3)."""
    return len([part for part in key.split(".") if part != "init_args"])


def choice_label(choice: Any) -> str:
    """How a sub-config choice shows in Optuna, the table and TensorBoard: `SGD(momentum=0.9)`, `[16, 32]`."""
    if isinstance(choice, dict) and isinstance(choice.get("class_path"), str):
        name = choice["class_path"].rpartition(".")[2]
        init_args = choice.get("init_args") or {}
        return f"{name}({', '.join(f'{k}={flow(v)}' for k, v in init_args.items())})" if init_args else name
    return flow(choice)


@dataclass(frozen=True)
class Param:
    """One searched key: its Optuna distribution, and for sub-config choices the value behind each label."""

    key: str
    distribution: BaseDistribution
    values: dict[Any, Any] | None = None  # categorical label -> CLI value; None when the choices are plain values

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value for the CLI (Optuna stores the label of a sub-config choice)."""
        dist = self.distribution
        if isinstance(dist, FloatDistribution):
            return trial.suggest_float(self.key, dist.low, dist.high, step=dist.step, log=dist.log)
        if isinstance(dist, IntDistribution):
            return trial.suggest_int(self.key, dist.low, dist.high, step=dist.step, log=dist.log)
        assert isinstance(dist, CategoricalDistribution)
        return self.value(trial.suggest_categorical(self.key, dist.choices))

    def value(self, label: Any) -> Any:
        return label if self.values is None else self.values[label]

    def options(self) -> list[Any]:
        """Every value Optuna may store for this key; the grid sampler's axis. A continuous range has none."""
        dist = self.distribution
        if isinstance(dist, CategoricalDistribution):
            return list(dist.choices)
        if isinstance(dist, IntDistribution):
            return list(range(dist.low, dist.high + 1, dist.step))
        assert isinstance(dist, FloatDistribution)
        if dist.step is None:
            raise UserError(
                f"the grid sampler needs finite choices, and {self.key} is a continuous float range: give it a "
                "`step`, make it `type: categorical`, or use --sampler random or tpe."
            )
        count = round((dist.high - dist.low) / dist.step) + 1
        return [float(f"{dist.low + i * dist.step:.12g}") for i in range(count)]

    def ends(self) -> list[Any]:
        """Values that check this key with the CLI before any trial: every choice, or both ends of the range."""
        dist = self.distribution
        if isinstance(dist, CategoricalDistribution):
            return [self.value(label) for label in dist.choices]
        assert isinstance(dist, (FloatDistribution, IntDistribution))
        return [dist.low, dist.high]


@dataclass(frozen=True)
class SearchSpace:
    """What `--space FILE` holds: searched keys (`params`) and fixed ones, applied parents first."""

    params: tuple[Param, ...]
    fixed: tuple[Override, ...]
    keys: tuple[str, ...]  # every key, in the order its flag is passed

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"search space {str(path)!r} does not exist: pass a YAML file, e.g. configs/sweep/cnn.yaml")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise UserError(f"search space {str(path)!r} is not valid YAML: {err}") from err
        return cls.parse(raw, str(path))

    @classmethod
    def parse(cls, raw: Any, source: str = "search space") -> SearchSpace:
        if not isinstance(raw, dict) or not raw:
            raise UserError(
                f"{source} must map CLI keys to distributions, e.g. "
                "`model.optimizer.lr: {type: float, low: 1.0e-4, high: 0.1, log: true}`"
            )
        params, fixed = [], []
        for key, spec in raw.items():
            if not isinstance(key, str) or not key or key.startswith("-"):
                raise UserError(f"{source}: {key!r} is no CLI key; write keys without dashes, e.g. model.dropout")
            if isinstance(spec, dict):
                params.append(parse_param(key, spec, source))
            else:
                fixed.append((key, spec))
        if not params:
            raise UserError(f"{source} has nothing to search: give at least one key a {{type: ...}} mapping")
        keys = sorted(raw, key=depth)  # stable: file order within a depth
        return cls(tuple(params), tuple(fixed), tuple(keys))

    def _ordered(self, values: dict[str, Any]) -> list[Override]:
        return [(key, values[key]) for key in self.keys]

    def suggest(self, trial: optuna.Trial) -> list[Override]:
        """This trial's flags: the sampler's values of the searched keys, and the fixed ones."""
        return self._ordered({**dict(self.fixed), **{param.key: param.suggest(trial) for param in self.params}})

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space: every combination of every key's options."""
        return {param.key: param.options() for param in self.params}

    def probes(self) -> list[list[Override]]:
        """A few trials' flags that between them use every choice and both ends of every range."""
        ends = {param.key: param.ends() for param in self.params}
        count = max(len(values) for values in ends.values())
        return [
            self._ordered({**dict(self.fixed), **{key: values[i % len(values)] for key, values in ends.items()}})
            for i in range(count)
        ]

    def labels(self, params: dict[str, Any]) -> dict[str, str]:
        """A trial's params as short strings, for the table and TensorBoard."""
        return {key: short(params[key]) for key in (param.key for param in self.params) if key in params}


def short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else flow(value) if not isinstance(value, str) else value


def number(key: str, spec: dict[str, Any], name: str, whole: bool, source: str) -> float:
    """A bound or step; YAML reads 1e-4 (no dot) as a string, so numeric strings are accepted too."""
    value = spec.get(name)
    try:
        if isinstance(value, bool):
            raise ValueError
        converted = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(f"{source}: {key}: `{name}` must be a number, got {value!r}") from None
    if whole and not converted.is_integer():
        raise UserError(f"{source}: {key}: `{name}` of an int range must be a whole number, got {value!r}")
    return converted


def parse_param(key: str, spec: dict[str, Any], source: str) -> Param:
    kind = spec.get("type")
    if kind not in FIELDS:
        found = "no `type`" if kind is None else f"unknown distribution type {kind!r}"
        raise UserError(f"{source}: {key} has {found}; use one of {', '.join(FIELDS)} (a plain value is fixed)")
    unknown = sorted(set(spec) - {"type", *FIELDS[kind]})
    if unknown:
        fields = ", ".join(FIELDS[kind])
        raise UserError(f"{source}: {key}: unknown field(s) {', '.join(unknown)} for a {kind} (it takes {fields})")
    if kind == "categorical":
        return parse_categorical(key, spec.get("choices"), source)
    whole = kind == "int"
    low, high = (number(key, spec, name, whole, source) for name in ("low", "high"))
    step = None if spec.get("step") is None else number(key, spec, "step", whole, source)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{source}: {key}: `log` must be true or false, got {log!r}")
    try:
        if whole:
            return Param(key, IntDistribution(int(low), int(high), log=log, step=1 if step is None else int(step)))
        return Param(key, FloatDistribution(low, high, log=log, step=step))
    except ValueError as err:  # low > high, log with low <= 0, log with a step...
        raise UserError(f"{source}: {key}: {err}") from err


def parse_categorical(key: str, choices: Any, source: str) -> Param:
    """Plain choices (numbers, strings, null) go to Optuna as they are; sub-configs by their labels."""
    if not isinstance(choices, (list, dict)) or not choices:
        raise UserError(f"{source}: {key}: a categorical needs `choices`, a non-empty list or a mapping of name: value")
    if isinstance(choices, dict):
        values = {str(label): value for label, value in choices.items()}
    elif all(choice is None or isinstance(choice, (bool, int, float, str)) for choice in choices):
        if len({flow(choice) for choice in choices}) != len(choices):
            raise UserError(f"{source}: {key}: repeated choice in {flow(choices)}")
        return Param(key, CategoricalDistribution(choices))
    else:
        values = {}
        for choice in choices:
            label = choice_label(choice)
            if label in values:
                raise UserError(
                    f"{source}: {key}: two choices both read {label!r}; name them with a mapping, "
                    "`choices: {name: value, ...}`"
                )
            values[label] = choice
    return Param(key, CategoricalDistribution(list(values)), values)

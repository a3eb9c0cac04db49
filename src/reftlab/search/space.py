"""The search space, written as Hydra's Optuna sweeper writes it, as Optuna distributions.

`key: choice(a, b, c)` (or `a,b,c`) is a categorical choice, `interval(lo, hi)` a float, `int(interval
(lo, hi))` an integer, `tag(log, interval(...))` either on a log scale, `range(lo, hi[, step])` an
integer grid; a choice of lists is a choice of layer sets (`choice([0,3,6],[8],[2,5,8,11])`); any
other value is fixed for every trial. `data.fold` (the folds overlays) is never searched: each trial
runs every fold (`Space.instances`). Every key must be a setting of the composed config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..config import ConfigError

FOLD_KEY = "data.fold"


@dataclass
class Space:
    distributions: dict = field(default_factory=dict)  # key -> optuna distribution
    fixed: list[str] = field(default_factory=list)  # "key=value" overrides every trial gets
    instances: list = field(default_factory=list)  # data.fold values each trial runs (empty: one job a trial)
    written: dict = field(default_factory=dict)  # key -> the value as the user wrote it

    def overrides(self, params: dict) -> list[str]:
        """A trial's overrides: the fixed ones, then its sampled values."""
        return self.fixed + [f"{k}={as_override(params[k])}" for k in self.distributions]


def as_override(value) -> str:
    """A sampled value as Hydra override text: a layer set (kept as JSON text, Optuna's categorical
    choices are scalars) goes back as a list."""
    if isinstance(value, str) and value.startswith("["):
        return value.replace(" ", "")
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parse(lines: list[str], config=None) -> Space:
    """The space of `lines` ("key=value" from the sweeper's params and the command line); with the
    composed `config`, a key that is not one of its settings is refused (ConfigError naming it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    space = Space()
    for line in lines:
        try:
            (override,) = parser.parse_overrides([line])
        except HydraException as e:
            first = str(e).splitlines()[1] if len(str(e).splitlines()) > 1 else str(e)
            raise ConfigError(f"search space {line!r}: {first}") from None
        key = override.key_or_group
        if config is not None and not override.is_add() and not known(config, key):
            raise ConfigError(f"search space: {key!r} is not a setting of the composed config (a typo? "
                              f"settings under it: {siblings(config, key)})")  # fmt: skip
        # a later line for a key wins (the command line over the preset's params)
        space.fixed = [f for f in space.fixed if f.split("=", 1)[0].lstrip("+~") != key]
        space.distributions.pop(key, None)
        space.written.pop(key, None)
        if not override.is_sweep_override():
            space.fixed.append(line)
            continue
        value = override.value()
        space.written[key] = line.split("=", 1)[1]
        if key == FOLD_KEY and isinstance(value, ChoiceSweep):
            space.instances = list(value.list)
            continue
        if isinstance(value, ChoiceSweep):
            space.distributions[key] = categorical(key, list(value.list))
        elif isinstance(value, IntervalSweep):
            space.distributions[key] = interval(key, value.start, value.end, "log" in value.tags)
        elif isinstance(value, RangeSweep):
            space.distributions[key] = grid(key, value.start, value.stop, value.step or 1)
        else:
            raise ConfigError(f"search space {line!r}: use choice(...), interval(...), int(interval(...)), "
                              "tag(log, interval(...)) or range(...)")  # fmt: skip
    return space


def categorical(key: str, values: list):
    from optuna.distributions import CategoricalDistribution

    if not values:
        raise ConfigError(f"search space {key}: a choice of nothing; give at least one value")
    choices = [json.dumps(v, separators=(",", ":")) if isinstance(v, list | dict) else v for v in values]
    if len(set(map(str, choices))) < len(choices):
        raise ConfigError(
            f"search space {key}=choice({', '.join(map(str, choices))}): a value is given twice"
        )
    return CategoricalDistribution(choices)


def interval(key: str, low, high, log: bool):
    from optuna.distributions import FloatDistribution, IntDistribution

    if not low < high:
        raise ConfigError(
            f"search space {key}=interval({low}, {high}): "
            + ("an empty interval" if low == high else "an inverted interval (low > high)")
            + f"; give low < high, e.g. interval({min(low, high)}, {max(low, high)})"
        )
    if log and low <= 0:
        raise ConfigError(f"search space {key}=tag(log, interval({low}, {high})): a log scale needs low > 0")
    if isinstance(low, int) and isinstance(high, int):
        return IntDistribution(low, high, log=log)
    return FloatDistribution(float(low), float(high), log=log)


def grid(key: str, start, stop, step):
    from optuna.distributions import IntDistribution

    if not (isinstance(start, int) and isinstance(stop, int) and isinstance(step, int)):
        raise ConfigError(
            f"search space {key}=range({start}, {stop}, {step}): use integers (or interval(...))"
        )
    if step <= 0 or stop - step < start:
        raise ConfigError(
            f"search space {key}=range({start}, {stop}, {step}): an empty range; give start < stop"
        )
    last = start + (stop - 1 - start) // step * step  # range's stop is excluded
    return IntDistribution(start, last, step=step)


def known(config, key: str) -> bool:
    """Whether `key` (dotted, or a config group like `intervention`) is a setting of `config`."""
    from omegaconf import OmegaConf

    hydra = config.get("hydra") if OmegaConf.is_dict(config) and "hydra" in config else None
    if hydra is not None and key in (hydra.runtime.choices or {}):
        return True
    node = config
    for part in key.split("."):
        if not OmegaConf.is_dict(node) or part not in node:
            return False
        node = node._get_node(part)
    return True


def siblings(config, key: str) -> str:
    from omegaconf import OmegaConf

    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        if not OmegaConf.is_dict(node) or part not in node:
            return ", ".join(k for k in config.keys() if k != "hydra")
        node = node._get_node(part)
    return ", ".join(map(str, node.keys())) if OmegaConf.is_dict(node) else "none"

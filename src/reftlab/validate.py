"""Early checks of a job's settings: they run in seconds, before any model is loaded.

Each error names the bad value and what is allowed.
"""

from __future__ import annotations

from . import data
from .positions import COMPONENTS, parse_positions

METHODS = ("loreft",)


class ConfigError(ValueError):
    """A setting that cannot work, found before any expensive step."""


def model_num_layers(model_cfg) -> int:
    """Layer count from the model config group, else from the hub config (no weights loaded)."""
    if model_cfg.get("num_layers") is not None:
        return int(model_cfg.num_layers)
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(str(model_cfg.path)).num_hidden_layers)


def check_intervention(icfg, n_layers: int, model_name: str) -> None:
    if icfg.method not in METHODS:
        raise ConfigError(f"intervention.method={icfg.method!r} is not valid: choose one of {list(METHODS)}")
    layers = icfg.layer if not isinstance(icfg.layer, int | str) else [icfg.layer]
    for layer in layers:
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n_layers:
            raise ConfigError(
                f"intervention.layer={layer!r} is not a layer of model {model_name!r}: "
                f"valid layers are 0..{n_layers - 1} ({n_layers} layers)"
            )
    if icfg.component not in COMPONENTS:
        raise ConfigError(
            f"intervention.component={icfg.component!r} is not valid: choose one of {', '.join(COMPONENTS)}"
        )
    if not isinstance(icfg.rank, int) or isinstance(icfg.rank, bool) or icfg.rank < 1:
        raise ConfigError(f"intervention.rank={icfg.rank!r} is not valid: it must be an integer >= 1")
    if not 0.0 <= float(icfg.get("dropout", 0.0)) < 1.0:
        raise ConfigError(f"intervention.dropout={icfg.dropout!r} is not valid: it must be in [0, 1)")
    try:
        parse_positions(icfg.positions)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def check_trainer(tcfg) -> None:
    for key, low in (
        ("epochs", 0),
        ("batch_size", 1),
        ("grad_accum", 1),
        ("max_length", 8),
        ("eval_batch_size", 1),
    ):
        value = tcfg[key]
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"trainer.{key}={value!r} is not valid: it must be an integer >= {low}")
    if not float(tcfg.lr) > 0:
        raise ConfigError(f"trainer.lr={tcfg.lr!r} is not valid: it must be > 0")


def check_data(dcfg) -> None:
    if dcfg.recipe not in data.RECIPES:
        raise ConfigError(f"data.recipe={dcfg.recipe!r} is not valid: choose one of {list(data.RECIPES)}")
    if dcfg.get("revision") is None:  # a stored revision needs no source file
        data.check_path(dcfg.path)


def check(cfg) -> int:
    """Validate the whole job; returns the model's layer count."""
    n_layers = model_num_layers(cfg.model)
    check_intervention(cfg.intervention, n_layers, cfg.model.name)
    check_trainer(cfg.trainer)
    check_data(cfg.data)
    return n_layers

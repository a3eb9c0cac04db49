"""Early checks of a job's settings: they run in seconds, before any model is loaded.

Each error names the bad value and what is allowed.
"""

from __future__ import annotations

from .config import ConfigError, DivergedError  # noqa: F401  (defined in config/, the lowest wing: data/ and tasks/ raise them)
from .data.checks import check_data  # noqa: F401  (validate.check_data: the data settings)


def model_num_layers(model_cfg) -> int:
    """Layer count from the model config group, else from the hub config (no weights loaded)."""
    if model_cfg.get("num_layers") is not None:
        return int(model_cfg.num_layers)
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(str(model_cfg.path)).num_hidden_layers)


def integer(value, name: str, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"intervention.{name}={value!r} is not valid: it must be an integer >= {low}")


def check_layers(layer, n_layers: int, model_name: str) -> None:
    if layer == "all":
        return
    layers = [layer] if layer is None or isinstance(layer, int | float | str) else list(layer)
    if not layers:
        raise ConfigError(
            f"intervention.layer=[] is not valid: give a layer of model {model_name!r} (0..{n_layers - 1}), "
            "a list of them, or all"
        )
    for value in layers:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < n_layers:
            raise ConfigError(
                f"intervention.layer={value!r} is not a layer of model {model_name!r}: "
                f"valid layers are 0..{n_layers - 1} ({n_layers} layers), a list of them, or all"
            )


def check_rank_dropout(icfg) -> None:
    integer(icfg.rank, "rank", 1)
    if not 0.0 <= float(icfg.get("dropout", 0.0)) < 1.0:
        raise ConfigError(f"intervention.dropout={icfg.dropout!r} is not valid: it must be in [0, 1)")


CACHE_MODES = ("auto", "streamed", "off")


def check_trainer(tcfg) -> None:
    for key, low in (
        ("epochs", 0),
        ("batch_size", 1),
        ("grad_accum", 1),
        ("max_length", 8),
        ("eval_batch_size", 1),
        ("log_every", 1),
    ):
        value = tcfg[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"trainer.{key}={value!r} is not valid: it must be an integer >= {low}")
    if not float(tcfg.lr) > 0:
        raise ConfigError(f"trainer.lr={tcfg.lr!r} is not valid: it must be > 0")
    if not float(tcfg.weight_decay) >= 0:
        raise ConfigError(f"trainer.weight_decay={tcfg.weight_decay!r} is not valid: it must be >= 0")
    if not 0 <= float(tcfg.warmup_ratio) <= 1:
        raise ConfigError(f"trainer.warmup_ratio={tcfg.warmup_ratio!r} is not valid: it must be in [0, 1]")
    if tcfg.cache not in CACHE_MODES:
        raise ConfigError(f"trainer.cache={tcfg.cache!r} is not valid: choose one of {list(CACHE_MODES)}")
    point = tcfg.get("cache_from")
    if point is not None and (not isinstance(point, int) or isinstance(point, bool) or point < 0):
        raise ConfigError(
            f"trainer.cache_from={point!r} is not valid: it must be null or a layer >= 0 (a prefix cache "
            "built from there serves every layer above it)"
        )
    for key in ("cache_max_gb", "cache_disk_gb"):
        value = tcfg[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"trainer.{key}={value!r} is not valid: it must be a number of GB >= 0")


MODEL_SOURCES = ("bundled", "hub", "random")
DEVICES_HELP = "auto, cpu, cuda or cuda:<n>"
DTYPES = ("auto", "bfloat16", "float16", "float32")


def check_model(mcfg) -> None:
    """The model settings that would otherwise fail only after data preparation and loading."""
    import re

    if mcfg.source not in MODEL_SOURCES:
        raise ConfigError(f"model.source={mcfg.source!r} is not valid: choose one of {list(MODEL_SOURCES)}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(mcfg.device)):
        raise ConfigError(f"model.device={mcfg.device!r} is not valid: choose {DEVICES_HELP}")
    if mcfg.dtype not in DTYPES:
        raise ConfigError(f"model.dtype={mcfg.dtype!r} is not valid: choose one of {list(DTYPES)}")
    if mcfg.source == "hub" and not mcfg.get("path"):
        raise ConfigError("model.path is not set: model.source=hub needs a hub id or a local folder")
    if mcfg.source == "random" and not mcfg.get("tokenizer"):
        raise ConfigError(
            "model.tokenizer is not set: model.source=random needs a tokenizer (bundled, a hub id or a folder)"
        )


def check_prompt_room(cfg) -> None:
    """trainer.max_length must leave room for text after the chat template (tokenizer only, no model)."""
    from . import models
    from .tasks.chat import PromptBuilder

    try:
        PromptBuilder(models.load_tokenizer(models.tokenizer_source(cfg.model)), cfg.data.system_prompt,
                      cfg.trainer.max_length)  # fmt: skip
    except ValueError as e:
        raise ConfigError(str(e)) from e


def system_metrics(mcfg) -> tuple[bool, float] | str:
    """(on, interval in seconds) from mlflow.system_metrics / system_metrics_interval, or what is wrong."""
    on, interval = mcfg.get("system_metrics", False), mcfg.get("system_metrics_interval", 10)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        return f"mlflow.system_metrics_interval={interval!r} is not valid: it must be a number of seconds > 0"
    if not isinstance(on, bool):
        return f"mlflow.system_metrics={on!r} is not valid: choose true or false"
    return on, float(interval)


def check_mlflow(mcfg) -> None:
    problem = system_metrics(mcfg)
    if isinstance(problem, str):
        raise ConfigError(problem)
    name = mcfg.get("register_model")
    if name is not None:
        check_model_name(name)


def check_model_name(name) -> None:
    """mlflow.register_model=<name>: a name the registry takes (MLflow's own rule), checked before
    training rather than refused after it."""
    from . import hf_compat

    problem = hf_compat.mlflow_model_name_problem(str(name)) if str(name).strip() else "it is empty"
    if problem:
        raise ConfigError(
            f"mlflow.register_model={name!r} is not valid: {problem} (e.g. team-detector, or null to "
            "register nothing)"
        )


def check(cfg, method) -> int | None:
    """Validate the whole job for `method` (a reftlab.methods plugin, which checks its own
    settings); returns the model's layer count (None for a method without a model)."""
    if method.needs_model:
        check_model(cfg.model)
    n_layers = model_num_layers(cfg.model) if method.needs_model else None
    method.validate(cfg.intervention, n_layers, cfg.model.name)
    check_trainer(cfg.trainer)
    from . import tasks

    check_data(cfg.data, tasks.of(cfg).names[0])  # and whether the data can feed the task
    check_task(cfg, method)
    check_mlflow(cfg.mlflow)
    if method.needs_model:
        check_prompt_room(cfg)
    return n_layers


def check_task(cfg, method) -> None:
    """The task is one reftlab knows, the method serves its family, and its own settings hold."""
    from . import tasks

    task = tasks.of(cfg)
    if task.family not in method.families:
        serving = sorted(n for n in tasks.names() if tasks.REGISTRY[n].family in method.families)
        raise ConfigError(
            f"task={task.names[0]} is not served by intervention.method={method.name} (it serves "
            f"{', '.join(serving)}): choose another task or method (e.g. intervention=loreft)"
        )
    task.check(cfg)

"""One job: check settings, prepare data, load the model, train, evaluate, log to MLflow.

Everything a run produces is logged to one MLflow run; a job that fails at any point (bad
settings included) is recorded as FAILED with its error, never as FINISHED.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import threading
import time
import traceback
from pathlib import Path

from omegaconf import OmegaConf

from . import data, tracking, validate, versioning

log = logging.getLogger(__name__)


def default_run_name(cfg) -> str:
    icfg = cfg.intervention
    if icfg.method in ("none", "tfidf"):
        return f"{icfg.method}-{cfg.data.name}"
    layer = icfg.get("layer")
    layer = (
        "all" if layer is None else ("-".join(map(str, layer)) if not isinstance(layer, int | str) else layer)
    )
    return f"{icfg.method}-L{layer}-r{icfg.rank}-{cfg.data.name}"


def hydra_output_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


class Terminated(BaseException):
    """SIGTERM (as SLURM sends before a time limit) turned into an exception, so the run is closed."""


def _terminate(signum, frame):
    raise Terminated(f"terminated by signal {signum}")


# Settings that do not change what a job computes: ignored when resuming a sweep.
NOT_RESULT = ("force", "run_name", "mlflow")


# What the untrained methods (zero-shot, TF-IDF) ignore: a sweep over these runs them once.
UNTRAINED_IGNORE = ("seed", "trainer.lr", "trainer.epochs", "trainer.batch_size", "trainer.grad_accum",
                    "trainer.weight_decay", "trainer.warmup_ratio", "trainer.group_by_length")  # fmt: skip


def config_hash(resolved: dict) -> str:
    """Identity of a job for resume: the resolved config without bookkeeping keys (and without the
    seed and training settings for methods that do not train)."""
    kept = {k: v for k, v in resolved.items() if k not in NOT_RESULT}
    if resolved["intervention"]["method"] in ("none", "tfidf"):
        kept = {**kept, "trainer": dict(kept.get("trainer", {}))}
        for name in UNTRAINED_IGNORE:
            section, _, key = name.partition(".")
            (kept[section] if key else kept).pop(key or section, None)
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:20]


def finished_run(experiment_id: str, key: str):
    import mlflow

    found = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.config_hash = '{key}' and attributes.status = 'FINISHED'",
        max_results=1,
        output_format="list",
    )
    return found[0] if found else None


def run(cfg, output_dir: Path | None = None) -> dict:
    """Run the job described by the composed config; returns its metrics.

    A job whose resolved config already has a FINISHED run in the experiment is skipped (resume),
    unless force=true. Failures are recorded as FAILED, SIGTERM/Ctrl-C as KILLED, then re-raised.
    """
    import mlflow

    from .sweep import write_status

    output_dir = Path(output_dir or hydra_output_dir() or "outputs/adhoc")
    output_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    experiment_id = tracking.setup(cfg.mlflow)
    key = config_hash(resolved)
    previous = None if cfg.get("force", False) else finished_run(experiment_id, key)
    if previous is not None:
        log.info(
            "Skipping: run %s already FINISHED with this config (force=true re-runs it)", previous.info.run_id
        )
        write_status(output_dir, "skipped", run_id=previous.info.run_id)
        return dict(previous.data.metrics)

    in_main_thread = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        with mlflow.start_run(run_name=cfg.get("run_name") or default_run_name(cfg)) as active:
            versions = tracking.package_versions()
            mlflow.set_tags(
                {
                    "method": cfg.intervention.method,
                    "model": cfg.model.name,
                    "dataset": cfg.data.name,
                    "git_sha": tracking.git_sha(),
                    "config_hash": key,
                    "output_dir": str(output_dir.resolve()),
                    **{f"version.{k}": v for k, v in versions.items()},
                }
            )
            mlflow.log_params(tracking.flatten(resolved))
            mlflow.log_artifact(str(output_dir / "config.yaml"))
            mlflow.log_dict(versions, "environment.json")
            try:
                metrics = execute(cfg, output_dir)
            except BaseException as e:
                killed = isinstance(e, Terminated | KeyboardInterrupt)
                error = f"{type(e).__name__}: {e}"[:5000]
                mlflow.set_tag("error", error)
                mlflow.log_text(traceback.format_exc(), "error.txt")
                write_status(
                    output_dir, "killed" if killed else "failed", run_id=active.info.run_id, error=error
                )
                log.error("Run %s %s: %s", active.info.run_id, "killed" if killed else "failed", e)
                if killed:
                    mlflow.end_run(status="KILLED")
                raise
            write_status(output_dir, "finished", run_id=active.info.run_id)
        shown = {k: metrics[k] for k in ("val_accuracy", "accuracy", "f1") if k in metrics}
        log.info("Run %s finished: %s", active.info.run_id, shown)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, old_handler)
    return metrics


REFT_METHODS = ("loreft", "noreft", "direft", "consreft")


def settings_of(cfg, n_layers: int | None = None) -> dict:
    """What is needed to rebuild the trained intervention/adapter (saved beside its weights)."""
    icfg = OmegaConf.to_container(cfg.intervention, resolve=True)
    return {
        **icfg,
        "model": cfg.model.name,
        "model_config": OmegaConf.to_container(cfg.model, resolve=True),
        "num_layers": n_layers,
        "system_prompt": cfg.data.system_prompt,
        "max_length": cfg.trainer.max_length,
    }


def execute(cfg, output_dir: Path) -> dict:
    import mlflow

    validate.check(cfg)  # seconds: bad settings stop here, before data or model loading
    prepared, data_version = versioning.load(cfg.data)  # the Oxen commit the run reads
    mlflow.set_tags(
        {
            "data_version": data_version,
            "data_repo": str(versioning.repo_dir(cfg.data.name)),
            "data_hash": prepared.version(),
            "data_split": str(cfg.data.split),
        }
    )
    mlflow.log_text(data.readme(prepared, cfg.data), "data/README.md")
    method = cfg.intervention.method
    if method == "tfidf":
        metrics, scores = run_tfidf(cfg, prepared)
    else:
        metrics, scores = run_language_model(cfg, prepared, output_dir)
    mlflow.log_metrics(metrics)
    save_predictions(prepared, scores, output_dir)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def run_tfidf(cfg, prepared) -> tuple[dict, object]:
    from . import baselines

    result = baselines.tfidf(
        prepared.train["text"], prepared.train["label"], scored_texts(prepared), cfg.intervention
    )
    metrics = {
        **split_metrics(prepared, result["scores"]),
        "train_seconds": result["train_seconds"],
        "eval_seconds": result["eval_seconds"],
        "trainable_params": result["trainable_params"],
        "trainable_percent": float("nan"),  # no language model underneath
        "peak_memory_mb": float("nan"),
        "train_examples": len(prepared.train),
    }
    return metrics, result["scores"]


def scored_texts(prepared) -> list[str]:
    """What every run scores: the validation texts, then the test texts."""
    return list(prepared.val["text"]) + list(prepared.eval["text"])


def split_metrics(prepared, scores) -> dict:
    """Test metrics under their plain names (accuracy, f1, ...), validation ones as val_*; `scores`
    cover the validation rows, then the test rows (`scored_texts`)."""
    from . import training

    n_val = len(prepared.val)
    out = {
        **training.metrics(list(prepared.eval["label"]), scores[n_val:]),
        "eval_examples": len(prepared.eval),
    }
    out["val_examples"] = n_val
    if n_val:
        val = training.metrics(list(prepared.val["label"]), scores[:n_val])
        out.update({f"val_{k}": val[k] for k in ("accuracy", "f1", "yes_rate")})
    return out


def run_language_model(cfg, prepared, output_dir: Path) -> tuple[dict, object]:
    import mlflow
    from transformers import set_seed

    from . import cached, lora, models, reft, training
    from .prompts import PromptBuilder

    method = cfg.intervention.method
    set_seed(cfg.seed)
    model, tokenizer, device, dtype = models.load_model_and_tokenizer(cfg.model)
    n_layers = models.num_layers(model)
    validate.check_intervention(cfg.intervention, n_layers, cfg.model.name)  # the loaded model's truth
    if method in REFT_METHODS:
        dim = reft.component_dim(model.config, cfg.intervention.component)
        if cfg.intervention.rank > dim:
            raise validate.ConfigError(
                f"intervention.rank={cfg.intervention.rank} is larger than the {cfg.intervention.component} "
                f"size of {cfg.model.name!r}: valid ranks are 1..{dim}"
            )
    why = models.choose_dtype(cfg.model.dtype, device)[1]
    mlflow.set_tags({"device": device, "dtype": str(dtype).replace("torch.", ""), "dtype_reason": why})
    settings = settings_of(cfg, n_layers)
    builder = PromptBuilder(tokenizer, cfg.data.system_prompt, cfg.trainer.max_length)
    total = sum(p.numel() for p in model.parameters())
    eval_args = (builder.yes_id, builder.no_id, tokenizer.pad_token_id, device, cfg.trainer.eval_batch_size)

    if method == "none":  # the frozen model, zero-shot, with the data's prompt and with an answer hint
        start = time.perf_counter()
        scores = training.predict(model, settings, builder.prompts(scored_texts(prepared)), *eval_args)
        eval_seconds = time.perf_counter() - start
        hinted = PromptBuilder(
            tokenizer, f"{cfg.data.system_prompt} {cfg.intervention.hint}", cfg.trainer.max_length
        )
        hint_scores = training.predict(model, settings, hinted.prompts(prepared.eval["text"]), *eval_args)
        hint = training.metrics(list(prepared.eval["label"]), hint_scores)
        metrics = {
            **split_metrics(prepared, scores),
            **{f"hint_{k}": v for k, v in hint.items() if k in ("accuracy", "f1", "yes_rate")},
            "train_seconds": 0.0,
            "eval_seconds": eval_seconds,
            "trainable_params": 0,
            "trainable_percent": 0.0,
            "peak_memory_mb": float("nan"),
            "train_examples": 0,
        }
        return metrics, scores

    if method == "lora":
        trained = lora.build(model, settings)
    else:
        trained = reft.build(model, settings)
    n_trainable = sum(p.numel() for p in training.trainable(trained))
    train_examples = builder.examples(prepared.train["text"], prepared.train["label"])
    eval_prompts = builder.prompts(scored_texts(prepared))  # validation + test, in one pass
    path, reason = choose_path(cfg, trained, settings, train_examples)
    mlflow.set_tags(
        {"train_path": path, "train_path_reason": reason or "exact here", "trainable_dtype": "float32"}
    )
    describe = {"model": cfg.model.name, "data": cfg.data.name, "data_hash": prepared.version()}
    extra = {}
    with tracking.PeakMemory(device) as memory:
        if path == "cached":
            result, info = cached.train(trained, settings, train_examples, cfg.trainer, tokenizer.pad_token_id,
                                        device, cfg.seed, describe)  # fmt: skip
            mlflow.set_tag("cache_source", info["source"])
            extra = {"cache_seconds": info["seconds"], "cache_mb": info["mb"]}
        else:
            result = training.train(
                trained, settings, train_examples, cfg.trainer, tokenizer.pad_token_id, device, cfg.seed
            )
    start = time.perf_counter()
    eval_path = "stock"
    if path == "cached" and cached.plan_eval(settings, trained, eval_prompts, cfg.trainer) is None:
        scores, _ = cached.evaluate(trained, settings, eval_prompts, builder.yes_id, builder.no_id,
                                    tokenizer.pad_token_id, cfg.trainer, describe)  # fmt: skip
        eval_path = "cached"
    else:
        scores = training.predict(trained, settings, eval_prompts, *eval_args)
    eval_seconds = time.perf_counter() - start
    mlflow.set_tag("eval_path", eval_path)
    losses = result["losses"]
    metrics = {
        **split_metrics(prepared, scores),
        "train_seconds": result["train_seconds"],
        "eval_seconds": eval_seconds,
        "trainable_params": n_trainable,
        "trainable_percent": 100.0 * n_trainable / (total - (n_trainable if method == "lora" else 0)),
        "peak_memory_mb": memory.peak_mb,
        "train_examples": len(train_examples),
        "train_loss_first": losses[0] if losses else float("nan"),
        "train_loss_last": sum(losses[-10:]) / max(1, len(losses[-10:])),
        **extra,
    }
    log_losses(losses, cfg.trainer.log_every)
    plot_losses(losses, output_dir / "train_loss.png")
    mlflow.log_artifact(str(output_dir / "train_loss.png"))
    if cfg.get("save_intervention", True):
        folder = (lora if method == "lora" else reft).save(trained, settings, output_dir / "intervention")
        mlflow.log_artifacts(str(folder), "intervention")
    return metrics, scores


def choose_path(cfg, model, settings: dict, examples) -> tuple[str, str | None]:
    """Which training path runs: 'cached' where exact (trainer.cache=auto), else stock pyreft (or
    peft for LoRA), with the reason; logged so a run says which path it used."""
    from . import cached

    if cfg.intervention.method not in REFT_METHODS:
        return "peft", "LoRA changes the model's weights: nothing below it can be cached"
    if cfg.trainer.get("cache", "auto") == "off":
        return "pyreft", "trainer.cache=off"
    seqs, suffix = cached.train_inputs(examples, cached.n_positions(settings))
    reason = cached.plan(settings, model, seqs, suffix, cached.max_bytes(cfg.trainer))
    if reason:
        log.warning("Training with the stock pyreft path: %s", reason)
        return "pyreft", reason
    log.info("Training with the cached-prefix path (exact for these settings)")
    return "cached", None


def save_predictions(prepared, scores, output_dir: Path) -> None:
    import mlflow
    import numpy as np
    import pandas as pd

    rows = pd.concat(
        [prepared.val.assign(split="val"), prepared.eval.assign(split="test")], ignore_index=True
    )
    predictions = rows.assign(
        score=scores, p_yes=1 / (1 + np.exp(-scores)), prediction=np.where(scores > 0, "Yes", "No")
    )
    predictions.to_parquet(output_dir / "predictions.parquet", index=False)
    mlflow.log_artifact(str(output_dir / "predictions.parquet"))


def log_losses(losses: list[float], every: int) -> None:
    """The training loss curve as the MLflow metric train_loss (mean over `every` batches)."""
    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    points = [
        Metric("train_loss", sum(losses[i : i + every]) / len(losses[i : i + every]), now, i)
        for i in range(0, len(losses), max(1, every))
    ]
    client = mlflow.tracking.MlflowClient()
    run_id = mlflow.active_run().info.run_id
    for i in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=points[i : i + 1000])


def plot_losses(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(len(losses)), losses, lw=0.8)
    ax.set_xlabel("batch")
    ax.set_ylabel("answer cross-entropy")
    ax.set_title("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""One job's life: check the settings, read the data, run the method, score, log to MLflow.

What a method does (load a model, train, predict) is the method's (`reftlab.methods`); this module
knows no method by name. Everything a run produces is logged to one MLflow run; a job that fails at
any point (bad settings included) is recorded as FAILED with its error, never as FINISHED.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

from omegaconf import OmegaConf

from . import card, data, methods, tracking, validate, versioning
from .locks import file_lock

log = logging.getLogger(__name__)
# Errors that mean "change a setting or the data", not a bug: train.py prints their message alone
# (exit code 2; HYDRA_FULL_ERROR=1 shows the traceback).
USER_ERRORS = (validate.ConfigError, data.DataError, versioning.VersionError)

# Settings that do not change what a job computes: ignored when resuming a sweep.
NOT_RESULT = ("force", "run_name", "mlflow")
# ... nor, for a method that does not train (zero-shot, TF-IDF), these: a sweep over them runs it once.
UNTRAINED_IGNORE = ("seed", "trainer.lr", "trainer.epochs", "trainer.batch_size", "trainer.grad_accum",
                    "trainer.weight_decay", "trainer.warmup_ratio", "trainer.group_by_length")  # fmt: skip


def method_of(cfg):
    """The job's method, or None when the name is unknown (the job then fails in `execute`,
    recorded in MLflow like any bad setting)."""
    try:
        return methods.get(cfg.intervention.method)
    except validate.ConfigError:
        return None


def data_fingerprint(data_cfg) -> str:
    """The content of a local data file (sha256), so resume notices an edited file at the same path;
    a URL or a pinned revision is identified by the config itself."""
    path = data_cfg.get("path")
    if (
        not path
        or data.is_url(str(path))
        or data_cfg.get("revision") is not None
        or not Path(str(path)).is_file()
    ):
        return ""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def config_hash(resolved: dict, trains: bool = True, data_content: str = "") -> str:
    """Identity of a job for resume: the resolved config without bookkeeping keys (and without the
    seed and training settings for methods that do not train), and the data file's content."""
    kept = {k: v for k, v in resolved.items() if k not in NOT_RESULT} | {"data_content": data_content}
    if not trains:
        kept = {**kept, "trainer": dict(kept.get("trainer", {}))}
        for name in UNTRAINED_IGNORE:
            section, _, key = name.partition(".")
            (kept[section] if key else kept).pop(key or section, None)
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:20]


def hydra_output_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def run(cfg, output_dir: Path | None = None) -> dict:
    """Run the job described by the composed config; returns its metrics.

    A job whose resolved config already has a FINISHED run in the experiment is skipped (resume),
    unless force=true. Failures are recorded as FAILED, SIGTERM/Ctrl-C as KILLED, then re-raised.
    """

    output_dir = Path(output_dir or hydra_output_dir() or "outputs/adhoc")
    output_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    tracking.write_atomic(output_dir / "config.yaml", tracking.redact(OmegaConf.to_yaml(resolved)))
    experiment_id = tracking.setup(cfg.mlflow)
    method = method_of(cfg)
    key = config_hash(resolved, method.trains if method else True, data_fingerprint(cfg.data))
    # one job per key at a time on this machine: a parallel twin waits, then finds it FINISHED
    with file_lock(Path(tempfile.gettempdir()) / "reftlab-run-locks" / f"{experiment_id}-{key}.lock"):
        previous = None if cfg.get("force", False) else tracking.finished_run(experiment_id, key)
        if previous is not None:
            log.info("Skipping: run %s already FINISHED with this config (force=true re-runs it)",
                     previous.info.run_id)  # fmt: skip
            tracking.write_status(output_dir, "skipped", run_id=previous.info.run_id)
            return dict(previous.data.metrics)
        return record(cfg, method, resolved, key, output_dir)


def record(cfg, method, resolved: dict, key: str, output_dir: Path) -> dict:
    """The MLflow run of one job: tags, params, config, then `execute`; FAILED/KILLED on errors."""
    import mlflow

    name = cfg.get("run_name") or (
        method.run_name(cfg) if method else f"{cfg.intervention.method}-{cfg.data.name}"
    )
    sampling = validate.system_metrics(cfg.mlflow)  # a bad value: no sampling; `execute` records FAILED
    system, interval = sampling if isinstance(sampling, tuple) else (False, 10.0)
    with tracking.recorded_run(name, output_dir, system, interval) as active:
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
        metrics = execute(cfg, output_dir)
    shown = {k: metrics[k] for k in ("val_accuracy", "accuracy", "f1") if k in metrics}
    log.info("Run %s finished: %s", active.info.run_id, shown)
    print(closing_summary(name, cfg, metrics, active.info, output_dir), file=sys.stderr)
    return metrics


def closing_summary(name: str, cfg, metrics: dict, info, output_dir: Path) -> str:
    """What a person reads when a run ends: the result, the time, where everything is, what next."""
    lines = [f"\n{name} finished ({cfg.intervention.method} on {cfg.data.name})"]
    if "accuracy" in metrics:
        line = f"  test accuracy {100 * metrics['accuracy']:.1f}%"
        if "f1" in metrics:
            line += f", F1 {metrics['f1']:.3f}"
        line += f" on {int(metrics.get('eval_examples', 0))} examples"
        if metrics.get("val_examples"):
            line += f"; validation {100 * metrics['val_accuracy']:.1f}% on {int(metrics['val_examples'])}"
        lines.append(line + " (choose settings on validation)")
    times = [
        f"{k.split('_')[0]} {metrics[k]:.0f} s" for k in ("train_seconds", "eval_seconds") if k in metrics
    ]
    if "trainable_params" in metrics:
        share = f" ({metrics['trainable_percent']:.4f}%)" if "trainable_percent" in metrics else ""
        times.append(f"{int(metrics['trainable_params']):,} trainable parameters{share}")
    if times:
        lines.append("  " + ", ".join(times))
    lines.append(f"  outputs: {output_dir}")
    lines.append(
        f"  MLflow run {info.run_id} (experiment {cfg.mlflow.experiment}): open it with `make ui`, then"
    )
    uri = tracking.tracking_uri(cfg.mlflow.get("tracking_uri"))
    base = tracking.redact(uri.rstrip("/")) if uri.startswith("http") else "http://127.0.0.1:5000"
    lines.append(f"  {base}/#/experiments/{info.experiment_id}/runs/{info.run_id}")
    lines.append(f"  compare runs: python report.py --experiment {cfg.mlflow.experiment}")
    return "\n".join(lines)


def execute(cfg, output_dir: Path) -> dict:
    import mlflow

    method = methods.get(cfg.intervention.method)  # an unknown name: ConfigError naming the known ones
    validate.check(cfg, method)  # seconds: bad settings stop here, before data or model loading
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
    log_datasets(cfg, prepared, data_version)
    outcome = method.run(methods.Job(cfg, prepared, output_dir))  # the trained weights are on disk
    metrics = {**split_metrics(prepared, outcome.scores), **outcome.metrics}
    for folder, path in outcome.artifacts:
        weights = folder == "intervention" and Path(path).is_dir()
        if weights:  # a model card beside the weights
            card.write(path, card.model_card(cfg, metrics, data_version, prepared.version()))
        (mlflow.log_artifacts if Path(path).is_dir() else mlflow.log_artifact)(str(path), folder)
        if weights and cfg.mlflow.get("log_model", True):
            from . import pyfunc  # the MLflow model: load_model / models predict / models serve

            pyfunc.log(Path(path), tracking.package_versions(), cfg.mlflow.get("register_model"))
    mlflow.set_tags(outcome.tags)
    mlflow.log_metrics(metrics)
    if outcome.losses:
        tracking.log_losses(outcome.losses, cfg.trainer.log_every)
    save_predictions(prepared, outcome.scores, output_dir)
    tracking.write_atomic(output_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


DATASET_CONTEXTS = (("train", "training"), ("val", "validation"), ("eval", "testing"))


def log_datasets(cfg, prepared, data_version: str) -> None:
    """The splits as MLflow dataset inputs (the UI's Dataset column and filters): source = the Oxen
    repository's parquet file, digest = the data content hash, tags = the Oxen commit; schema and
    row counts come with the dataset."""
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas

    repo = versioning.repo_dir(cfg.data.name).resolve()
    digest = prepared.version()
    for part, context in DATASET_CONTEXTS:
        df = getattr(prepared, part)
        if df is None or not len(df):
            continue
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": a local file, either way
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(df[["text", "label"]], source=str(repo / f"{part}.parquet"),
                                  name=f"{cfg.data.name}-{part}", digest=digest, targets="label")  # fmt: skip
        tags = {"oxen_commit": data_version, "split": part}
        if cfg.data.get("remote"):
            tags["oxen_remote"] = tracking.redact(str(cfg.data.remote))
        mlflow.log_input(dataset, context=context, tags=tags)


def split_metrics(prepared, scores) -> dict:
    """Test metrics under their plain names (accuracy, f1, ...), validation ones as val_*; `scores`
    cover the validation rows, then the test rows (`methods.Job.texts`)."""
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
    tmp = output_dir / f".predictions.parquet.tmp{os.getpid()}"
    predictions.to_parquet(tmp, index=False)
    tmp.replace(output_dir / "predictions.parquet")
    mlflow.log_artifact(str(output_dir / "predictions.parquet"))

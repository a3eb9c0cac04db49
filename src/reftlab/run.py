"""One job's life: check the settings, read the data, run the method, score, log to MLflow.

What a method does (load a model, train, predict) is the method's (`reftlab.methods`); this module
knows no method by name. Everything a run produces is logged to one MLflow run; a job that fails at
any point (bad settings included) is recorded as FAILED with its error, never as FINISHED.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from omegaconf import OmegaConf

from . import card, data, methods, tracking, validate, versioning
from .locks import run_lock

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


@functools.cache
def code_version() -> str:
    """The content of reftlab's own source files (sha256): a fix, committed or not, is new code."""
    package = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def model_fingerprint(model_cfg) -> str:
    """A local `model.path` (file or folder) by its files' names, sizes and first/last MiB, so new
    weights at the same path are a new job (a hub id or the bundled wheel is named by the config
    and the package versions)."""
    path = model_cfg.get("path")
    folder = Path(str(path)) if path else None
    if folder is None or not folder.exists():
        return ""
    h = hashlib.sha256()
    for f in [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(folder) if f != folder else f.name}|{size}".encode())
        with open(f, "rb") as handle:
            h.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), os.SEEK_END)
                h.update(handle.read())
    return h.hexdigest()[:16]


def identity(cfg) -> dict:
    """What besides the resolved config decides a job's result: the data file's content, the code,
    the package versions and a local model's files."""
    return {"data_content": data_fingerprint(cfg.data), "code": code_version(),
            "versions": tracking.package_versions(), "model_content": model_fingerprint(cfg.model)}  # fmt: skip


def config_hash(resolved: dict, trains: bool = True, data_content: str | dict = "") -> str:
    """Identity of a job for resume: the resolved config without bookkeeping keys (and without the
    seed and training settings for methods that do not train), and `identity` (or a data file's
    content alone)."""
    extra = data_content if isinstance(data_content, dict) else {"data_content": data_content}
    kept = {k: v for k, v in resolved.items() if k not in NOT_RESULT} | extra
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
    tracking.remember_secrets(resolved)  # masked in every text this job lets out
    tracking.write_atomic(output_dir / "config.yaml", tracking.redact(OmegaConf.to_yaml(resolved)))
    experiment_id = tracking.setup(cfg.mlflow)
    method = method_of(cfg)
    key = config_hash(resolved, method.trains if method else True, identity(cfg))
    # one job per key at a time on this machine: a parallel twin waits, then finds it FINISHED
    with run_lock(f"{experiment_id}-{key}"):  # in a private per-user folder, never through a link
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
    from . import parent

    with tracking.recorded_run(name, output_dir, system, interval, parent.of_this_job()) as active:
        versions = tracking.package_versions()
        mlflow.set_tags(
            {
                "method": cfg.intervention.method,
                "model": cfg.model.name,
                "dataset": cfg.data.name,
                "git_sha": tracking.git_sha(),
                "code_version": code_version(),
                "config_hash": key,
                "output_dir": str(output_dir.resolve()),
                **{f"version.{k}": v for k, v in versions.items()},
            }
        )
        mlflow.log_params(tracking.flatten(resolved))
        mlflow.log_artifact(str(output_dir / "config.yaml"))
        mlflow.log_dict(versions, "environment.json")
        metrics, notes = execute(cfg, output_dir)
    shown = {k: metrics[k] for k in ("val_accuracy", "accuracy", "f1") if k in metrics}
    log.info("Run %s finished: %s", active.info.run_id, shown)
    print(
        tracking.redact(closing_summary(name, cfg, metrics, active.info, output_dir, notes)), file=sys.stderr
    )
    return metrics


def closing_summary(name: str, cfg, metrics: dict, info, output_dir: Path, notes: list[str] = ()) -> str:
    """What a person reads when a run ends: the result, the time, where everything is, what next."""
    lines = [f"\n{name} finished ({cfg.intervention.method} on {cfg.data.name})"]
    lines += [f"  WARNING: {note}" for note in notes]
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
        percent = metrics.get("trainable_percent", float("nan"))
        share = f" ({percent:.4f}%)" if percent == percent else ""  # no share for a method without a model
        times.append(f"{int(metrics['trainable_params']):,} trainable parameters{share}")
    if times:
        lines.append("  " + ", ".join(times))
    lines.append(f"  outputs: {output_dir}")
    logged = not any("MLflow model" in note for note in notes)
    if (output_dir / "intervention").is_dir() and cfg.mlflow.get("log_model", True) and logged:
        from .pyfunc import model_name

        lines.append(f"  MLflow model: runs:/{info.run_id}/{model_name(name)}")
    lines.append(
        f"  MLflow run {info.run_id} (experiment {cfg.mlflow.experiment}): open it with `make ui`, then"
    )
    uri = tracking.tracking_uri(cfg.mlflow.get("tracking_uri"))
    lines.append(f"  {tracking.ui_link(uri, info.experiment_id, info.run_id)}")
    lines.append(f"  compare runs: python report.py --experiment {cfg.mlflow.experiment}")
    return "\n".join(lines)


def execute(cfg, output_dir: Path) -> tuple[dict, list[str]]:
    """The job inside its MLflow run; returns its metrics and the warnings a person should read.

    The results (metrics, loss curve, predictions, metrics.json) are recorded as soon as they exist;
    only then the optional extras (weights artifact, model card, MLflow model, registry), whose
    failure is a warning on a FINISHED run, never the loss of its results."""
    import mlflow

    method = methods.get(cfg.intervention.method)  # an unknown name: ConfigError naming the known ones
    validate.check(cfg, method)  # seconds: bad settings stop here, before data or model loading
    prepared, data_version = versioning.load(cfg.data)  # the Oxen commit the run reads
    mlflow.set_tags(
        {
            "data_version": data_version,
            "data_repo": str(versioning.repo_dir(cfg.data.name)),
            "data_hash": prepared.version(),
            "data_split": str(prepared.info.get("split", cfg.data.split)),
        }
    )
    mlflow.log_text(data.readme(prepared, cfg.data), "data/README.md")
    log_datasets(cfg, prepared, data_version)
    outcome = method.run(methods.Job(cfg, prepared, output_dir))  # the trained weights are on disk
    check_scores(outcome.scores, cfg)
    metrics = {**split_metrics(prepared, outcome.scores), **outcome.metrics}
    notes = judge(prepared)
    tags = dict(outcome.tags)
    if notes:
        tags["result_warning"] = "; ".join(notes)
    metrics["test_judgeable"] = float(not any(n.startswith("the test split") for n in notes))
    # the results first: nothing below this block can lose them
    mlflow.set_tags(tags)
    mlflow.log_metrics(metrics)
    if outcome.losses:
        tracking.log_losses(outcome.losses, cfg.trainer.log_every)
    save_predictions(prepared, outcome.scores, output_dir)
    tracking.write_atomic(output_dir / "metrics.json", strict_json(metrics))
    problems = log_extras(cfg, outcome, metrics, data_version, prepared)
    if problems:
        mlflow.set_tag("warning", tracking.redact("; ".join(problems))[:5000])
    return metrics, notes + problems


def log_extras(cfg, outcome, metrics: dict, data_version: str, prepared) -> list[str]:
    """Artifacts, the model card and the MLflow model, each on its own: what failed (an upload, a
    registry that refuses a name) is returned as a warning, and the rest is still logged."""
    import mlflow

    problems = []
    try:
        log_figures(prepared, outcome.scores)
    except Exception as e:
        problems.append(f"the confusion matrix and ROC figures were not logged: {e}")
    for folder, path in outcome.artifacts:
        weights = folder == "intervention" and Path(path).is_dir()
        try:
            if weights:  # a model card beside the weights
                card.write(path, card.model_card(cfg, metrics, data_version, prepared.version()))
            (mlflow.log_artifacts if Path(path).is_dir() else mlflow.log_artifact)(str(path), folder)
        except Exception as e:
            problems.append(f"{Path(path).name} was not logged to MLflow (it is on disk at {path}): {e}")
            continue
        if weights and cfg.mlflow.get("log_model", True):
            try:
                from . import pyfunc  # the MLflow model: load_model / models predict / models serve

                run_name = mlflow.active_run().info.run_name
                results = {
                    "val_accuracy": metrics.get("val_accuracy"),
                    "test_accuracy": metrics.get("accuracy"),
                }
                tags = {k: f"{v:.3f}" for k, v in results.items() if v is not None} | {"run_name": run_name}
                pyfunc.log(Path(path), tracking.package_versions(), cfg.mlflow.get("register_model"),
                           name=pyfunc.model_name(run_name), tags=tags)  # fmt: skip
            except Exception as e:
                log.warning("The MLflow model was not logged: %s", tracking.redact(e))
                problems.append(f"the MLflow model was not logged or registered: {type(e).__name__}: {e}")
    return problems


def log_figures(prepared, scores) -> None:
    """The test split's confusion matrix and ROC curve as figures of the run (validation beside them
    in the ROC plot), drawn by scikit-learn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    n_val = len(prepared.val)
    parts = [
        ("test", prepared.eval, np.asarray(scores)[n_val:]),
        ("validation", prepared.val, np.asarray(scores)[:n_val]),
    ]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    truth = np.array(prepared.eval["label"] == "Yes")
    ConfusionMatrixDisplay.from_predictions(truth, parts[0][2] > 0, labels=[False, True], display_labels=["No", "Yes"],
                                            ax=ax, colorbar=False)  # fmt: skip
    ax.set_title(f"test split ({len(truth)} examples)")
    fig.tight_layout()
    mlflow.log_figure(fig, "figures/confusion_matrix.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for name, part, s in parts:
        truth = np.array(part["label"] == "Yes")
        if len(set(truth)) == 2:
            RocCurveDisplay.from_predictions(truth, s, name=name, ax=ax)
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8)
    ax.set_title("ROC curve (score = logit Yes - logit No)")
    fig.tight_layout()
    mlflow.log_figure(fig, "figures/roc_curve.png")
    plt.close(fig)


def check_scores(scores, cfg) -> None:
    """A run whose scores are NaN or inf diverged (or overflowed in half precision): it fails, naming
    the settings to change, instead of counting NaN as "No" and recording 50% as a result."""
    import numpy as np

    bad = ~np.isfinite(np.asarray(scores, dtype=float))
    if bad.any():
        raise validate.DivergedError(
            f"{int(bad.sum())} of {len(bad)} scores are not numbers (NaN or inf): the model diverged or "
            f"overflowed. Lower trainer.lr (now {cfg.trainer.lr}) or run the model in float32 "
            f"(model.dtype=float32, now {cfg.model.get('dtype', 'n/a')}); nothing was recorded as a result"
        )


MIN_JUDGED = 30  # fewer held-out examples than this (or one class): the accuracy is flagged, not trusted


def judge(prepared) -> list[str]:
    """Warnings for held-out splits too small or of one class to judge a result on."""
    out = []
    for part, name, setting in ((prepared.eval, "test", "data.eval_fraction"),
                                (prepared.val, "validation", "data.val_fraction")):  # fmt: skip
        labels = list(part["label"])
        if not labels:
            continue
        problems = [f"{len(labels)} examples"] if len(labels) < MIN_JUDGED else []
        if len(set(labels)) < 2:
            problems.append(f"all {labels[0]!r}")
        if problems:
            out.append(
                f"the {name} split is too small to judge ({', '.join(problems)}; at least {MIN_JUDGED} "
                f"of both labels are needed): its accuracy says little. Raise {setting} or use more data"
            )
    return out


def strict_json(metrics: dict) -> str:
    """metrics.json that strict parsers read: NaN and inf become null."""
    import math

    clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}
    return json.dumps(clean, indent=2, allow_nan=False)


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
        out.update(
            {f"val_{k}": val[k] for k in ("accuracy", "f1", "yes_rate", "roc_auc", "log_loss") if k in val}
        )
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

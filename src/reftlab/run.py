"""One job's life: check the settings, read the data, run the method, score, log to MLflow.

What a method does (load a model, train, predict) is the method's (`reftlab.methods`); this module
knows no method by name. Everything a run produces is logged to one MLflow run; a job that fails at
any point (bad settings included) is recorded as FAILED with its error, never as FINISHED.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from . import methods, search, tracking, validate
from .config import identity
from .data import recipes, versioning
from .data.datasets import log_datasets
from .locks import run_lock
from .report.summary import closing_summary
from .serving import card, pyfunc  # pyfunc: the MLflow model (load_model, models serve)
from .sweep import parent
from .tasks import results

log = logging.getLogger(__name__)
# Errors that mean "change a setting or the data", not a bug: train.py prints their message alone
# (exit code 2; HYDRA_FULL_ERROR=1 shows the traceback).
USER_ERRORS = (validate.ConfigError, recipes.DataError, versioning.VersionError)


def method_of(cfg):
    """The job's method, or None when the name is unknown (the job then fails in `execute`,
    recorded in MLflow like any bad setting)."""
    try:
        return methods.get(cfg.intervention.method)
    except validate.ConfigError:
        return None


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
    unused = method.unused(cfg) if method else {}  # neither recorded nor part of the job's identity
    key = job_key(cfg, method, resolved, unused)
    # one job per key at a time on this machine: a parallel twin waits, then finds it FINISHED
    with run_lock(f"{experiment_id}-{key}"):  # in a private per-user folder, never through a link
        close_dead_twins(experiment_id, key, tracking.tracking_uri(cfg.mlflow.get("tracking_uri")))
        previous = None if cfg.get("force", False) else tracking.finished_run(experiment_id, key)
        if previous is not None:
            log.info("Skipping: run %s already FINISHED with this config (force=true re-runs it)",
                     previous.info.run_id)  # fmt: skip
            tracking.write_status(output_dir, "skipped", run_id=previous.info.run_id)
            return dict(previous.data.metrics)
        return record(cfg, method, resolved, key, output_dir, unused)


def job_key(cfg, method, resolved: dict, unused: dict) -> str:
    """The job's identity for resume: its resolved config without the settings its method does not
    apply to its task (`unused`, `Method.unused`: not recorded either), and what `identity.identity`
    adds."""
    applied = identity.without(resolved, lambda k: k in unused)
    return identity.config_hash(applied, method.trains if method else True, identity.identity(cfg))


def close_dead_twins(experiment_id: str, key: str, uri: str) -> None:
    """Runs of this config left RUNNING by a job that died (kill -9, OOM, a lost node) are marked
    KILLED, their status files too, when this job starts in their place: their process is gone on
    this host (checked by pid and start time) or the scheduler says their SLURM job ended. A run
    whose process may still live is left as it is."""
    from .sweep.callback import alive, mark_killed

    for twin in tracking.running_runs(experiment_id, key):
        tags = twin.data.tags
        row = {"run_id": twin.info.run_id, "pid": tags.get("process.pid"), "host": tags.get("process.host"),
               "slurm_job_id": tags.get("process.slurm_job_id"), "folder": tags.get("output_dir")}  # fmt: skip
        if not row["pid"]:  # recorded before runs were tagged with their process: its status file says
            row |= tracking.read_status(row["folder"]) or {}
        if row["pid"] and alive(row, twin.info.start_time / 1000) is False:
            log.info(
                "Run %s of this config was left RUNNING by a job that died: marked KILLED", row["run_id"]
            )
            mark_killed(row, uri)


def record(cfg, method, resolved: dict, key: str, output_dir: Path, unused: dict | None = None) -> dict:
    """The MLflow run of one job: tags, params, config, then `execute`; FAILED/KILLED on errors."""
    import mlflow

    name = cfg.get("run_name") or (
        method.run_name(cfg) if method else f"{cfg.intervention.method}-{cfg.data.name}"
    )
    sampling = validate.system_metrics(cfg.mlflow)  # a bad value: no sampling; `execute` records FAILED
    system, interval = sampling if isinstance(sampling, tuple) else (False, 10.0)
    with tracking.recorded_run(name, output_dir, system, interval, parent.of_this_job()) as active:
        versions = tracking.package_versions()
        mlflow.set_tags(
            {
                "method": cfg.intervention.method,
                "model": cfg.model.name,
                "dataset": cfg.data.name,
                "git_sha": tracking.git_sha(),
                "code_version": identity.code_version(),
                "config_hash": key,
                "output_dir": str(output_dir.resolve()),
                **{f"version.{k}": v for k, v in versions.items()},
            }
        )
        unused = unused or {}
        mlflow.log_params({k: v for k, v in tracking.flatten(resolved).items() if k not in unused})
        if unused:
            mlflow.set_tag("unused_settings", "; ".join(f"{k}: {why}" for k, why in unused.items()))
        mlflow.log_artifact(str(output_dir / "config.yaml"))
        mlflow.log_dict(versions, "environment.json")
        metrics, notes = execute(cfg, output_dir, key)
    shown = {k: metrics[k] for k in ("val_accuracy", "accuracy", "f1") if k in metrics}
    log.info("Run %s finished: %s", active.info.run_id, shown)
    print(
        tracking.redact(closing_summary(name, cfg, metrics, active.info, output_dir, notes)), file=sys.stderr
    )
    return metrics


def execute(cfg, output_dir: Path, key: str = "") -> tuple[dict, list[str]]:
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
            "data_corpus_hash": prepared.corpus_version(),
            "data_split": str(prepared.info.get("split", cfg.data.split)),
        }
    )
    mlflow.log_text(recipes.readme(prepared, cfg.data), "data/README.md")
    log_datasets(cfg, prepared, data_version)
    job = methods.Job(cfg, prepared, output_dir, key, search.reporter(cfg))
    task = job.task  # checked against the data before any model loads
    try:
        outcome = method.run(job)  # the trained weights are on disk
    except search.Pruned as stopped:  # a search trial its study stopped: a finished run, tagged pruned
        return pruned(stopped, output_dir)
    results.check_scores(task, outcome.scores, cfg)
    metrics = {
        **results.split_metrics(task, prepared, outcome.scores),
        **outcome.metrics,
        **task.run_metrics(),
    }
    notes = results.judge(prepared, task.judged_labels())
    tags = dict(outcome.tags)
    if notes:
        tags["result_warning"] = "; ".join(notes)
    metrics["test_judgeable"] = float(not any(n.startswith("the test split") for n in notes))
    # the results first: nothing below this block can lose them
    mlflow.set_tags(tags)
    mlflow.log_metrics(metrics)
    if outcome.losses:
        tracking.log_losses(outcome.losses, cfg.trainer.log_every)
    results.save_predictions(task, prepared, outcome.scores, output_dir)
    tracking.write_atomic(output_dir / "metrics.json", results.strict_json(metrics))
    problems = log_extras(cfg, outcome, metrics, data_version, prepared, task)
    if problems:
        mlflow.set_tag("warning", tracking.redact("; ".join(problems))[:5000])
    return metrics, notes + problems


def pruned(stopped, output_dir: Path) -> tuple[dict, list[str]]:
    """The record of a trial its study's pruner stopped: its last validation metric, the epochs it
    ran and saved, tag `pruned`; no test scoring, no weights (it is not a result to use)."""
    import mlflow

    metrics = stopped.metrics()
    note = f"search: {stopped}"
    mlflow.set_tags({"pruned": "true", "result_warning": note})
    mlflow.log_metrics(metrics)
    tracking.write_atomic(output_dir / "metrics.json", results.strict_json(metrics))
    return metrics, [note]


def log_extras(cfg, outcome, metrics: dict, data_version: str, prepared, task) -> list[str]:
    """Artifacts, the model card and the MLflow model, each on its own: what failed (an upload, a
    registry that refuses a name) is returned as a warning, and the rest is still logged."""
    import mlflow

    problems = []
    try:
        results.log_figures(task, prepared, outcome.scores)
    except Exception as e:
        problems.append(f"the task's figures (confusion matrix, ROC curve) were not logged: {e}")
    for folder, path in outcome.artifacts:
        weights = folder == "intervention" and Path(path).is_dir()
        try:
            if weights:  # a model card beside the weights
                card.write(
                    path, card.model_card(cfg, metrics, data_version, prepared.version(), task.saved())
                )
            (mlflow.log_artifacts if Path(path).is_dir() else mlflow.log_artifact)(str(path), folder)
        except Exception as e:
            problems.append(f"{Path(path).name} was not logged to MLflow (it is on disk at {path}): {e}")
            continue
        if weights and cfg.mlflow.get("log_model", True):
            try:
                run_name = mlflow.active_run().info.run_name
                shown = {
                    "val_accuracy": metrics.get("val_accuracy"),
                    "test_accuracy": metrics.get("accuracy"),
                }
                tags = {k: f"{v:.3f}" for k, v in shown.items() if v is not None} | {"run_name": run_name}
                pyfunc.log(Path(path), tracking.package_versions(), cfg.mlflow.get("register_model"),
                           name=pyfunc.model_name(run_name), tags=tags)  # fmt: skip
            except Exception as e:
                log.warning("The MLflow model was not logged: %s", tracking.redact(e))
                problems.append(f"the MLflow model was not logged or registered: {type(e).__name__}: {e}")
    return problems

"""A study's parts from the sweeper's settings: storage, sampler, pruner, objectives; its trials'
bookkeeping (which count, which a killed worker left RUNNING and must run again).

Storage: a journal file (Optuna's `JournalFileBackend`: several processes and hosts on one shared
disk), default `multirun/studies/<study>.journal`; or an RDB URL (`postgresql://...`, `sqlite:///...`).
Credentials in a URL are masked in every message.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from .. import tracking
from ..config import ConfigError

SAMPLERS = ("tpe", "random", "nsga2")
PRUNERS = ("median", "successive_halving", "wilcoxon", "none")
DIRECTIONS = ("maximize", "minimize")
STUDY_DIR = "multirun/studies"
# What a job logs that a study may optimise besides the task's validation metrics: its cost.
COSTS = ("trainable_params", "train_seconds", "eval_seconds", "peak_memory_mb")
LOWER_IS_BETTER = ("val_log_loss", "val_no_answer_rate", "val_mean_generated_tokens")
KILLED = "reftlab:killed"  # a trial's system attribute: its worker died; its parameters were asked again


def storage_url(storage: str | None, study_name: str) -> str:
    """The study's storage as a URL: a path (or null: the default file) is a journal file."""
    if storage and "://" in str(storage) and not str(storage).startswith("journal://"):
        return str(storage)
    path = str(storage).removeprefix("journal://") if storage else f"{STUDY_DIR}/{study_name}.journal"
    return f"journal://{path}"


def open_storage(url: str):
    """The Optuna storage at `url`, or a ConfigError (credentials masked) naming why it cannot open."""
    import optuna

    try:
        if url.startswith("journal://"):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = Path(url.removeprefix("journal://"))
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except Exception as e:
        tracking.remember_secrets([url])
        raise ConfigError(
            f"hydra.sweeper.storage={tracking.redact(url)}: the study's storage cannot be opened "
            f"({type(e).__name__}: {tracking.redact(e)}); give a journal file path on a disk every worker "
            "sees, or a database URL (postgresql://user:***@host/db, sqlite:///path.db)"
        ) from None


def sampler(conf, n_objectives: int):
    import optuna

    name = str(conf.get("name", "tpe"))
    seed = conf.get("seed")
    if name not in SAMPLERS:
        raise ConfigError(
            f"hydra.sweeper.sampler.name={name!r} is not a sampler: choose one of {', '.join(SAMPLERS)}"
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=int(conf.get("population_size", 8)))
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=int(conf.get("n_startup_trials", 10)), multivariate=n_objectives == 1
    )


def pruner(conf, n_objectives: int, folds: bool):
    """The pruner (None: none); refused for several objectives (Optuna prunes on one value)."""
    import optuna

    name = str((conf or {}).get("name") or "none")
    if name not in PRUNERS:
        raise ConfigError(
            f"hydra.sweeper.pruner.name={name!r} is not a pruner: choose one of {', '.join(PRUNERS)}"
        )
    if name == "none":
        return None
    if n_objectives > 1:
        raise ConfigError(f"hydra.sweeper.pruner.name={name}: a study of {n_objectives} objectives cannot prune "
                          "(Optuna prunes on one value); set hydra.sweeper.pruner.name=none")  # fmt: skip
    if name == "wilcoxon":
        if not folds:
            raise ConfigError("hydra.sweeper.pruner.name=wilcoxon compares trials fold by fold: search with folds "
                              "(folds=hotel5 or folds=stratified5), or choose median / successive_halving")  # fmt: skip
        return optuna.pruners.WilcoxonPruner(p_threshold=float(conf.get("p_threshold", 0.1)))
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=int(conf.get("min_resource", 1)),
            reduction_factor=int(conf.get("reduction_factor", 3)),
        )
    return optuna.pruners.MedianPruner(
        n_startup_trials=int(conf.get("n_startup_trials", 4)),
        n_warmup_steps=int(conf.get("n_warmup_steps", 1)),
    )


def objectives(metric, direction, val_metrics: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The metrics a study optimises (`optimized_metric`: one name or a list) and their directions;
    a metric the task does not log on validation (or a test metric) is refused before any trial."""
    metrics = [metric] if isinstance(metric, str) else list(metric or [])
    directions = [direction] if isinstance(direction, str) else list(direction or [])
    if not metrics:
        raise ConfigError("optimized_metric is not set: name the validation metric to optimise, e.g. "
                          "optimized_metric=val_accuracy")  # fmt: skip
    allowed = [f"val_{m}" for m in val_metrics] + list(COSTS)
    for m in metrics:
        if m not in allowed:
            why = (" (a test metric: a search chooses on validation, never on test)"
                   if f"val_{m}" in allowed else "")  # fmt: skip
            raise ConfigError(f"optimized_metric={m!r}{why} is not a metric this task logs for a search: choose "
                              f"from {', '.join(allowed)}")  # fmt: skip
    natural = ["minimize" if m in COSTS or m in LOWER_IS_BETTER else "maximize" for m in metrics]
    if not directions:  # null: each metric's own (accuracy up, loss and cost down)
        directions = natural
    elif len(directions) == 1 and len(metrics) > 1:
        directions = directions + natural[1:]
    if len(directions) != len(metrics) or any(d not in DIRECTIONS for d in directions):
        raise ConfigError(f"hydra.sweeper.direction={direction}: give one of {', '.join(DIRECTIONS)} for each "
                          f"optimized metric ({', '.join(metrics)})")  # fmt: skip
    return metrics, directions


# --- trials ---------------------------------------------------------------------------------------


def worker() -> dict:
    """Who drives a trial (a trial's system attributes): this host, process, its start, its SLURM job."""
    out = {"reftlab:host": socket.gethostname(), "reftlab:pid": os.getpid(), "reftlab:since": time.time()}
    if os.environ.get("SLURM_JOB_ID"):
        out["reftlab:slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return out


def counted(study) -> list:
    """The trials that count towards the planned number: complete, pruned, and failed by their own
    error (not those a killed worker left, whose parameters run again)."""
    from optuna.trial import TrialState

    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [
        t for t in study.get_trials(deepcopy=False) if t.state in ended and not t.system_attrs.get(KILLED)
    ]


def recover(study, tracking_uri: str | None = None) -> list[int]:
    """Trials left RUNNING by a worker that died (SIGKILL, a lost node): marked failed (`KILLED`),
    their parameters asked again first, their job's MLflow run (if its status file says running)
    marked KILLED; trials of a worker that still runs (or of another host with no word from its
    scheduler) are left to it. Returns the numbers of the trials re-asked."""
    from optuna.trial import TrialState

    from ..sweep.callback import alive, mark_killed

    again = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = t.system_attrs
        row = {"pid": attrs.get("reftlab:pid"), "host": attrs.get("reftlab:host"),
               "slurm_job_id": attrs.get("reftlab:slurm_job_id")}  # fmt: skip
        if row["pid"] is None or row["pid"] == os.getpid() and row["host"] == socket.gethostname():
            continue
        if alive(row, attrs.get("reftlab:since")) is not False:
            continue
        folder = attrs.get("reftlab:folder")
        status = tracking.read_status(folder) if folder else None
        if status and status.get("status") == "running" and tracking_uri:
            mark_killed({**status, "folder": Path(folder)}, tracking_uri)
        storage = study._storage
        storage.set_trial_system_attr(t._trial_id, KILLED, True)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        again.append(t.number)
    return again


def states(study) -> dict[str, int]:
    """How many trials are complete, pruned, failed (by their own error), killed and running."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    killed = sum(bool(t.system_attrs.get(KILLED)) for t in trials)
    out = {s.name.lower(): sum(t.state == s for t in trials) for s in
           (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}  # fmt: skip
    out["fail"] -= killed
    out["killed"] = killed
    return out

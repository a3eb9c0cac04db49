"""A job that is a search trial (`search.trial` set by the sweeper): it reports its validation metric
after each epoch to its study and stops when the study's pruner says so.

The job loads the study from its storage (the sweeper's settings travel in the job's Hydra config,
under any launcher), reports to its own trial, asks `should_prune`, and raises `Pruned`: the run
then ends FINISHED, tagged pruned, with the epochs it ran and saved; the sweeper tells the study.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class Pruned(Exception):
    """The study's pruner stopped this trial after `epoch` of `epochs` (its metric then: `value`)."""

    def __init__(self, metric: str, epoch: int, epochs: int, value: float):
        super().__init__(f"pruned after epoch {epoch} of {epochs}: {metric} {value:.4f}")
        self.metric, self.epoch, self.epochs, self.value = metric, epoch, epochs, value

    def metrics(self) -> dict:
        return {self.metric: self.value, "pruned": 1.0, "epochs_done": float(self.epoch),
                "epochs_saved": float(self.epochs - self.epoch)}  # fmt: skip


class EpochReporter:
    """Called after each epoch but the last with the task's validation metrics: logs the optimised
    one as a per-epoch MLflow metric, reports it to the trial, raises `Pruned` when told to."""

    def __init__(self, trial, metric: str, epochs: int):
        self.trial, self.metric, self.epochs = trial, metric, epochs

    def __call__(self, epoch: int, val_metrics: dict) -> None:
        import mlflow

        name = self.metric.removeprefix("val_")
        if name not in val_metrics:
            return
        value = float(val_metrics[name])
        if mlflow.active_run() is not None:
            mlflow.log_metric(f"{self.metric}_by_epoch", value, step=epoch)
        if self.trial is None:
            return
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            log.info("Trial %d pruned after epoch %d of %d (%s %.4f)", self.trial.number, epoch, self.epochs,
                     self.metric, value)  # fmt: skip
            raise Pruned(self.metric, epoch, self.epochs, value)


def reporter(cfg) -> EpochReporter | None:
    """The epoch reporter of a trial job whose study prunes per epoch; None for any other job (a
    plain run, a grid sweep's job, a trial of a study without a pruner, several objectives, folds)."""
    search = cfg.get("search") or {}
    if search.get("trial") is None:
        return None
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    sweeper = HydraConfig.get().sweeper
    metric = cfg.get("optimized_metric")
    if not isinstance(metric, str) or not search.get("per_epoch", True) or not str(metric).startswith("val_"):
        return None
    import optuna

    from .study import open_storage, pruner, storage_url

    # Wilcoxon prunes between folds (the sweeper, `driver.run_batch`), never between epochs
    wilcoxon = (sweeper.get("pruner") or {}).get("name") == "wilcoxon"
    prune = None if wilcoxon else pruner(sweeper.get("pruner"), 1, folds=False)
    if prune is None:
        return EpochReporter(None, metric, int(cfg.trainer.epochs))  # the curve is still logged
    url = storage_url(sweeper.get("storage"), str(search.study))
    study = optuna.load_study(study_name=str(search.study), storage=open_storage(url), pruner=prune)
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(search.trial))
    return EpochReporter(optuna.trial.Trial(study, trial_id), metric, int(cfg.trainer.epochs))

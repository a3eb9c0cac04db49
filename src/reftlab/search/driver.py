"""The search itself: ask a batch of trials, launch them as jobs with any launcher, tell the study.

Every check (the space, the objectives against the task's metrics, the sampler and pruner, the
storage) runs before any trial starts. The study lives in its storage, so the same command run again
continues it: trials a killed worker left RUNNING are asked again first (`study.recover`), the
jobs already FINISHED in MLflow are skipped by run.py's resume and tell their result again, and the
study stops at its planned number of counted trials. Several workers may drive one study (each asks
what is left). A trial that fails fails alone; the study stops when more than
`max_failure_rate` of its trials failed.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

from .. import tracking
from ..config import ConfigError
from . import space as spaces
from . import study as parts

log = logging.getLogger(__name__)


def settings_of(value):
    """A config value as plain Python (a DictConfig or ListConfig resolved; anything else as it is)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


class TooManyFailures(RuntimeError):
    """More of the study's trials failed than hydra.sweeper.max_failure_rate allows: it stops."""


class Search:
    """One search over `config` (the composed sweep config) with `conf` (hydra.sweeper's settings)."""

    def __init__(self, conf: dict, config, launcher):
        self.conf, self.config, self.launcher = conf, config, launcher
        self.job_idx = 0

    # --- before any trial ----------------------------------------------------------------------

    def prepare(self, arguments: list[str]) -> None:
        """Every check before a trial starts; opens (or finds) the study."""
        import optuna

        storage = self.check(arguments)
        self.job_idx = next_job_number(Path(str(self.config.hydra.sweep.dir)))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            self.study = optuna.create_study(
                study_name=self.name, storage=storage, sampler=self.sampler, pruner=self.pruner,
                directions=self.directions, load_if_exists=True,
            )  # fmt: skip
        except ValueError as e:  # an existing study of the same name with other directions
            raise ConfigError(f"study {self.name!r} in {tracking.redact(self.url)}: {e}; give another "
                              "hydra.sweeper.study_name") from None  # fmt: skip
        again = parts.recover(self.study, tracking.tracking_uri(self.config.mlflow.get("tracking_uri")))
        if self.study.trials and (self.conf.get("sampler") or {}).get("seed") is not None:
            # a continued study: the seed moves on by the trials it has, so the sampler does not
            # propose the first run's trials again (the same seed, a fresh process)
            self.study.sampler = parts.sampler(
                {**self.conf["sampler"], "seed": int(self.conf["sampler"]["seed"]) + len(self.study.trials)},
                len(self.metrics),
            )
        if again:
            log.warning("Trials %s were left running by a worker that died: their parameters run again",
                        ", ".join(map(str, again)))  # fmt: skip

    def check(self, arguments: list[str]):
        """The space, the trial counts, the objectives against the task's metrics, the sampler,
        the pruner and the storage (opened: returned); a ConfigError naming the first bad value."""
        from .. import tasks

        conf, config = self.conf, self.config
        lines = [f"{k}={v}" for k, v in (conf.get("params") or {}).items()] + list(arguments)
        self.space = spaces.parse(lines, config)
        if not self.space.distributions:
            raise ConfigError("the search has nothing to search: give hydra.sweeper.params (an hparams_search "
                              "preset) or a key=choice(...) / interval(...) on the command line")  # fmt: skip
        for key in ("n_trials", "n_jobs"):
            if not isinstance(conf.get(key), int) or conf[key] < 1:
                raise ConfigError(f"hydra.sweeper.{key}={conf.get(key)!r}: give an integer >= 1")
        rate = conf.get("max_failure_rate", 0.5)
        if not 0 <= float(rate) <= 1:
            raise ConfigError(f"hydra.sweeper.max_failure_rate={rate}: give a fraction in [0, 1]")
        task = tasks.of(config)  # the task's own checks of its settings
        self.metrics, self.directions = parts.objectives(
            settings_of(config.get("optimized_metric")), settings_of(conf.get("direction")),
            tuple(task.val_metrics),
        )  # fmt: skip
        self.sampler = parts.sampler(conf.get("sampler") or {}, len(self.metrics))
        pruner_conf = conf.get("pruner") or {}
        self.pruner = parts.pruner(pruner_conf, len(self.metrics), bool(self.space.instances))
        self.name = conf.get("study_name") or default_name(config)
        self.url = parts.storage_url(conf.get("storage"), self.name)
        tracking.remember_secrets([self.url])
        return parts.open_storage(self.url)

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> list:
        """Batches of up to n_jobs trials until n_trials count (complete, pruned, failed)."""
        n_trials, n_jobs = self.conf["n_trials"], self.conf["n_jobs"]
        self.log_parent_settings()
        returns = []
        while True:
            done = len(parts.counted(self.study))
            running = parts.states(self.study)["running"]
            left = n_trials - done - running
            if left <= 0:
                break
            batch = [self.study.ask(self.space.distributions) for _ in range(min(n_jobs, left))]
            for trial in batch:
                for k, v in parts.worker().items():
                    self.study._storage.set_trial_system_attr(trial._trial_id, k, v)
            log.info("Search %s: trials %s of %d (%d done)", self.name, ", ".join(str(t.number) for t in batch),
                     n_trials, done)  # fmt: skip
            returns.append(self.run_batch(batch))
            self.check_failures()
        self.log_parent_results()
        print(tracking.redact(self.summary()), file=sys.stderr)
        return returns

    def overrides(self, trial, fold=None) -> list[str]:
        lines = self.space.overrides(trial.params)
        lines += [f"search.study={self.name}", f"search.trial={trial.number}"]
        if fold is not None:
            lines += [f"{spaces.FOLD_KEY}={fold}", "search.per_epoch=false"]
        return lines

    def launch(self, jobs: list[list[str]], trials: list) -> list:
        folder = Path(str(self.config.hydra.sweep.dir))
        for i, trial in enumerate(trials):  # where its job's status will be (a killed worker's, for recover)
            self.study._storage.set_trial_system_attr(
                trial._trial_id, "reftlab:folder", str(folder / str(self.job_idx + i))
            )
        results = self.launcher.launch(jobs, initial_job_idx=self.job_idx)
        self.job_idx += len(jobs)
        return list(results)

    def run_batch(self, batch: list) -> list:
        """The batch's jobs (a trial with folds: its folds in rounds, pruned between them), told."""
        if not self.space.instances:
            results = self.launch([self.overrides(t) for t in batch], batch)
            for trial, ret in zip(batch, results, strict=True):
                self.tell(trial, [outcome(ret)])
            return results
        alive, found, results = list(batch), {t.number: [] for t in batch}, []
        for step, fold in enumerate(self.space.instances):
            if not alive:
                break
            returned = self.launch([self.overrides(t, fold) for t in alive], alive)
            results += returned
            still = []
            for trial, ret in zip(alive, returned, strict=True):
                got = outcome(ret)
                found[trial.number].append(got)
                value = got["metrics"].get(self.metrics[0]) if got["metrics"] else None
                if value is None or not math.isfinite(value):
                    self.tell(trial, found[trial.number])  # fails alone
                    continue
                if len(self.metrics) == 1:
                    trial.report(float(value), step)
                    if trial.should_prune():
                        self.tell(trial, found[trial.number], pruned=True)
                        continue
                still.append(trial)
            alive = still
        for trial in alive:
            self.tell(trial, found[trial.number])
        return results

    def tell(self, trial, outcomes: list[dict], pruned: bool = False) -> None:
        """The trial's end: FAIL (a job failed), PRUNED, or COMPLETE with its objectives (folds: the
        mean over them); what its runs logged is kept as user attributes for the report."""
        from optuna.trial import TrialState

        metrics = [o["metrics"] for o in outcomes]
        runs = [o["run_id"] for o in outcomes if o["run_id"]]
        trial.set_user_attr("run_ids", runs)
        epochs = sum(m.get("epochs_done", o["epochs"]) for o, m in zip(outcomes, metrics, strict=True) if m)
        saved = sum(m.get("epochs_saved", 0.0) for m in metrics if m)
        if pruned and self.space.instances:  # the folds it did not run
            saved += (len(self.space.instances) - len(outcomes)) * (outcomes[0]["epochs"] or 0)
        trial.set_user_attr("epochs", float(epochs))
        trial.set_user_attr("epochs_saved", float(saved))
        if any(m is None for m in metrics):
            trial.set_user_attr("error", next(o["error"] for o in outcomes if o["metrics"] is None))
            self.study.tell(trial, state=TrialState.FAIL)
            return
        for key in ("accuracy", "f1", "trainable_params", "train_seconds"):
            values = [m[key] for m in metrics if key in m]
            if values:
                trial.set_user_attr(key, float(sum(values) / len(values)))
        if pruned or any(m.get("pruned") for m in metrics):
            self.study.tell(trial, state=TrialState.PRUNED)
            return
        values = [sum(m.get(name, math.nan) for m in metrics) / len(metrics) for name in self.metrics]
        if not all(math.isfinite(v) for v in values):
            missing = [n for n, v in zip(self.metrics, values, strict=True) if not math.isfinite(v)]
            trial.set_user_attr("error", f"the job logged no {', '.join(missing)}")
            self.study.tell(trial, state=TrialState.FAIL)
            return
        self.study.tell(trial, values)

    def check_failures(self) -> None:
        counts = parts.states(self.study)
        ended = counts["complete"] + counts["pruned"] + counts["fail"]
        rate = float(self.conf.get("max_failure_rate", 0.5))
        if ended and counts["fail"] / ended > rate and counts["fail"] > 1:
            raise TooManyFailures(f"search {self.name}: {counts['fail']} of {ended} trials failed, more than "
                              f"hydra.sweeper.max_failure_rate={rate}: stopped (each trial's error is in its "
                              "MLflow run and the study's trials)")  # fmt: skip

    # --- what a person reads -------------------------------------------------------------------

    def best(self) -> list:
        try:
            return list(self.study.best_trials)
        except ValueError:
            return []

    def summary(self) -> str:
        counts = parts.states(self.study)
        saved = sum(t.user_attrs.get("epochs_saved", 0.0) for t in self.study.trials)
        run = sum(t.user_attrs.get("epochs", 0.0) for t in self.study.trials)
        lines = [f"search {self.name} ({tracking.redact(self.url)}): {counts['complete']} complete, "
                 f"{counts['pruned']} pruned, {counts['fail']} failed, {counts['killed']} re-run after a kill; "
                 f"trial-epochs run {run:.0f}, saved by pruning {saved:.0f}"]  # fmt: skip
        best = self.best()
        if len(self.metrics) == 1 and best:
            t = best[0]
            test = t.user_attrs.get("accuracy")
            lines.append(f"  best trial {t.number}: {self.metrics[0]} {t.values[0]:.4f}"
                         + (f" (its test accuracy, reported once: {test:.4f})" if test is not None else "")
                         + f"\n    {' '.join(self.space.overrides(t.params)[len(self.space.fixed):])}")  # fmt: skip
        elif best:
            lines.append(f"  Pareto front ({' vs '.join(self.metrics)}): {len(best)} trials")
            for t in sorted(best, key=lambda t: t.values[0], reverse=True):
                lines.append(f"    trial {t.number}: {', '.join(f'{v:.4g}' for v in t.values)}  "
                             f"{' '.join(self.space.overrides(t.params)[len(self.space.fixed):])}")  # fmt: skip
        return "\n".join(lines)

    def parent(self):
        """The sweep's parent run (`sweep.parent.of_sweep`: its folder's record, else the environment)
        and a client of its tracking store; (None, None) where there is none or the id is not a run of
        that store (an id another sweep left in the environment)."""
        from mlflow.tracking import MlflowClient

        from ..sweep.parent import ENV, of_sweep

        run_id = of_sweep(self.config.hydra.sweep.dir)
        if not run_id:
            return None, None
        client = MlflowClient(tracking.tracking_uri(self.config.mlflow.get("tracking_uri")))
        try:
            client.get_run(run_id)
        except Exception as e:
            log.warning("%s=%s is not a run of this tracking store; the study is not logged on a parent run: %s",
                        ENV, run_id, tracking.redact(e))  # fmt: skip
            return None, None
        return client, run_id

    def log_parent_settings(self) -> None:
        """The study's settings on the sweep's parent run (once; a resumed study has the same)."""
        client, run_id = self.parent()
        if run_id is None:
            return
        params = {"search.study": self.name, "search.storage": tracking.redact(self.url),
                  "search.sampler": json.dumps(self.conf.get("sampler")),
                  "search.pruner": json.dumps(self.conf.get("pruner")),
                  "search.optimized_metric": ",".join(self.metrics), "search.direction": ",".join(self.directions),
                  "search.n_trials": self.conf["n_trials"], "search.n_jobs": self.conf["n_jobs"],
                  **{f"search.space.{k}": v for k, v in self.space.written.items()}}  # fmt: skip
        for k, v in params.items():
            try:
                client.log_param(run_id, k, str(v)[: tracking.MAX_PARAM_CHARS])
            except Exception as e:  # a resumed study whose settings changed keeps the first ones
                log.warning("The parent run keeps its earlier %s: %s", k, tracking.redact(e))
        client.set_tag(run_id, "kind.search", "optuna")
        client.set_tag(run_id, "optimized_metric", self.metrics[0])
        client.set_tag(run_id, "optimized_direction", self.directions[0])

    def log_parent_results(self) -> None:
        client, run_id = self.parent()
        if run_id is None:
            return
        counts = parts.states(self.study)
        trials = self.study.trials
        metrics = {f"trials_{k}": v for k, v in counts.items() if k != "running"}
        metrics["trial_epochs"] = sum(t.user_attrs.get("epochs", 0.0) for t in trials)
        metrics["trial_epochs_saved"] = sum(t.user_attrs.get("epochs_saved", 0.0) for t in trials)
        best = self.best()
        if len(self.metrics) == 1 and best:
            metrics[f"study_best_{self.metrics[0]}"] = best[0].values[0]
            client.set_tag(run_id, "best_trial", str(best[0].number))
            if best[0].user_attrs.get("accuracy") is not None:
                metrics["study_best_test_accuracy"] = best[0].user_attrs["accuracy"]
        metrics["pareto_trials"] = float(len(best))
        for k, v in metrics.items():
            client.log_metric(run_id, k, float(v))


def outcome(ret) -> dict:
    """What one job returned: its metrics (None: it failed), its MLflow run and its epochs."""
    from hydra.core.utils import JobStatus

    metrics, error = None, None
    if ret.status == JobStatus.COMPLETED and isinstance(ret.return_value, dict):
        metrics = {k: float(v) for k, v in ret.return_value.items() if isinstance(v, int | float)}
    else:
        error = (
            str(ret._return_value)
            if ret.status == JobStatus.FAILED
            else "the job failed (its MLflow run says why)"
        )
    run_id = None
    try:
        folder = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
        status = tracking.read_status(folder) or {}
        run_id = status.get("run_id")
        if metrics is None and status.get("error"):
            error = status["error"]
    except Exception:
        pass
    epochs = int(ret.cfg.trainer.epochs) if ret.cfg is not None and "trainer" in ret.cfg else 0
    return {"metrics": metrics, "run_id": run_id, "epochs": epochs, "error": error}


def next_job_number(sweep_dir: Path) -> int:
    """The first job number no folder of `sweep_dir` has: a study continued in its own sweep folder
    never writes over the jobs an earlier run of it left there."""
    taken = (
        [int(p.name) for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        if sweep_dir.is_dir()
        else []
    )
    return max(taken, default=-1) + 1


def default_name(config) -> str:
    """The same command names the same study (run it again: it continues): the preset or search
    config, and a hash of the experiment and every override (`sweep.parent.sweep_key`)."""
    import re

    from ..sweep.parent import sweep_key

    choices = config.hydra.runtime.choices
    base = choices.get("experiment") or choices.get("hparams_search") or "search"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{base}-{sweep_key(config)[:10]}")

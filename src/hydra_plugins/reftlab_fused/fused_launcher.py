"""`hydra/launcher=fused`: the jobs of a sweep that share a prefix cache train fused, in this process.

The launcher plans the groups of compatible jobs (`reftlab.sweep.fused.plan`), then works through
the sweep in its order like Hydra's basic launcher, a group at its first job: it trains the group
fused, then runs each of the group's jobs, each its own MLflow run taking its group's result instead
of training, before the next group starts (a sweep stopped later keeps every group already done); a
job outside every group trains on its own.

`hydra/launcher=fused_slurm` (and `fused_submitit_local`, the same code path on this machine): the
same on SLURM through hydra-submitit-launcher, where a fused group is the unit one array task runs
(its members train together there, then run as their own jobs in that task) and every other job
is an array task of its own.
"""

from dataclasses import dataclass

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

HERE = "hydra_plugins.reftlab_fused.fused_launcher"


@dataclass
class FusedLauncherConf:
    _target_: str = f"{HERE}.FusedLauncher"


@dataclass
class FusedSlurmConf(SlurmQueueConf):
    _target_: str = f"{HERE}.FusedSlurmLauncher"


@dataclass
class FusedLocalConf(LocalQueueConf):
    _target_: str = f"{HERE}.FusedLocalLauncher"


store = ConfigStore.instance()
store.store(group="hydra/launcher", name="fused", node=FusedLauncherConf, provider="reftlab")
store.store(group="hydra/launcher", name="fused_submitit_slurm", node=FusedSlurmConf, provider="reftlab")
store.store(group="hydra/launcher", name="fused_submitit_local", node=FusedLocalConf, provider="reftlab")


class FusedLauncher(BasicLauncher):
    def launch(self, job_overrides, initial_job_idx):
        from pathlib import Path

        from hydra.core.utils import configure_log, setup_globals

        from reftlab.sweep.fused import plan, tasks_of, train_planned

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        groups = plan(self.hydra_context, self.config, job_overrides)
        by_first = {g[0][0]: g for g in groups}
        returned = {}
        for task in tasks_of(groups, len(job_overrides)):
            if task[0] in by_first:  # the group trains, then its jobs are recorded, before the next group
                train_planned(by_first[task[0]])
            for i in task:
                returned[i] = self.run_one(job_overrides[i], initial_job_idx + i)
        return [returned[i] for i in range(len(job_overrides))]

    def run_one(self, overrides, idx: int):
        """One job, numbered `idx`, as Hydra's basic launcher runs it."""
        import logging

        from hydra.core.utils import configure_log, filter_overrides, run_job
        from omegaconf import open_dict

        logging.getLogger(__name__).info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = idx
            cfg.hydra.job.num = idx
        done = run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=cfg,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")  # fmt: skip
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return done


class _FusedSubmitit(BaseSubmititLauncher):
    """submitit's launcher with one array task per fused group (and per job outside every group).

    `launch` hands submitit one entry per task (the task's first job stands for it in submitit's
    log) and keeps the tasks on the launcher, which travels to each worker; there `__call__` trains
    the task's group fused, then runs each of its jobs as the basic launcher would (its own job
    number, output folder and MLflow run), and returns their results in the sweep's order."""

    def launch(self, job_overrides, initial_job_idx):
        from reftlab.sweep.fused import tasks

        self._overrides = [list(o) for o in job_overrides]
        self._first = initial_job_idx
        self._tasks = tasks(self.hydra_context, self.config, self._overrides)
        per_task = super().launch([self._overrides[t[0]] for t in self._tasks], 0)
        results = {}
        for task, returned in zip(self._tasks, per_task, strict=True):
            results.update(zip(task, returned, strict=True))
        return [results[i] for i in range(len(job_overrides))]

    def __call__(self, sweep_overrides, job_dir_key, job_num, job_id, singleton_state):
        import submitit
        from hydra.core.singleton import Singleton
        from hydra.core.utils import run_job, setup_globals
        from omegaconf import open_dict

        from reftlab.sweep.fused import train_groups

        Singleton.set_state(singleton_state)
        setup_globals()
        task = self._tasks[job_num]
        if len(task) > 1:
            train_groups(self.hydra_context, self.config, [self._overrides[i] for i in task])
        returned = []
        for i in task:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, self._overrides[i])
            with open_dict(cfg.hydra.job) as job:
                job.id = submitit.JobEnvironment().job_id
                job.num = self._first + i
            returned.append(run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                                    config=cfg, job_dir_key=job_dir_key, job_subdir_key="hydra.sweep.subdir"))  # fmt: skip
        return returned


class FusedSlurmLauncher(_FusedSubmitit):
    _EXECUTOR = "slurm"


class FusedLocalLauncher(_FusedSubmitit):
    _EXECUTOR = "local"

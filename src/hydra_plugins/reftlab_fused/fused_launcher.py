"""`hydra/launcher=fused`: the jobs of a sweep that share a prefix cache train fused, in this process.

The launcher trains every group of compatible jobs first (`reftlab.sweep.fused.train_groups`), then
runs the jobs one after another like Hydra's basic launcher: each job is its own MLflow run and
takes its group's result instead of training; a job outside every group trains on its own.
"""

from dataclasses import dataclass

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.config_store import ConfigStore


@dataclass
class FusedLauncherConf:
    _target_: str = "hydra_plugins.reftlab_fused.fused_launcher.FusedLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="fused", node=FusedLauncherConf, provider="reftlab")


class FusedLauncher(BasicLauncher):
    def launch(self, job_overrides, initial_job_idx):
        from reftlab.sweep.fused import train_groups

        train_groups(self.hydra_context, self.config, job_overrides)
        return super().launch(job_overrides, initial_job_idx)

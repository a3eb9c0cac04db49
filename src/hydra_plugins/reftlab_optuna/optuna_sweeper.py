"""`hydra/sweeper=reftlab_optuna`: an Optuna study over the config (`hparams_search=...` presets).

The search space is written as the released hydra-optuna-sweeper writes it (`choice(...)`,
`interval(...)`, `int(interval(...))`, `tag(log, interval(...))`), on Optuna 5 and Hydra 1.3.8, with
per-epoch pruning, resume from its storage and several workers (`reftlab.search`). This module only
registers the sweeper and hands each sweep to `reftlab.search.driver.Search`.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper


@dataclass
class ReftlabOptunaConf:
    _target_: str = "hydra_plugins.reftlab_optuna.optuna_sweeper.OptunaSweeper"
    study_name: str | None = (
        None  # null: the preset's name and a hash of the command (the same command continues it)
    )
    storage: str | None = (
        None  # null: multirun/studies/<study>.journal; a path (journal file) or a database URL
    )
    direction: Any = (
        None  # null: each optimized metric's own (accuracy up; loss, parameters, seconds down); or a list
    )
    n_trials: int = 20  # trials that count: complete, pruned, failed by their own error
    n_jobs: int = 1  # trials asked together, launched as one batch (joblib, submitit, fused: in parallel)
    max_failure_rate: float = 0.5  # the study stops when more of its trials failed
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": None})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    params: dict[str, str] = field(default_factory=dict)  # the search space


ConfigStore.instance().store(
    group="hydra/sweeper", name="reftlab_optuna", node=ReftlabOptunaConf, provider="reftlab"
)


class OptunaSweeper(Sweeper):
    def __init__(self, **settings):
        self.settings = settings

    @staticmethod
    def check(config) -> None:
        """Every check of the search (space, objectives, sampler, pruner, storage) on the composed
        sweep config: the sweep callback runs it before the sweep's parent run opens, so a bad
        value stops the command before anything is recorded (a ConfigError naming it)."""
        from reftlab.search.driver import Search, settings_of

        settings = settings_of(config.hydra.sweeper)
        settings.pop("_target_", None)
        Search(settings, config, None).check([str(o) for o in config.hydra.overrides.task])

    def setup(self, *, hydra_context, task_function, config):
        from hydra.core.plugins import Plugins

        from reftlab.search.driver import Search, settings_of

        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.search = Search({k: settings_of(v) for k, v in self.settings.items()}, config, launcher)

    def sweep(self, arguments):
        import sys
        from pathlib import Path

        from omegaconf import OmegaConf

        from reftlab.config import ConfigError
        from reftlab.search.driver import TooManyFailures
        from reftlab.tracking import redact

        sweep_dir = Path(self.search.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.search.config, sweep_dir / "multirun.yaml")
        try:
            self.search.prepare(list(arguments))
            return self.search.run()
        except (ConfigError, TooManyFailures) as e:  # the message says it all; the sweep's summary follows
            print(f"error: {redact(e)}", file=sys.stderr)
            raise SystemExit(2 if isinstance(e, ConfigError) else 1) from None

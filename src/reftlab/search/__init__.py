"""Search: Optuna studies over the same Hydra configs as grid sweeps (`hydra/sweeper=reftlab_optuna`,
`hparams_search=...`).

- `space.py`: the search space as Hydra's Optuna sweeper writes it, as Optuna distributions;
- `study.py`: storage, sampler, pruner and objectives from the sweeper's settings; trial bookkeeping
  (which count, which a killed worker left and run again);
- `driver.py`: the sweep itself: ask a batch, launch it with any launcher, tell the results;
- `trial.py`: the job side: a trial reports its validation metric per epoch and may be pruned.

A study's report (history, importances, slices, Pareto front) is drawn from its MLflow runs by
`reftlab.report.study`.

The Hydra plugin (`hydra_plugins/reftlab_optuna`) only registers the sweeper and hands over here.
"""

from .trial import Pruned, reporter

__all__ = ["Pruned", "reporter"]

"""Sweeps: the Hydra callback that sets MLflow up and summarises a sweep (`callback`), and the one
MLflow parent run whose children are the sweep's jobs (`parent`).

conf/train.yaml registers `reftlab.sweep.SweepCallback`, re-exported here.
"""

from .callback import SweepCallback

__all__ = ["SweepCallback"]

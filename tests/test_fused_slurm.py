"""`hydra/launcher=fused_slurm`'s code path on one machine (`fused_submitit_local`): a fused group is
one array task, every other job a task of its own."""

import pytest
from conftest import runs, store_in, tiny_overrides, train_here
from test_fused_sweeps import SWEEP

pytestmark = pytest.mark.slow  # a submitit sweep: three worker processes


def test_under_submitit_a_fused_group_is_one_array_task(tmp_path, empty_store):
    """hydra/launcher=fused_submitit_local, the code path of fused_slurm: the two jobs that can fuse
    train together in one array task, the two with trainer.cache=off each in a task of their own."""
    uri = store_in(tmp_path, empty_store)
    done = train_here("-m", "hydra/launcher=fused_submitit_local",
                      *tiny_overrides(*SWEEP, "intervention.rank=1,2", "trainer.cache=auto,off"),
                      f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={tmp_path / 'multirun'}",
                      f"trainer.cache_dir={tmp_path / 'prefix'}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = runs(uri)
    assert len(table) == 4 and (table["status"] == "FINISHED").all()
    assert (table[table["params.trainer.cache"] == "auto"]["tags.fused_size"] == "2").all()
    assert table[table["params.trainer.cache"] == "off"]["tags.fused_size"].isna().all()
    assert table["tags.mlflow.parentRunId"].nunique() == 1  # one sweep, its parent over all four
    tasks = list((tmp_path / "multirun" / ".submitit").rglob("*_result.pkl"))
    assert len(tasks) == 3  # the group's task and one for each job outside it
    assert all((tmp_path / "multirun" / str(job) / "metrics.json").exists() for job in range(4))

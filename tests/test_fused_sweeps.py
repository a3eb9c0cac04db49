"""`hydra/launcher=fused`: a sweep's compatible jobs train fused, each still its own MLflow run with
its own result; a member that diverges fails alone; a resumed fused sweep runs only what did not finish."""

import pytest
from conftest import compose, runs, store_in, tiny_overrides, train_here

from reftlab import models, run

pytestmark = pytest.mark.slow  # two whole sweeps of four jobs

SWEEP = ("model.num_layers=3", "trainer.epochs=2", "save_intervention=false", "mlflow.log_model=false")


def fused_sweep(folder, uri, *overrides):
    return train_here("-m", "hydra/launcher=fused", *tiny_overrides(*SWEEP, *overrides), f"mlflow.tracking_uri={uri}",
                      f"hydra.sweep.dir={folder / 'multirun'}", f"trainer.cache_dir={folder / 'prefix'}")  # fmt: skip


@pytest.fixture(scope="module")
def swept(tmp_path_factory, empty_store):
    """Ranks 1 and 2 at a good and a diverging learning rate, fused; then the same sweep again."""
    folder = tmp_path_factory.mktemp("fused")
    uri = store_in(folder, empty_store)
    grid = ("intervention.rank=1,2", "trainer.lr=0.02,1e30")
    loads = []
    with pytest.MonkeyPatch.context() as mp:  # count the loads of the frozen model
        load = models.load_model_and_tokenizer
        mp.setattr(models, "load_model_and_tokenizer", lambda cfg: loads.append(cfg) or load(cfg))
        first = fused_sweep(folder, uri, *grid)
    table = runs(uri)
    again = fused_sweep(folder, uri, *grid)
    return first, table, again, runs(uri), uri, folder, len(loads)


def test_each_job_of_a_fused_sweep_is_its_own_run_and_a_diverging_one_fails_alone(swept):
    first, table, *_ = swept
    assert first.returncode != 0 and "4 jobs: 2 finished, 2 failed, 0 skipped" in first.stderr
    said = first.stdout + first.stderr
    assert "Fused group" in said and "4 jobs trained" in said
    good, bad = table[table["params.trainer.lr"] == "0.02"], table[table["params.trainer.lr"] == "1e+30"]
    assert len(good) == len(bad) == 2
    assert (good["status"] == "FINISHED").all() and (bad["status"] == "FAILED").all()
    assert (
        bad["tags.error"].str.contains("diverged").all() and bad["tags.error"].str.contains("of 4 jobs").all()
    )
    assert (good["tags.fused_size"] == "4").all() and good["tags.fused_group"].nunique() == 1
    assert (good["tags.train_path"] == "cached").all() and (good["metrics.fused_group_seconds"] > 0).all()
    assert good["tags.mlflow.parentRunId"].notna().all()  # children of the sweep's parent run


def test_a_fused_group_loads_the_model_once_for_all_its_jobs(swept):
    *_, loads = swept
    assert loads == 1  # the group's pass; its four jobs wrap the same frozen model


def test_a_fused_job_equals_the_same_job_run_on_its_own(swept, in_root, tmp_path):
    _, table, _, _, uri, folder, _ = swept
    fused = table[(table["params.trainer.lr"] == "0.02") & (table["params.intervention.rank"] == "2")].iloc[0]
    cfg = compose(*tiny_overrides(*SWEEP, "intervention.rank=2", "trainer.lr=0.02", "mlflow.experiment=solo",
                                  f"mlflow.tracking_uri={uri}", f"trainer.cache_dir={folder / 'prefix'}"))  # fmt: skip
    solo = run.run(cfg, tmp_path / "solo")
    for name in (
        "train_loss_first",
        "train_loss_last",
        "log_loss",
        "val_log_loss",
        "accuracy",
        "val_accuracy",
    ):
        assert fused[f"metrics.{name}"] == pytest.approx(solo[name], rel=1e-4), name


def test_a_resumed_fused_sweep_runs_only_what_did_not_finish(swept):
    _, first, again, table, *_ = swept
    assert "4 jobs: 0 finished, 2 failed, 2 skipped" in again.stderr
    new = table[~table["run_id"].isin(first["run_id"])]
    assert len(new) == 2 and (new["status"] == "FAILED").all()  # the two that diverged, again
    assert (new["params.trainer.lr"] == "1e+30").all() and new["tags.error"].str.contains(
        "group .* of 2 jobs"
    ).all()


def test_a_fused_job_records_its_share_of_the_groups_costs(swept):
    """Each member: its share of the group's cache pass and steps (the shares add up to the group's
    training, data and model loading not in it), the group's peak memory, the examples its passes
    built and where its scoring cache came from, as a solo run records them."""
    _, table, *_ = swept
    good = table[table["params.trainer.lr"] == "0.02"]
    assert (good["metrics.cache_seconds"] > 0).all() and (good["metrics.peak_memory_mb"] > 0).all()
    size = good["metrics.fused_size"].iloc[0]
    shares = size * good["metrics.train_seconds"]
    assert shares.to_numpy() == pytest.approx(good["metrics.fused_group_seconds"].to_numpy(), rel=1e-6)
    assert (
        good["metrics.cache_built_examples"] > 0
    ).all()  # the first sweep ran its examples through the model
    assert good["tags.eval_cache_source"].isin(["built", "memory", "disk", "disk+built"]).all()
    assert good["tags.cache_source"].notna().all()

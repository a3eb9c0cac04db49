"""Whole jobs log the strategy that ran and why, reuse the stored prefix cache from disk, and give
the same result on every exact strategy; bad cache settings are named before anything loads."""

import pytest
from conftest import compose, runs, tiny_overrides

from reftlab.engine import clear_caches


@pytest.mark.slow  # six whole jobs
def test_runs_log_their_path_and_reuse_the_cache(in_root, mlflow_uri, tmp_path):
    from reftlab import run

    common = tiny_overrides("model.num_layers=3", f"mlflow.tracking_uri={mlflow_uri}", "save_intervention=false",
                            f"trainer.cache_dir={tmp_path / 'prefix'}")  # fmt: skip
    metrics = {}
    for name, extra in [
        ("auto", []),
        ("again", ["seed=1"]),
        ("off", ["trainer.cache=off"]),
        ("first", ["intervention.positions=f1+l1"]),
        ("first_off", ["intervention.positions=f1+l1", "trainer.cache=off"]),
        ("small", ["trainer.cache_max_gb=0.000001"]),
    ]:
        clear_caches()  # a new job: the training cache must come from disk
        cfg = compose(*common, f"run_name={name}", *extra)
        metrics[name] = run.run(cfg, tmp_path / name)
    df = runs(mlflow_uri).set_index("tags.mlflow.runName")
    assert (df["status"] == "FINISHED").all()
    assert df.loc["auto", "tags.train_path"] == "cached" and df.loc["auto", "tags.eval_path"] == "cached"
    assert df.loc["auto", "tags.cache_source"] == "built"
    assert df.loc["again", "tags.cache_source"] == "disk"
    assert (
        df.loc["off", "tags.train_path"] == "stock"
        and df.loc["off", "tags.train_path_reason"] == "trainer.cache=off"
    )
    # first-token positions: the residual path, with the stock path's result
    assert (
        df.loc["first", "tags.train_path"] == "residual" and df.loc["first", "tags.eval_path"] == "residual"
    )
    assert "first-token" in df.loc["first", "tags.train_path_reason"]
    assert df.loc["first_off", "tags.train_path"] == "stock"
    assert metrics["first"]["accuracy"] == metrics["first_off"]["accuracy"]
    assert abs(metrics["first"]["train_loss_last"] - metrics["first_off"]["train_loss_last"]) < 1e-4 * abs(
        metrics["first_off"]["train_loss_last"]
    )
    assert df.loc["auto", "metrics.cache_mb"] > 0
    # a cache over the bound: streamed prefixes (exact), not the stock path
    assert (
        df.loc["small", "tags.train_path"] == "streamed" and df.loc["small", "tags.eval_path"] == "streamed"
    )
    assert "trainer.cache_max_gb" in df.loc["small", "tags.train_path_reason"]
    assert metrics["small"]["accuracy"] == metrics["auto"]["accuracy"]
    # the same job with and without the cache: same result (fp32)
    assert metrics["auto"]["accuracy"] == metrics["off"]["accuracy"]
    assert abs(metrics["auto"]["train_loss_last"] - metrics["off"]["train_loss_last"]) < 1e-4 * abs(
        metrics["off"]["train_loss_last"]
    )


@pytest.mark.slow  # two whole jobs
def test_the_second_fold_builds_nothing(in_root, mlflow_uri, tmp_path):
    """Fold 0's job runs every example of the corpus through the model once (training set with its
    answers, validation and test prompts); fold 1's job finds them all in the store."""
    from reftlab import run

    common = tiny_overrides("data=persuasion_sample", "data.folds=3", "data.max_train=null", "data.max_val=null",
                            "data.max_eval=null", f"mlflow.tracking_uri={mlflow_uri}", "save_intervention=false",
                            f"trainer.cache_dir={tmp_path / 'prefix'}")  # fmt: skip
    metrics = {}
    for fold in (0, 1):
        clear_caches()
        metrics[fold] = run.run(
            compose(*common, f"data.fold={fold}", f"run_name=fold{fold}"), tmp_path / f"f{fold}"
        )
    df = runs(mlflow_uri).set_index("tags.mlflow.runName")
    assert df.loc["fold0", "tags.cache_source"] == "built" and metrics[0]["cache_built_examples"] > 0
    assert (
        df.loc["fold1", "tags.cache_source"] == "disk" and df.loc["fold1", "tags.eval_cache_source"] == "disk"
    )
    assert metrics[1]["cache_built_examples"] == 0
    assert (
        metrics[0]["accuracy"] != metrics[1]["accuracy"]
        or metrics[0]["train_loss_last"] != metrics[1]["train_loss_last"]
    )  # two folds: other data, another result


@pytest.mark.parametrize(
    "bad, words",
    [
        ("trainer.cache=maybe", "['auto', 'streamed', 'off']"),
        ("trainer.cache_max_gb=-1", ">= 0"),
        ("trainer.cache_from=-2", "layer >= 0"),
    ],
)
def test_bad_cache_settings_are_named(bad, words):  # a non-integer cache_from: test_lose_nothing (schema)
    from reftlab import validate

    with pytest.raises(validate.ConfigError, match="trainer.cache") as e:
        validate.check_trainer(compose(bad).trainer)
    assert words in str(e.value)

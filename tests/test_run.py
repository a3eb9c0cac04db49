"""Whole jobs on the tiny model: what reaches MLflow, and bad input (sweeps: test_sweeps.py)."""

import re

import pandas as pd
import pytest
from conftest import compose, runs, tiny_overrides

from reftlab import models, run

pytestmark = pytest.mark.slow  # every test runs a job (or starts one that must fail)

METRICS = ["accuracy", "f1", "train_seconds", "eval_seconds", "trainable_params", "trainable_percent",
           "peak_memory_mb"]  # fmt: skip
TAGS = ["method", "model", "dataset", "git_sha", "data_version", "data_repo", "dtype", "dtype_reason"]


def test_a_run_logs_metrics_tags_and_artifacts(in_root, mlflow_uri, tmp_path, capsys):
    import mlflow

    cfg = compose(*tiny_overrides(f"mlflow.tracking_uri={mlflow_uri}"))
    metrics = run.run(cfg, output_dir=tmp_path / "job")
    (row,) = runs(mlflow_uri).to_dict("records")
    # the run ends with a summary for a person: result, times, where things are, how to look at them
    said = capsys.readouterr().err
    assert f"test accuracy {100 * metrics['accuracy']:.1f}%" in said and "on 16 examples" in said
    assert f"validation {100 * metrics['val_accuracy']:.1f}% on 16" in said
    assert str(tmp_path / "job") in said and row["run_id"] in said and "make ui" in said
    assert f"#/experiments/{row['experiment_id']}/runs/{row['run_id']}" in said
    assert "python report.py --experiment reftlab --filter \"tags.dataset = 'opinion_spam'\"" in said
    assert f"MLflow model: runs:/{row['run_id']}/loreft-L1-r4-opinion_spam" in said
    # the splits are MLflow dataset inputs: name, content digest, context, Oxen commit, row counts
    inputs = mlflow.get_run(row["run_id"]).inputs.dataset_inputs
    by_context = {{t.key: t.value for t in i.tags}["mlflow.data.context"]: i for i in inputs}
    assert set(by_context) == {"training", "validation", "testing"}
    for context, rows in (("training", 24), ("validation", 16), ("testing", 16)):
        item = by_context[context]
        assert item.dataset.digest == row["tags.data_hash"] and item.dataset.name.startswith("opinion_spam-")
        assert f'"num_rows": {rows}' in item.dataset.profile and "label" in item.dataset.schema
        tags = {t.key: t.value for t in item.tags}
        assert tags["oxen_commit"] == row["tags.data_version"]
    assert row["status"] == "FINISHED"
    for name in METRICS:
        assert row[f"metrics.{name}"] == pytest.approx(metrics[name])
    assert row["metrics.trainable_params"] == 2 * 32 * 4 + 4
    assert row["metrics.train_seconds"] > 0 and row["metrics.peak_memory_mb"] > 0
    for tag in TAGS:
        assert row[f"tags.{tag}"]
    assert row["tags.method"] == "loreft" and row["tags.model"] == "tiny_random"
    assert row["params.intervention.layer"] == "1" and row["params.data.max_train"] == "24"
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    artifacts = {a.path for a in client.list_artifacts(row["run_id"])}
    assert {
        "config.yaml",
        "predictions.parquet",
        "intervention",
        "environment.json",
        "train_loss.png",
    } <= artifacts
    assert len(client.get_metric_history(row["run_id"], "train_loss")) >= 1
    # threshold-free metrics (fair on imbalanced data) and the figures a person looks at
    for name in ("roc_auc", "log_loss", "val_roc_auc", "val_log_loss"):
        assert row[f"metrics.{name}"] == pytest.approx(metrics[name]) and metrics[name] >= 0
    assert 0 <= metrics["roc_auc"] <= 1
    figures = {a.path for a in client.list_artifacts(row["run_id"], "figures")}
    assert figures == {"figures/confusion_matrix.png", "figures/roc_curve.png"}
    assert "mlflow.parentRunId" not in mlflow.get_run(row["run_id"]).data.tags  # a single run: top-level
    predictions = pd.read_parquet(tmp_path / "job" / "predictions.parquet")
    assert predictions["split"].value_counts().to_dict() == {"val": 16, "test": 16}
    assert set(predictions["prediction"]) <= {"Yes", "No"}
    test = predictions[predictions["split"] == "test"]
    assert row["metrics.accuracy"] == pytest.approx((test["prediction"] == test["label"]).mean())
    val = predictions[predictions["split"] == "val"]
    assert row["metrics.val_accuracy"] == pytest.approx((val["prediction"] == val["label"]).mean())
    assert ((predictions["p_yes"] > 0.5) == (predictions["prediction"] == "Yes")).all()


def test_system_metrics_are_sampled_into_the_run_and_can_be_turned_off(in_root, mlflow_uri, tmp_path):
    for name, extra in (("on", ["mlflow.system_metrics_interval=0.5", "trainer.epochs=3"]),
                        ("off", ["mlflow.system_metrics=false"])):  # fmt: skip
        run.run(compose(*tiny_overrides(f"mlflow.tracking_uri={mlflow_uri}", f"run_name={name}", *extra)),
                output_dir=tmp_path / name)  # fmt: skip
    table = runs(mlflow_uri).set_index("tags.mlflow.runName")
    system = [c for c in table.columns if c.startswith("metrics.system/")]
    assert (
        "metrics.system/cpu_utilization_percentage" in system
        and "metrics.system/system_memory_usage_megabytes" in system
    )
    assert table.loc["on", system].notna().any() and table.loc["off", system].isna().all()


BAD = [
    (
        ["intervention.layer=30"],
        r"intervention.layer=30 is not a layer of model 'smollm2_135m': valid layers are 0..29",
    ),
    (["intervention.layer=-1"], r"valid layers are 0..29"),
    (["intervention.rank=0"], r"intervention.rank=0 .* integer >= 1"),
    (
        ["intervention.component=mlp_outptu"],
        r"component='mlp_outptu' is not valid: choose one of block_output",
    ),
    (["intervention.positions=last"], r"positions='last' is not valid: use pyreft's form"),
    (["data.path=data/nope.csv"], r"data.path='data/nope.csv': no such file"),
    (["data.text_column=review"], r"data.text_column='review' is not a column .* deceptive, hotel, polarity"),
    (["trainer.batch_size=0"], r"trainer.batch_size=0 is not valid"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[b[0][0] for b in BAD])
def test_bad_input_fails_early_and_is_recorded_failed(
    in_root, mlflow_uri, tmp_path, monkeypatch, overrides, message
):
    def no_loading(*_):
        raise AssertionError("the model must not be loaded for bad settings")

    monkeypatch.setattr(models, "load_model_and_tokenizer", no_loading)
    cfg = compose(*overrides, f"mlflow.tracking_uri={mlflow_uri}")
    with pytest.raises(ValueError, match=message):
        run.run(cfg, output_dir=tmp_path / "bad")
    (row,) = runs(mlflow_uri).to_dict("records")
    assert row["status"] == "FAILED"
    assert re.search(message, row["tags.error"])


def test_rank_larger_than_the_model_is_refused(in_root, mlflow_uri, tmp_path):
    cfg = compose(*tiny_overrides("intervention.rank=64", f"mlflow.tracking_uri={mlflow_uri}"))
    with pytest.raises(
        ValueError, match=r"rank=64 is larger than the block_output size .* valid ranks are 1..32"
    ):
        run.run(cfg, output_dir=tmp_path / "bad")
    assert runs(mlflow_uri)["status"].tolist() == ["FAILED"]

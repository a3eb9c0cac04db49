"""Lose nothing, leak nothing, second round: secrets in error texts and Hydra's files, results kept
when the model logging fails, diverged runs and unreadable test splits are not results, resume
knows the code, wrong types fail at composition."""

import json
import math
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import PYTHON, ROOT, compose, runs, tiny_overrides, train_here

from reftlab import run, validate
from reftlab.config import identity
from reftlab.report import render
from reftlab.tasks import results
from reftlab.tasks.yes_no import YesNo

SECRET = "tok3n"
LEAKY_URL = f"https://bob:{SECRET}@example.invalid/d.csv"


def texts_under(folder: Path) -> dict[str, str]:
    return {str(p): p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file()}


def artifact_texts(uri: str, run_id: str) -> str:
    import mlflow

    client = mlflow.tracking.MlflowClient(uri)
    out = []
    for item in client.list_artifacts(run_id):
        if not item.is_dir and item.path.endswith((".txt", ".yaml", ".json", ".md")):
            out.append(Path(client.download_artifacts(run_id, item.path)).read_text())
    return "\n".join(out)


@pytest.mark.slow
def test_a_credential_in_a_data_url_never_leaves_the_process(mlflow_uri, tmp_path):
    common = ["data=csv", f"data.path={LEAKY_URL}", f"mlflow.tracking_uri={mlflow_uri}"]
    # in this process: what it prints (Hydra's log handlers included) is captured like a process's
    single = train_here(*tiny_overrides(*common), f"hydra.run.dir={tmp_path / 'one'}")
    assert single.returncode == 2 and "bob:***@example.invalid" in single.stderr
    sweep = train_here("-m", *tiny_overrides(*common, "seed=1,2"), f"hydra.sweep.dir={tmp_path / 'many'}")
    assert sweep.returncode == 1 and "#1 : " in sweep.stdout + sweep.stderr  # the launcher's job lines
    for said in (single.stdout, single.stderr, sweep.stdout, sweep.stderr):
        assert SECRET not in said
    files = texts_under(tmp_path)
    assert {"one/.hydra/config.yaml", "one/.hydra/overrides.yaml", "one/.hydra/hydra.yaml", "one/status.json",
            "many/multirun.yaml", "many/1/.hydra/overrides.yaml"} <= {str(Path(p).relative_to(tmp_path)) for p in files}  # fmt: skip
    assert [p for p, text in files.items() if SECRET in text] == []
    recorded = runs(mlflow_uri)
    assert recorded["status"].tolist() == ["FAILED"] * 3
    assert recorded["tags.error"].str.contains("bob:***@example.invalid", regex=False).all()
    for row in recorded.to_dict("records"):
        assert SECRET not in json.dumps({k: str(v) for k, v in row.items()})
        assert SECRET not in artifact_texts(mlflow_uri, row["run_id"])  # error.txt, config.yaml


@pytest.mark.slow
def test_results_are_kept_when_logging_the_model_fails(in_root, mlflow_uri, tmp_path, monkeypatch, capsys):
    from reftlab.serving import pyfunc

    def refused(*a, **k):
        raise RuntimeError("the artifact server answered 503")

    monkeypatch.setattr(pyfunc, "log", refused)
    metrics = run.run(
        compose(*tiny_overrides(f"mlflow.tracking_uri={mlflow_uri}")), output_dir=tmp_path / "job"
    )
    (row,) = runs(mlflow_uri).to_dict("records")
    assert row["status"] == "FINISHED" and row["metrics.accuracy"] == pytest.approx(metrics["accuracy"])
    assert "503" in row["tags.warning"]
    assert (tmp_path / "job" / "predictions.parquet").exists() and (
        tmp_path / "job" / "metrics.json"
    ).exists()
    assert (tmp_path / "job" / "intervention" / "README.md").exists()  # the card, and the weights artifact
    assert "WARNING: the MLflow model was not logged" in capsys.readouterr().err


def test_a_registry_name_mlflow_refuses_stops_before_training():
    from reftlab import methods

    cfg = compose("mlflow.register_model=team/detector")
    with pytest.raises(
        validate.ConfigError, match=r"mlflow.register_model='team/detector' is not valid: .*'/'"
    ):
        validate.check(cfg, methods.get(cfg.intervention.method))


@pytest.mark.slow
def test_a_diverged_run_fails_naming_the_step_and_the_setting(in_root, mlflow_uri, tmp_path):
    cfg = compose(
        *tiny_overrides("intervention=direft", "trainer.lr=1e30", f"mlflow.tracking_uri={mlflow_uri}")
    )
    with pytest.raises(validate.DivergedError, match=r"training diverged at step \d+ of \d+: .*trainer.lr"):
        run.run(cfg, output_dir=tmp_path / "job")
    (row,) = runs(mlflow_uri).to_dict("records")
    assert row["status"] == "FAILED" and "diverged" in row["tags.error"]
    assert "metrics.accuracy" not in row or math.isnan(row["metrics.accuracy"])
    assert not (tmp_path / "job" / "metrics.json").exists()


def test_non_finite_scores_fail_the_run():
    cfg = compose()
    with pytest.raises(validate.DivergedError, match="1 of 3 scores are not numbers .*model.dtype=float32"):
        results.check_scores(YesNo(None), [0.1, float("nan"), -2.0], cfg)
    results.check_scores(YesNo(None), [0.1, 3.0], cfg)  # finite: nothing to say


def report_rows(**extra) -> pd.DataFrame:
    """Runs as MLflow's search_runs gives them: a LoReFT run that diverged (recorded FINISHED by older
    code), two sound ones, and a TF-IDF run (no training loss: not a divergence)."""
    base = {"status": "FINISHED", "tags.method": "loreft", "params.seed": "1", "tags.data_hash": "d",
            "tags.model": "tiny", "experiment_id": "1", "params.trainer.epochs": "5",
            "metrics.trainable_params": 100.0, "metrics.tp": 5, "metrics.fn": 5, "metrics.tn": 5, "metrics.fp": 5}  # fmt: skip
    rows = [
        {**base, "run_id": "nan", "params.trainer.lr": "1e30", "metrics.val_accuracy": 0.9,
         "metrics.accuracy": 0.5, "metrics.train_loss_last": float("nan")},
        {**base, "run_id": "a", "params.trainer.lr": "1e-3", "metrics.val_accuracy": 0.7,
         "metrics.accuracy": 0.7, "metrics.train_loss_last": 0.3},
        {**base, "run_id": "b", "params.trainer.lr": "1e-3", "params.seed": "2", "metrics.val_accuracy": 0.72,
         "metrics.accuracy": 0.71, "metrics.train_loss_last": 0.3},
        {**base, "run_id": "t", "tags.method": "tfidf", "params.trainer.lr": "1e-3", "metrics.val_accuracy": 0.6,
         "metrics.accuracy": 0.6, "metrics.trainable_params": 10.0},
    ]  # fmt: skip
    frame = pd.DataFrame(rows)
    for key, value in extra.items():
        frame[key] = value
    frame["start_time"] = pd.Timestamp("2026-01-01")
    return frame


def test_the_report_never_chooses_a_diverged_run(tmp_path, mlflow_uri):
    import mlflow

    mlflow.set_tracking_uri(mlflow_uri)  # the report looks its runs' predictions up: in a store of its own
    result = render.write(report_rows(), tmp_path, "t")
    assert result["failed"] == 1 and result["finished"] == 3
    chosen = result["table"].loc[result["chosen"]["overall"]]
    assert chosen["method"] == "loreft" and set(chosen["_runs"]["run_id"]) == {"a", "b"}
    assert "DIVERGED" in (tmp_path / "report.md").read_text()


def test_the_report_says_when_runs_mix_code_versions_or_small_test_splits(tmp_path, mlflow_uri):
    import mlflow

    mlflow.set_tracking_uri(mlflow_uri)  # not ./mlflow.db
    plain = render.write(report_rows(**{"tags.code_version": "c1"}), tmp_path / "a", "t")
    assert plain["caveats"] == []
    mixed = report_rows(**{"tags.code_version": ["c1", "c1", "c2", "c2"]})
    mixed["tags.result_warning"] = ["", "", "the test split is too small to judge (3 examples)", ""]
    notes = render.write(mixed, tmp_path / "b", "t")["caveats"]
    assert any("1 of 3 runs were scored on a test split too small" in n for n in notes)
    assert any("2 versions of reftlab's code" in n for n in notes)
    assert "2 versions of reftlab" in (tmp_path / "b" / "report.html").read_text()


@pytest.mark.slow
def test_a_test_split_too_small_to_judge_is_flagged(in_root, mlflow_uri, tmp_path, capsys):
    tiny = ["intervention=tfidf", "data=persuasion_sample", f"mlflow.tracking_uri={mlflow_uri}"]
    run.run(compose(*tiny, "data.eval_fraction=0.05"), output_dir=tmp_path / "blog")  # the blog's 95/5 split
    said = capsys.readouterr().err
    assert "WARNING: the test split is too small to judge" in said and "data.eval_fraction" in said
    assert "trainable parameters" in said and "(nan%)" not in said  # TF-IDF has no model to take a share of
    run.run(compose(*tiny), output_dir=tmp_path / "preset")  # the preset's own split can be read
    blog, preset = runs(mlflow_uri).sort_values("start_time").to_dict("records")
    assert blog["metrics.test_judgeable"] == 0 and "too small" in blog["tags.result_warning"]
    assert preset["metrics.test_judgeable"] == 1 and preset["metrics.eval_examples"] >= results.MIN_JUDGED
    assert "WARNING: the test split" not in capsys.readouterr().err


def test_judge_names_one_class_and_small_splits():
    frame = lambda labels: pd.DataFrame({"label": labels})  # noqa: E731
    prepared = type("P", (), {"eval": frame(["No"] * 40), "val": frame(["Yes", "No"] * 20)})()
    (note,) = results.judge(prepared)
    assert note.startswith("the test split is too small to judge (all 'No'")
    prepared.eval, prepared.val = frame(["Yes", "No"] * 20), frame(["Yes", "No"] * 5)
    assert results.judge(prepared) == [
        "the validation split is too small to judge (10 examples; at least 30 examples of more than one label are needed): "
        "its accuracy says little. Raise data.val_fraction or use more data"
    ]


@pytest.mark.slow
def test_resume_reruns_a_job_after_the_code_changed(in_root, mlflow_uri, tmp_path, monkeypatch):
    cfg = compose("intervention=tfidf", "data.max_train=64", f"mlflow.tracking_uri={mlflow_uri}")
    run.run(cfg, output_dir=tmp_path / "a")
    run.run(cfg, output_dir=tmp_path / "b")  # same code: skipped
    assert json.loads((tmp_path / "b" / "status.json").read_text())["status"] == "skipped"
    today = identity.code_version()
    monkeypatch.setattr(identity, "code_version", lambda: "a-fix")
    run.run(cfg, output_dir=tmp_path / "c")  # the fix: a new result, not the old numbers
    recorded = runs(mlflow_uri)
    assert recorded["status"].tolist() == ["FINISHED", "FINISHED"]
    assert set(recorded["tags.code_version"]) == {"a-fix", today}


def test_the_code_version_and_a_local_model_change_the_identity(tmp_path):
    assert (
        len(identity.code_version()) == 16 and identity.code_version() == identity.code_version.__wrapped__()
    )
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"a" * 3_000_000)
    model = compose("model=llama3_8b_instruct", f"model.path={folder}").model
    before = identity.model_fingerprint(model)
    (folder / "model.safetensors").write_bytes(b"a" * 2_999_999 + b"b")  # same size, the last byte differs
    assert before and identity.model_fingerprint(model) != before
    assert (
        identity.model_fingerprint(compose("model=llama3_8b_instruct").model) == ""
    )  # a hub id: the config names it


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["trainer.lr=abc"], "trainer.lr"),
        (["trainer.epochs=1.5"], "trainer.epochs"),
        (["trainer.cache_from=low"], "trainer.cache_from"),
        (["data.eval_fraction=abc"], "data.eval_fraction"),
        (["data=persuasion_sample", "data.upsample_seed=x"], "data.upsample_seed"),
        (["intervention.dropout=abc"], "intervention.dropout"),
        (["intervention=lora", "intervention.alpha=abc"], "intervention.alpha"),
        (["intervention=tfidf", "intervention.C=x"], "intervention.C"),
    ],
)
def test_a_value_of_the_wrong_type_fails_at_composition_naming_its_key(overrides, key):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as e:
        compose(*overrides)
    assert f"full_key: {key}" in str(e.value.__cause__)


def test_a_wrong_type_on_the_command_line_stops_before_anything_runs(tmp_path):
    out = subprocess.run([PYTHON, "train.py", "trainer.lr=abc", f"hydra.run.dir={tmp_path / 'x'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 1 and "Value 'abc' of type 'str' could not be converted to Float" in out.stderr
    assert "full_key: trainer.lr" in out.stderr and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_metrics_json_is_strict_and_no_loss_is_made_up_without_training(in_root, mlflow_uri, tmp_path):
    assert json.loads(results.strict_json({"a": float("nan"), "b": 1.5})) == {"a": None, "b": 1.5}
    cfg = compose(*tiny_overrides("trainer.epochs=0", f"mlflow.tracking_uri={mlflow_uri}"))
    metrics = run.run(cfg, output_dir=tmp_path / "job")
    assert "train_loss_last" not in metrics and "train_loss_first" not in metrics
    text = (tmp_path / "job" / "metrics.json").read_text()

    def refuse(constant):
        raise ValueError(f"{constant} in metrics.json")

    json.loads(text, parse_constant=refuse)  # no bare NaN or Infinity
    (row,) = runs(mlflow_uri).to_dict("records")
    assert row["status"] == "FINISHED" and "metrics.train_loss_last" not in row


@pytest.mark.slow
def test_a_sweep_whose_jobs_cannot_compose_leaves_its_parent_failed_not_running(tmp_path, mlflow_uri):
    # here: the launcher fails in this process, whose exit hook (run at the call's end) closes the parent
    out = train_here("-m", "intervention=tfidf", "trainer.lr=1e-3,abc", f"mlflow.tracking_uri={mlflow_uri}",
                     f"hydra.sweep.dir={tmp_path / 's'}")  # fmt: skip
    assert out.returncode == 1 and "full_key: trainer.lr" in out.stderr
    assert not (tmp_path / "s" / "0").exists()  # no job ran
    (parent,) = runs(mlflow_uri, sweeps=True).to_dict("records")
    assert parent["tags.kind"] == "sweep" and parent["status"] == "FAILED"
    assert "before any job started" in parent["tags.error"]


def test_a_job_outside_hydra_is_never_a_child_of_a_sweep_left_in_the_environment(monkeypatch):
    from reftlab.sweep import parent

    monkeypatch.setenv(parent.ENV, "0123456789abcdef0123456789abcdef")  # e.g. from an in-process sweep
    assert parent.of_this_job() is None


def test_reference_lines_come_from_runs_of_the_same_task():
    """Another experiment's runs on the same data draw reference lines only where they answered the same
    task (a run logged before tasks existed answered Yes/No)."""
    from reftlab.report.runs import comparable, tidy

    finished = tidy(report_rows(**{"params.task.name": "classify"}))
    assert comparable(report_rows(), finished).empty
    assert comparable(report_rows(**{"params.task.name": "yes_no"}), finished).empty
    same = comparable(report_rows(**{"params.task.name": "classify"}), finished)
    assert len(same) and len(same) == len(
        comparable(report_rows(), tidy(report_rows()))
    )  # Yes/No beside Yes/No

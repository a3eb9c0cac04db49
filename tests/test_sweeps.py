"""Sweeps that scale and survive: parallel launchers, resume, SIGTERM, a shared tracking server."""

import signal
import subprocess
import time

import pytest
from conftest import PYTHON, ROOT, compose, one_thread, runs, store_in, tiny_overrides, train_here

from reftlab import run

pytestmark = pytest.mark.slow  # every test here starts train.py (and some a server)


def train(tmp_path, uri, *overrides, multirun=True, timeout=600, here=False):
    """train.py on the tiny model: in a process of its own, or (`here`) in this one, where a sweep
    needs no other process (Hydra's basic launcher runs its jobs in the sweep's own process)."""
    args = [*(["-m"] if multirun else []), *tiny_overrides(*overrides), f"mlflow.tracking_uri={uri}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    if here:
        return train_here(*args)
    return subprocess.run(
        [PYTHON, "train.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=one_thread(),
    )


@pytest.fixture(scope="module")
def layer_sweep(tmp_path_factory, empty_store):
    """One sweep of the tiny model (3 layers) under Hydra's basic launcher, in this process: layer 2,
    then 9 (no such layer: it fails), then 0; the higher layer runs first. Its output and store."""
    folder = tmp_path_factory.mktemp("layer-sweep")
    uri = store_in(folder, empty_store)
    out = train(
        folder,
        uri,
        "model.num_layers=3",
        "intervention.layer=2,9,0",
        f"trainer.cache_dir={folder / 'prefix'}",
        here=True,
    )
    return out, uri, folder


def test_a_failing_job_is_summarised_and_the_rest_run(layer_sweep):
    out, uri, _ = layer_sweep
    assert out.returncode != 0
    assert "3 jobs: 2 finished, 1 failed, 0 skipped" in out.stderr
    assert "valid layers are 0..2" in out.stderr
    table = runs(uri).set_index("params.intervention.layer")
    assert table.loc["9", "status"] == "FAILED" and table.loc["9", "tags.error"]
    assert table.loc["0", "status"] == table.loc["2", "status"] == "FINISHED"


METRICS = ["accuracy", "f1", "train_seconds", "eval_seconds", "trainable_params", "trainable_percent",
           "peak_memory_mb"]  # fmt: skip


def test_the_jobs_that_finish_leave_their_runs_and_files_and_are_ranked(layer_sweep):
    out, uri, folder = layer_sweep
    table = runs(uri)
    table = table[table["status"] == "FINISHED"]
    assert sorted(table["params.intervention.layer"]) == ["0", "2"]
    assert table["tags.data_version"].notna().all() and table["tags.data_version"].nunique() == 1
    for name in METRICS:
        assert table[f"metrics.{name}"].notna().all(), name
    assert (folder / "multirun" / "0" / "predictions.parquet").exists()
    assert (folder / "multirun" / "2" / "intervention" / "reft_settings.json").exists()
    # the sweep ends with its jobs ranked by validation accuracy, test beside it
    ranked = out.stderr[out.stderr.index("jobs ranked by validation accuracy") :].splitlines()
    first, second = ranked[2].split(), ranked[3].split()
    assert first[-1].startswith("intervention.layer=") and len(first) == 5  # only what differs is shown
    layer = first[-1].split("=")[1]
    val = table.set_index("params.intervention.layer")["metrics.val_accuracy"]
    assert first[1] == f"{100 * val[layer]:.1f}%" and val[layer] == val.max()
    assert float(first[1].rstrip("%")) >= float(second[1].rstrip("%"))


def test_a_sweep_over_layers_builds_one_prefix_cache(layer_sweep, in_root, mlflow_uri, tmp_path):
    from reftlab.engine import store as cache_store

    # the higher layer ran first; the sweep's lowest layer still decides where the one cache starts
    _, uri, folder = layer_sweep
    table = runs(uri).set_index("params.intervention.layer").drop(index="9")
    assert set(table["tags.train_path"]) == {"cached"}
    assert list(table["tags.cache_point"]) == ["0", "0"]  # block_output of layer 0 is point 1: served from 0
    assert table.loc["2", "tags.cache_source"] == "built"
    assert table.loc["0", "tags.cache_source"] in ("memory", "disk")
    # the training and evaluation caches were each stored once
    assert len(list((folder / "prefix").rglob("*.safetensors"))) == 2
    # a later single run at a layer in between is served by the stored cache, no new pass
    cache_store.clear_memory()  # nothing of this process's own: what it finds comes from the folder
    cfg = compose(*tiny_overrides("model.num_layers=3", "intervention.layer=1", f"trainer.cache_dir={folder / 'prefix'}",
                                  "save_intervention=false", f"mlflow.tracking_uri={mlflow_uri}"))  # fmt: skip
    run.run(cfg, output_dir=tmp_path / "one")
    row = runs(mlflow_uri).set_index("params.intervention.layer").loc["1"]
    assert row["tags.cache_source"] == "disk" and row["tags.cache_point"] == "0"


def test_sigterm_marks_the_run_killed(tmp_path, mlflow_uri):
    args = [PYTHON, "train.py", *tiny_overrides("trainer.epochs=100000", "data.max_train=64",
            f"mlflow.tracking_uri={mlflow_uri}", f"hydra.run.dir={tmp_path / 'run'}")]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until training has started (the run exists and is RUNNING)
            table = runs(mlflow_uri)
            if (
                len(table)
                and (tmp_path / "run" / "config.yaml").exists()
                and table["status"].iloc[0] == "RUNNING"
            ):
                break
            time.sleep(1)
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    table = runs(mlflow_uri)
    assert table["status"].tolist() == ["KILLED"]
    assert "Terminated" in table["tags.error"].iloc[0]
    assert '"killed"' in (tmp_path / "run" / "status.json").read_text()


def tfidf(folder, uri, *overrides, multirun=True):
    """train.py with TF-IDF (seconds a job, no language model) on a capped default split, in this
    process (the basic launcher runs a sweep's jobs in its own process)."""
    return train_here(*(["-m"] if multirun else []), "data.max_val=32", "data.max_eval=32", *overrides,
                      "intervention=tfidf", f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={folder / 'multirun'}",
                      f"hydra.run.dir={folder / 'run'}")  # fmt: skip


def check_parent(out, table, uri: str, key: str, values: str):
    """The sweep (2 jobs, both finished now) is one parent run with its jobs as children; the parent
    holds the counts, the best job by validation, the wall-clock and the report; the lines that point
    to it are printed, with the sweep's summary once. `table`: the store's runs, parents too, then."""
    import mlflow

    assert out.returncode == 0, out.stderr[-3000:]
    (parent,) = table[table["tags.kind"] == "sweep"].to_dict("records")
    children = table[table["tags.kind"] != "sweep"]
    jobs = children[children["status"] == "FINISHED"]
    assert len(jobs) == 2 and set(children["tags.mlflow.parentRunId"]) == {parent["run_id"]}
    assert parent["status"] == "FINISHED" and parent["tags.mlflow.runName"] == f"sweep {key}={values}"
    assert parent[f"params.sweep.{key}"] == values and parent["metrics.jobs_finished"] == 2
    best = jobs.set_index("run_id").loc[parent["tags.best_run_id"]]  # a job of the best validation accuracy
    assert best["metrics.val_accuracy"] == jobs["metrics.val_accuracy"].max()
    assert parent["metrics.best_test_accuracy"] == pytest.approx(best["metrics.accuracy"])
    assert parent["metrics.sweep_seconds"] > 0
    client = mlflow.tracking.MlflowClient(uri)
    assert {a.path for a in client.list_artifacts(parent["run_id"], "report")} >= {
        "report/report.md",
        "report/report.html",
    }
    experiment = client.get_experiment(parent["experiment_id"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the model-training view
    said = out.stdout + out.stderr
    assert (
        f"#/experiments/{parent['experiment_id']}/runs/{parent['run_id']}?workflowType=machine_learning"
        in said
    )
    assert f"python report.py --run {parent['run_id']}" in said and said.count("sweep summary:") == 1
    return parent


@pytest.fixture(scope="module")
def tfidf_sweep(tmp_path_factory, empty_store):
    """A two-job TF-IDF sweep; the same sweep again; then one of its jobs again with force=true. What
    each printed, and the store's runs (parents too) after each."""
    folder = tmp_path_factory.mktemp("tfidf-sweep")
    uri = store_in(folder, empty_store)
    done = {"uri": uri, "folder": folder}
    for step, extra in (("first", ["data.max_train=32,48"]), ("again", ["data.max_train=32,48"]),
                        ("forced", ["data.max_train=32", "force=true"])):  # fmt: skip
        done[step] = tfidf(folder / step, uri, *extra)
        done[f"{step}_runs"] = runs(uri, sweeps=True)
    return done


def test_a_sweep_is_one_parent_run_with_its_jobs_as_children_and_its_report(tfidf_sweep, tmp_path):
    uri, table = tfidf_sweep["uri"], tfidf_sweep["first_runs"]
    parent = check_parent(tfidf_sweep["first"], table, uri, "data.max_train", "32,48")
    jobs = table[table["tags.kind"] != "sweep"].reset_index(drop=True)
    assert len(jobs) == 2  # its only jobs: both finished
    assert parent["tags.best_run_id"] == jobs.loc[jobs["metrics.val_accuracy"].idxmax(), "run_id"]
    # the same sweep again (resume): its jobs are skipped and it continues under the same parent
    again, table = tfidf_sweep["again"], tfidf_sweep["again_runs"]
    assert again.returncode == 0 and "2 skipped" in again.stderr
    assert (table["tags.kind"] == "sweep").sum() == 1 and len(table) == 3
    # report.py --run reports exactly this sweep
    report = subprocess.run([PYTHON, "report.py", "--run", parent["run_id"], "--tracking-uri", uri,
                             "--out", str(tmp_path / "r"), "--no-mlflow"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert report.returncode == 0 and "2 finished, 0 failed" in report.stdout, report.stderr[-2000:]
    # a single run stays top-level
    single = tfidf(tmp_path / "one", uri, "data.max_train=40", multirun=False)
    assert single.returncode == 0
    table = runs(uri, sweeps=True)
    lone = table[table["params.data.max_train"] == "40"]
    assert len(lone) == 1 and lone["tags.mlflow.parentRunId"].isna().all()


def test_rerunning_a_finished_sweep_skips_every_job(tfidf_sweep):
    again = tfidf_sweep["again"]
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 jobs: 0 finished, 0 failed, 2 skipped" in again.stderr
    jobs = lambda table: table[table["tags.kind"] != "sweep"]  # noqa: E731
    assert len(jobs(tfidf_sweep["again_runs"])) == 2
    forced = tfidf_sweep["forced"]
    assert forced.returncode == 0 and "1 finished" in forced.stderr
    assert len(jobs(tfidf_sweep["forced_runs"])) == 3

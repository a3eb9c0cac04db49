"""Sweeps that scale and survive: parallel launchers, resume, SIGTERM, a shared tracking server."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import PYTHON, ROOT, runs, tiny_overrides


def train(tmp_path, uri, *overrides, multirun=True, timeout=600):
    args = [PYTHON, "train.py", *(["-m"] if multirun else []), *tiny_overrides(*overrides),
            f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={tmp_path / 'multirun'}",
            f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_joblib_runs_two_jobs_in_parallel(tmp_path, mlflow_uri):
    out = train(tmp_path, mlflow_uri, "hydra/launcher=local_parallel", "intervention.layer=0,1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "sweep summary: 2 jobs: 2 finished, 0 failed, 0 skipped" in out.stderr
    table = runs(mlflow_uri)
    assert sorted(table["params.intervention.layer"]) == ["0", "1"]
    assert set(table["status"]) == {"FINISHED"} and table["metrics.accuracy"].notna().all()
    # The two jobs overlapped in time (parallel), each in its own process.
    start, end = table["start_time"], table["end_time"]
    assert start.max() < end.min()


def test_submitit_local_runs_the_same_code_path(tmp_path, mlflow_uri):
    out = train(tmp_path, mlflow_uri, "hydra/launcher=submitit_local", "intervention.rank=1,2")
    assert out.returncode == 0, out.stderr[-3000:]
    table = runs(mlflow_uri)
    assert sorted(table["params.intervention.rank"]) == ["1", "2"]
    assert set(table["status"]) == {"FINISHED"}
    # jobs in submitit's own processes find their sweep's parent run through the sweep folder
    (parent,) = runs(mlflow_uri, sweeps=True).query("`tags.kind` == 'sweep'")["run_id"]
    assert set(table["tags.mlflow.parentRunId"]) == {parent}


def test_rerunning_a_finished_sweep_skips_every_job(tmp_path, mlflow_uri):
    first = train(tmp_path / "a", mlflow_uri, "intervention.layer=0,1")
    assert first.returncode == 0, first.stderr[-3000:]
    again = train(tmp_path / "b", mlflow_uri, "intervention.layer=0,1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 jobs: 0 finished, 0 failed, 2 skipped" in again.stderr
    assert len(runs(mlflow_uri)) == 2
    forced = train(tmp_path / "c", mlflow_uri, "intervention.layer=0", "force=true")
    assert forced.returncode == 0 and "1 finished" in forced.stderr
    assert len(runs(mlflow_uri)) == 3


def test_a_failing_job_is_summarised_and_the_rest_run(tmp_path, mlflow_uri):
    out = train(tmp_path, mlflow_uri, "intervention.layer=0,9,1")
    assert out.returncode != 0
    assert "3 jobs: 2 finished, 1 failed, 0 skipped" in out.stderr
    assert "valid layers are 0..1" in out.stderr
    table = runs(mlflow_uri).set_index("params.intervention.layer")
    assert table.loc["9", "status"] == "FAILED" and table.loc["9", "tags.error"]
    assert table.loc["0", "status"] == table.loc["1", "status"] == "FINISHED"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc=None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return (
        found[-1].parent
        if found
        else (Path(shutil.which("initdb")).parent if shutil.which("initdb") else None)
    )


@pytest.fixture
def postgres():
    """A real PostgreSQL on loopback, run as the postgres user when we are root; stopped by its pid."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        if os.environ.get("CI") == "true":  # in CI it must run: .ci/run installs it
            pytest.fail(
                "PostgreSQL is not installed, and CI must run this test (.ci/run installs postgresql)"
            )
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    top = Path(tempfile.mkdtemp(prefix="reftlab-pg-"))  # pytest's tmp dirs are private to root
    os.chmod(top, 0o755)
    data = top / "pg"
    data.mkdir()
    if as_user:
        shutil.chown(data, "postgres")
    port = free_port()
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)  # fmt: skip
    server = subprocess.Popen(
        [*as_user, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(data),
         "-c", "listen_addresses=127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, 60, server)
        time.sleep(1)
        subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow"],
                       check=True, capture_output=True)  # fmt: skip
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        pid = (
            int((data / "postmaster.pid").read_text().split()[0])
            if (data / "postmaster.pid").exists()
            else None
        )
        if pid:
            os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown, by its own pid
        server.wait(timeout=60)
        shutil.rmtree(top, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(tmp_path, *args: str, env=None):
    """An `mlflow server` on a free loopback port with proxied artifacts; yields its URI; stopped
    (with its workers, by the server's own pid) at the end."""
    port = free_port()
    log_path = tmp_path / "mlflow-server.log"
    server = subprocess.Popen(
        [str(Path(PYTHON).parent / "mlflow"), "server", *args, "--serve-artifacts", "--artifacts-destination",
         str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(log_path, "w"), start_new_session=True,
    )  # fmt: skip
    try:
        try:
            wait_for_port(port, 180, server)
        except RuntimeError as e:
            raise RuntimeError(f"{e}: {log_path.read_text()[-2000:]}") from e
        yield f"http://127.0.0.1:{port}"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def test_parallel_sweep_against_a_tracking_server_on_postgresql(tmp_path, postgres):
    import mlflow

    with mlflow_server(tmp_path, "--backend-store-uri", postgres) as uri:
        out = train(tmp_path, uri, "hydra/launcher=local_parallel", "intervention.layer=0,1")
        assert out.returncode == 0, out.stderr[-3000:]
        table = runs(uri)
        assert sorted(table["params.intervention.layer"]) == ["0", "1"]
        assert set(table["status"]) == {"FINISHED"}
        assert table["metrics.accuracy"].notna().all() and table["metrics.train_seconds"].notna().all()
        client = mlflow.tracking.MlflowClient(uri)
        artifacts = {a.path for a in client.list_artifacts(table["run_id"].iloc[0])}
        assert "predictions.parquet" in artifacts  # proxied artifact store
        assert any((tmp_path / "artifacts").rglob("predictions.parquet"))


def test_the_authenticated_server_refuses_strangers_and_takes_a_run(tmp_path):
    """`make mlflow-server-auth`'s app on loopback: no credentials -> 401; a train.py run with the
    client credentials from the environment logs normally."""
    import urllib.error
    import urllib.request

    env = {**os.environ, "MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": "pw-for-the-test-9",
           "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"), "MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 64}  # fmt: skip
    ini = (ROOT / "conf/mlflow/basic_auth.ini").read_text()
    (tmp_path / "auth.ini").write_text(
        ini.replace("sqlite:///mlflow-auth.db", f"sqlite:///{tmp_path / 'auth.db'}")
    )
    store = f"sqlite:///{tmp_path / 'store.db'}"
    with mlflow_server(tmp_path, "--app-name", "basic-auth", "--backend-store-uri", store, env=env) as uri:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{uri}/api/2.0/mlflow/experiments/search?max_results=5", timeout=30)
        assert refused.value.code == 401
        login = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "pw-for-the-test-9"}
        out = subprocess.run([PYTHON, "train.py", *tiny_overrides(f"mlflow.tracking_uri={uri}",
                                                                   f"hydra.run.dir={tmp_path / 'run'}")],
                             cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, **login})  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        os.environ.update(login)
        try:
            table = runs(uri)
        finally:
            for key in login:
                del os.environ[key]
        assert table["status"].tolist() == ["FINISHED"]


def test_a_sweep_over_layers_builds_one_prefix_cache(tmp_path, mlflow_uri):
    # the higher layer runs first; the sweep's lowest layer still decides where the one cache starts
    out = train(tmp_path, mlflow_uri, "model.num_layers=3", "intervention.layer=2,0",
                f"trainer.cache_dir={tmp_path / 'prefix'}", "save_intervention=false")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    table = runs(mlflow_uri).set_index("params.intervention.layer")
    assert set(table["tags.train_path"]) == {"cached"}
    assert list(table["tags.cache_point"]) == ["0", "0"]  # block_output of layer 0 is point 1: served from 0
    assert table.loc["2", "tags.cache_source"] == "built"
    assert table.loc["0", "tags.cache_source"] in ("memory", "disk")
    # the training and evaluation caches were each stored once
    assert len(list((tmp_path / "prefix").rglob("*.safetensors"))) == 2
    # a later single run at a layer in between is served by the stored cache, no new pass
    single = train(tmp_path / "one", mlflow_uri, "model.num_layers=3", "intervention.layer=1",
                   f"trainer.cache_dir={tmp_path / 'prefix'}", "save_intervention=false", multirun=False)  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    row = runs(mlflow_uri).set_index("params.intervention.layer").loc["1"]
    assert row["tags.cache_source"] == "disk" and row["tags.cache_point"] == "0"


@pytest.mark.parametrize("launcher", ["local_parallel", "submitit_local"])
def test_a_job_killed_mid_sweep_is_recorded_and_rerun(tmp_path, mlflow_uri, launcher):
    """Fault injection: kill -9 one job of a parallel sweep while it trains."""
    import json

    overrides = [
        "trainer.epochs=40",
        "data.max_train=64",
        f"hydra/launcher={launcher}",
        "intervention.layer=0,1",
    ]
    args = [PYTHON, "train.py", "-m", *tiny_overrides(*overrides, f"mlflow.tracking_uri={mlflow_uri}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}")]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    status = tmp_path / "multirun" / "0" / "status.json"

    def running(job):
        path = tmp_path / "multirun" / job / "status.json"
        return path.exists() and json.loads(path.read_text())["status"] == "running"

    try:
        deadline = time.time() + 300
        while not (running("0") and running("1")):  # both jobs have their runs (a slow machine starts late)
            assert proc.poll() is None and time.time() < deadline, "the sweep ended before its jobs trained"
            time.sleep(0.2)
        time.sleep(2)
        os.kill(json.loads(status.read_text())["pid"], signal.SIGKILL)
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode != 0
    everything = runs(mlflow_uri, sweeps=True)
    (sweep,) = everything[everything["tags.kind"] == "sweep"].to_dict("records")
    assert sweep["status"] in ("KILLED", "FAILED") and sweep["metrics.jobs_killed"] >= 1  # the parent too
    table = everything[everything["tags.kind"] != "sweep"].set_index("params.intervention.layer")
    # nothing is left RUNNING: the killed job's run is KILLED with the reason; under joblib the broken
    # worker pool stops the other job too (also KILLED), under submitit the other job finishes
    assert table.loc["0", "status"] == "KILLED" and "SIGKILL" in table.loc["0", "tags.error"]
    assert json.loads(status.read_text())["status"] == "killed"
    expected_other = "KILLED" if launcher == "local_parallel" else "FINISHED"
    assert table.loc["1", "status"] == expected_other
    assert "sweep summary: 2 jobs" in err and "job 0 killed" in err
    # re-running the sweep runs what did not finish, and skips what did
    again = train(tmp_path / "again", mlflow_uri, *overrides)
    assert again.returncode == 0, again.stderr[-3000:]
    finished = 2 if launcher == "local_parallel" else 1
    assert f"sweep summary: 2 jobs: {finished} finished, 0 failed, {2 - finished} skipped" in again.stderr


def tfidf(folder, uri, *overrides, multirun=True):
    """train.py with TF-IDF (seconds a job, no language model) on a capped default split."""
    args = [PYTHON, "train.py", *(["-m"] if multirun else []), "data.max_val=32", "data.max_eval=32", *overrides,
            "intervention=tfidf", f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={folder / 'multirun'}",
            f"hydra.run.dir={folder / 'run'}"]  # fmt: skip
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("launcher", ["basic", "local_parallel"])
def test_a_sweep_is_one_parent_run_with_its_jobs_as_children_and_its_report(tmp_path, mlflow_uri, launcher):
    import mlflow

    train = tfidf

    sweep = ["data.max_train=32,48"] + ([f"hydra/launcher={launcher}"] if launcher != "basic" else [])
    out = train(tmp_path, mlflow_uri, *sweep)
    assert out.returncode == 0, out.stderr[-3000:]
    table = runs(mlflow_uri, sweeps=True)
    (parent,) = table[table["tags.kind"] == "sweep"].to_dict("records")
    jobs = table[table["tags.kind"] != "sweep"]
    assert len(jobs) == 2 and set(jobs["tags.mlflow.parentRunId"]) == {parent["run_id"]}
    assert parent["status"] == "FINISHED" and parent["tags.mlflow.runName"] == "sweep data.max_train=32,48"
    assert parent["params.sweep.data.max_train"] == "32,48" and parent["metrics.jobs_finished"] == 2
    best = jobs.loc[jobs["metrics.val_accuracy"].idxmax()]
    assert parent["tags.best_run_id"] == best["run_id"]
    assert parent["metrics.best_test_accuracy"] == pytest.approx(best["metrics.accuracy"])
    assert parent["metrics.sweep_seconds"] > 0
    client = mlflow.tracking.MlflowClient(mlflow_uri)
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
    # the same sweep again (resume): its jobs are skipped and it continues under the same parent
    again = train(tmp_path / "again", mlflow_uri, *sweep)
    assert again.returncode == 0 and "2 skipped" in again.stderr
    table = runs(mlflow_uri, sweeps=True)
    assert (table["tags.kind"] == "sweep").sum() == 1 and len(table) == 3
    # report.py --run reports exactly this sweep
    report = subprocess.run([PYTHON, "report.py", "--run", parent["run_id"], "--tracking-uri", mlflow_uri,
                             "--out", str(tmp_path / "r"), "--no-mlflow"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert report.returncode == 0 and "2 finished, 0 failed" in report.stdout, report.stderr[-2000:]
    # a single run stays top-level
    single = train(tmp_path / "one", mlflow_uri, "data.max_train=40", multirun=False)
    assert single.returncode == 0
    table = runs(mlflow_uri, sweeps=True)
    lone = table[table["params.data.max_train"] == "40"]
    assert len(lone) == 1 and lone["tags.mlflow.parentRunId"].isna().all()

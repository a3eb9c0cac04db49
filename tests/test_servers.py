"""Tracking servers a team shares: a parallel sweep logs into an MLflow server on PostgreSQL (with
proxied artifacts); the authenticated server refuses strangers and takes a run with credentials."""

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
from conftest import PYTHON, ROOT, runs, store_in
from test_sweeps import train

pytestmark = pytest.mark.slow  # every test here starts a server and train.py


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
    (with its workers, by the server's own pid) at the end. Without MLflow's job-execution consumers
    (GenAI jobs reftlab never submits; each is a process of its own importing MLflow)."""
    port = free_port()
    log_path = tmp_path / "mlflow-server.log"
    env = {**(env or os.environ), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
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


def test_the_authenticated_server_refuses_strangers_and_takes_a_run(tmp_path, empty_store):
    import mlflow

    """`make mlflow-server-auth`'s app on loopback: no credentials -> 401; a train.py run with the
    client credentials from the environment logs normally (its params, metrics and artifacts; not an
    MLflow model: logging one asks for every metric's history, each request checks the password's
    scrypt hash, and a run keeps its results when the model is not logged anyway)."""
    import urllib.error
    import urllib.request

    env = {**os.environ, "MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": "pw-for-the-test-9",
           "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"), "MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 64}  # fmt: skip
    ini = (ROOT / "conf/mlflow/basic_auth.ini").read_text()
    (tmp_path / "auth.ini").write_text(
        ini.replace("sqlite:///mlflow-auth.db", f"sqlite:///{tmp_path / 'auth.db'}")
    )
    store = store_in(tmp_path, empty_store, "store.db")  # its tables made already
    with mlflow_server(tmp_path, "--app-name", "basic-auth", "--backend-store-uri", store, env=env) as uri:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{uri}/api/2.0/mlflow/experiments/search?max_results=5", timeout=30)
        assert refused.value.code == 401
        login = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "pw-for-the-test-9"}
        os.environ.update(login)
        try:
            out = train(tmp_path, uri, "mlflow.log_model=false", multirun=False, here=True)
            assert out.returncode == 0, out.stderr[-3000:]
            table = runs(uri)
            artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(table["run_id"].iloc[0])}
        finally:
            for key in login:
                del os.environ[key]
        assert table["status"].tolist() == ["FINISHED"]
        assert table["metrics.accuracy"].notna().all() and "predictions.parquet" in artifacts

"""Fault injection in parallel sweeps: kill -9 one job of a joblib or a submitit sweep while both
train; nothing is left RUNNING, and the same sweep run again runs what did not finish, under the
same parent run."""

import os
import signal
import subprocess
import time

import pytest
from conftest import PYTHON, ROOT, one_thread, runs, store_in, tiny_overrides
from test_sweeps import check_parent, train

pytestmark = pytest.mark.slow  # every test here starts train.py sweeps


def kill_one_job(folder, uri: str, launcher: str) -> dict:
    """Fault injection: kill -9 one job of a parallel sweep while it trains, then run the same sweep
    again. What each step left: its exit status and output, the store's runs, the job's status."""
    import json

    overrides = [
        "trainer.epochs=16",
        "data.max_train=64",
        f"hydra/launcher={launcher}",
        "intervention.layer=0,1",
    ]
    args = [PYTHON, "train.py", "-m", *tiny_overrides(*overrides, f"mlflow.tracking_uri={uri}",
            f"hydra.sweep.dir={folder / 'multirun'}")]  # fmt: skip
    proc = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=one_thread()
    )
    status = folder / "multirun" / "0" / "status.json"

    def training(job):  # its run is open and its training loop has started (the engine says which path)
        path, log = folder / "multirun" / job / "status.json", folder / "multirun" / job / "train.log"
        return (
            path.exists()
            and json.loads(path.read_text())["status"] == "running"
            and log.exists()
            and "Training with" in log.read_text()
        )

    try:
        deadline = time.time() + 300
        while not (training("0") and training("1")):  # both jobs train at once (a slow machine starts late)
            assert proc.poll() is None and time.time() < deadline, "the sweep ended before its jobs trained"
            time.sleep(0.1)
        pids = {json.loads((folder / "multirun" / j / "status.json").read_text())["pid"] for j in ("0", "1")}
        os.kill(json.loads(status.read_text())["pid"], signal.SIGKILL)
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    killed = {"returncode": proc.returncode, "err": err, "runs": runs(uri, sweeps=True),
              "status": json.loads(status.read_text())["status"], "pids": pids}  # fmt: skip
    # re-running the sweep runs what did not finish, and skips what did: in this process, under the
    # basic launcher (the launcher is no part of a sweep's identity; the killed sweep above already
    # ran its jobs in the launcher's own processes)
    again = train(folder / "again", uri, *[o for o in overrides if not o.startswith("hydra/")], here=True)
    return {
        "launcher": launcher,
        "uri": uri,
        "killed": killed,
        "again": again,
        "runs": runs(uri, sweeps=True),
    }


@pytest.fixture(scope="module")
def killed_joblib(tmp_path_factory, empty_store):
    folder = tmp_path_factory.mktemp("killed-joblib")
    return kill_one_job(folder, store_in(folder, empty_store), "local_parallel")


@pytest.fixture(scope="module")
def killed_submitit(tmp_path_factory, empty_store):
    folder = tmp_path_factory.mktemp("killed-submitit")
    return kill_one_job(folder, store_in(folder, empty_store), "submitit_local")


@pytest.mark.parametrize("launcher", ["local_parallel", "submitit_local"])
def test_a_job_killed_mid_sweep_is_recorded_and_rerun(request, launcher):
    result = request.getfixturevalue("killed_joblib" if launcher == "local_parallel" else "killed_submitit")
    killed = result["killed"]
    assert killed["returncode"] != 0
    everything = killed["runs"]
    (sweep,) = everything[everything["tags.kind"] == "sweep"].to_dict("records")
    assert sweep["status"] in ("KILLED", "FAILED") and sweep["metrics.jobs_killed"] >= 1  # the parent too
    table = everything[everything["tags.kind"] != "sweep"].set_index("params.intervention.layer")
    # nothing is left RUNNING: the killed job's run is KILLED with the reason; under joblib the broken
    # worker pool stops the other job too (also KILLED), under submitit the other job finishes
    assert table.loc["0", "status"] == "KILLED" and "SIGKILL" in table.loc["0", "tags.error"]
    assert killed["status"] == "killed"
    expected_other = "KILLED" if launcher == "local_parallel" else "FINISHED"
    assert table.loc["1", "status"] == expected_other
    assert "sweep summary: 2 jobs" in killed["err"] and "job 0 killed" in killed["err"]
    # re-running the sweep runs what did not finish, and skips what did
    again = result["again"]
    assert again.returncode == 0, again.stderr[-3000:]
    finished = 2 if launcher == "local_parallel" else 1
    assert f"sweep summary: 2 jobs: {finished} finished, 0 failed, {2 - finished} skipped" in again.stderr
    # the re-run continues under the same parent; every job, in joblib's workers or submitit's own
    # processes, found it through the sweep folder (the killed one, the finished one, the re-run ones)
    everything = result["runs"]
    assert everything["tags.kind"].tolist().count("sweep") == 1
    table = everything[everything["tags.kind"] != "sweep"]
    assert set(table["tags.mlflow.parentRunId"]) == {sweep["run_id"]}
    finished = table[table["status"] == "FINISHED"]
    assert (
        sorted(finished["params.intervention.layer"]) == ["0", "1"]
        and finished["metrics.accuracy"].notna().all()
    )


def test_joblib_runs_two_jobs_in_parallel_as_children_of_one_parent(killed_joblib):
    """The killed joblib sweep ran its two jobs at once, each in its own worker process (both were
    running when one was killed), as children of the sweep's one parent run; after the re-run the
    parent holds the finished sweep's answer."""
    again, uri = killed_joblib["again"], killed_joblib["uri"]
    assert len(killed_joblib["killed"]["pids"]) == 2 and os.getpid() not in killed_joblib["killed"]["pids"]
    first = killed_joblib["killed"]["runs"]
    jobs = first[first["tags.kind"] != "sweep"]
    assert len(jobs) == 2 and jobs["start_time"].max() < jobs["end_time"].min()  # they overlapped in time
    check_parent(again, killed_joblib["runs"], uri, "intervention.layer", "0,1")
    table = runs(uri)
    table = table[table["status"] == "FINISHED"]
    assert (
        sorted(table["params.intervention.layer"]) == ["0", "1"] and table["metrics.accuracy"].notna().all()
    )

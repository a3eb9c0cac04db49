"""A sweep's record adds up, third round: every job of a sweep is counted (also one whose fused worker
was killed before it got a folder), a fused group's jobs are recorded before the next group trains,
SIGTERM during a fused group's training ends the sweep KILLED with its summary, a run left RUNNING by
a dead job is closed when its config runs again, a second sweep never writes into a busy sweep
folder, and no password in a swept value reaches a run name or a report title."""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PYTHON, ROOT, runs, store_in, tiny_overrides, train_here

from reftlab.sweep import callback

# a fused sweep of two groups: two jobs on 8 reviews (seconds), two on 400 (long enough to stop: 6
# epochs train ~20 s here; with 2 (~6 s) CI once missed the window as submitit ran both groups at once)
TWO_GROUPS = ("data.max_train=8,400", "seed=1,2", "trainer.epochs=6", "save_intervention=false",
              "mlflow.log_model=false")  # fmt: skip


def start(folder: Path, uri: str, *overrides: str) -> subprocess.Popen:
    """`python train.py -m <tiny overrides>` in its own process, its output in folder/out.txt."""
    args = [PYTHON, "train.py", "-m", *tiny_overrides(*overrides, f"mlflow.tracking_uri={uri}",
            f"hydra.sweep.dir={folder / 'multirun'}", f"trainer.cache_dir={folder / 'prefix'}")]  # fmt: skip
    out = open(folder / "out.txt", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)


def wait_for(proc: subprocess.Popen, condition, what: str, folder: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        said = (folder / "out.txt").read_text()[-3000:]
        assert proc.poll() is None, f"the sweep ended before {what}:\n{said}"
        assert time.time() < deadline, f"no {what} within {timeout} s:\n{said}"
        time.sleep(0.1)


def status(folder: Path, job: int) -> str | None:
    path = folder / "multirun" / str(job) / "status.json"
    return json.loads(path.read_text())["status"] if path.exists() else None


def shards(folder: Path) -> int:
    """Prefix-cache shards stored so far (a fused group's cache pass ends with one: it then trains)."""
    from reftlab.engine.store import DiskStore

    return len(list((folder / "prefix" / DiskStore.SUBFOLDER).glob("*.json")))


def parent_of(uri: str):
    table = runs(uri, sweeps=True)
    (parent,) = table[table["tags.kind"] == "sweep"].to_dict("records")
    return parent


def finish(proc: subprocess.Popen, folder: Path) -> str:
    proc.wait(timeout=300)
    return (folder / "out.txt").read_text()


@pytest.mark.slow
def test_a_killed_fused_worker_leaves_its_jobs_missing_and_the_sweep_failed(tmp_path, empty_store):
    """fused_submitit_local: kill -9 the worker of the second group while it trains (its jobs have no
    folder yet): the summary counts them missing, the parent is FAILED with jobs_missing=2."""
    import psutil

    uri = store_in(tmp_path, empty_store)
    proc = start(tmp_path, uri, "hydra/launcher=fused_submitit_local", *TWO_GROUPS)
    try:

        def workers():  # submitit's worker processes that still run
            found = []
            for p in psutil.Process(proc.pid).children(recursive=True):
                try:
                    if p.status() != psutil.STATUS_ZOMBIE and "submitit.core._submit" in " ".join(
                        p.cmdline()
                    ):
                        found.append(p)
                except psutil.Error:  # ended meanwhile
                    pass
            return found

        def second_group_trains():  # the first group's jobs are done, one worker is left, its cache built
            return (
                status(tmp_path, 0) == status(tmp_path, 1) == "finished"
                and shards(tmp_path) >= 2
                and (len(workers()) == 1 and not (tmp_path / "multirun" / "2").exists())
            )

        wait_for(proc, second_group_trains, "the second group training", tmp_path)
        (worker,) = workers()
        worker.kill()
        said = finish(proc, tmp_path)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "4 jobs: 2 finished, 0 failed, 0 skipped, 0 killed, 2 missing" in said, said[-3000:]
    assert "job 2 missing: the job never started" in said and "data.max_train=400 seed=1" in said
    parent = parent_of(uri)
    assert parent["status"] == "FAILED" and parent["metrics.jobs_missing"] == 2
    assert parent["metrics.jobs_finished"] == 2


@pytest.mark.slow
def test_sigterm_while_a_later_fused_group_trains_keeps_the_groups_done_and_ends_killed(
    tmp_path, empty_store
):
    """hydra/launcher=fused: the first group's jobs are FINISHED runs before the second group trains;
    SIGTERM then (outside any job's run) ends the sweep with its summary, its parent KILLED, exit 143;
    the same sweep run again trains only the second group."""
    uri = store_in(tmp_path, empty_store)
    proc = start(tmp_path, uri, "hydra/launcher=fused", *TWO_GROUPS)
    try:

        def second_group_trains():  # the first group's jobs are recorded, the second group's training is not done
            return (status(tmp_path, 0) == status(tmp_path, 1) == "finished" and shards(tmp_path) >= 2
                    and (tmp_path / "out.txt").read_text().count("Fused group") == 1)  # fmt: skip

        wait_for(
            proc,
            second_group_trains,
            "the first group's jobs recorded while the second group trains",
            tmp_path,
        )
        proc.send_signal(signal.SIGTERM)
        said = finish(proc, tmp_path)
    finally:
        proc.kill()
    assert proc.returncode == 143, said[-3000:]
    assert "sweep summary: 4 jobs: 2 finished, 0 failed, 0 skipped, 0 killed, 2 missing" in said
    assert "Traceback" not in said
    parent = parent_of(uri)
    assert parent["status"] == "KILLED" and "stopped" in parent["tags.error"]
    table = runs(uri)
    assert sorted(table["params.data.max_train"]) == ["8", "8"] and (table["status"] == "FINISHED").all()
    again = train_here("-m", "hydra/launcher=fused", *tiny_overrides(*TWO_GROUPS, f"mlflow.tracking_uri={uri}",
                       f"hydra.sweep.dir={tmp_path / 'multirun'}", f"trainer.cache_dir={tmp_path / 'prefix'}"))  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 jobs: 2 finished, 0 failed, 2 skipped, 0 killed" in again.stderr
    assert "Fused group" in again.stdout + again.stderr and "2 jobs trained" in again.stdout + again.stderr
    table = runs(uri)
    assert len(table) == 4 and (table["status"] == "FINISHED").all()
    assert parent_of(uri)["status"] == "FINISHED"


def test_a_run_whose_process_lives_or_whose_pid_was_reused_is_judged_right(tmp_path):
    import os
    import socket

    me = {"pid": os.getpid(), "host": socket.gethostname()}
    assert callback.alive(me) is True
    assert callback.alive(me, since=time.time()) is True  # this process was running then
    assert callback.alive(me, since=time.time() - 10**6) is False  # a pid reused by a later process
    assert callback.alive({"pid": 2**22 + 7, "host": socket.gethostname()}) is False
    assert callback.alive({"pid": 1, "host": "another-host"}) is None  # no word either way: left alone


@pytest.mark.slow
def test_a_sweep_folder_holds_one_sweep_and_a_dead_jobs_run_is_closed_when_it_runs_again(
    tmp_path, empty_store
):
    """A sweep running in a folder refuses a second one there (exit 2, naming the folder, nothing
    written); kill -9 of the first while its job 0 trains leaves that run RUNNING; a different sweep
    is refused in the folder that holds its jobs; the same sweep again resumes there: the dead job's
    run is KILLED (its status file too), its new run FINISHED, nothing is left RUNNING."""
    uri = store_in(tmp_path, empty_store)
    grid = ("data.max_train=400", "seed=1,2", "trainer.epochs=6", "save_intervention=false",
            "mlflow.log_model=false")  # fmt: skip
    folder, log = tmp_path / "multirun", tmp_path / "multirun" / "0" / "train.log"
    proc = start(tmp_path, uri, *grid)
    try:
        wait_for(proc, lambda: status(tmp_path, 0) == "running" and log.exists() and "Training with" in log.read_text(),
                 "job 0 training", tmp_path)  # fmt: skip
        second = train_here(
            "-m", *tiny_overrides("seed=5,6", f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={folder}")
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert second.returncode == 2
    assert f"hydra.sweep.dir={folder} is in use by another sweep" in second.stderr
    assert len(parent_runs(uri)) == 1 and not (folder / "multirun.yaml").read_text().count("seed=5,6")
    (dead,) = runs(uri).to_dict("records")
    assert dead["status"] == "RUNNING"  # nothing could close it
    before = {p: p.read_text() for p in folder.glob("*/status.json")}
    other = train_here("-m", *tiny_overrides("seed=7", "trainer.lr=4e-3,1e-3", f"mlflow.tracking_uri={uri}",
                                             f"hydra.sweep.dir={folder}"))  # fmt: skip
    assert other.returncode == 2 and "holds the jobs of another sweep" in other.stderr
    assert {p: p.read_text() for p in folder.glob("*/status.json")} == before and len(runs(uri)) == 1
    again = train_here("-m", *tiny_overrides(*grid, f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={folder}",
                       f"trainer.cache_dir={tmp_path / 'prefix'}"))  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 jobs: 2 finished, 0 failed, 0 skipped" in again.stderr  # the same sweep resumes in its folder
    table = runs(uri).set_index("run_id")
    assert table.loc[dead["run_id"], "status"] == "KILLED"
    assert "ended without closing its run" in table.loc[dead["run_id"], "tags.error"]
    assert sorted(table["status"]) == ["FINISHED", "FINISHED", "KILLED"]
    assert parent_of(uri)["status"] == "FINISHED"


def parent_runs(uri: str):
    table = runs(uri, sweeps=True)
    return table[table["tags.kind"] == "sweep"] if "tags.kind" in table else table


@pytest.mark.slow
def test_a_password_in_a_swept_value_is_in_no_run_name_or_report_title(tmp_path, empty_store):
    import mlflow

    uri = store_in(tmp_path, empty_store)
    urls = ",".join(f"https://alice:Hunter2pw@hub.example.invalid/{n}.csv" for n in "ab")
    done = train_here("-m", "data=csv", f"data.path={urls}", "intervention=tfidf", f"mlflow.tracking_uri={uri}",
                      f"hydra.sweep.dir={tmp_path / 'multirun'}")  # fmt: skip
    assert done.returncode == 1  # the files cannot be read: two FAILED jobs, a report of them
    parent = parent_of(uri)
    assert "alice:***@" in parent["tags.mlflow.runName"] and "Hunter2pw" not in parent["tags.mlflow.runName"]
    client = mlflow.tracking.MlflowClient(uri)
    logged = [Path(client.download_artifacts(parent["run_id"], f"report/report.{ext}")).read_text()
              for ext in ("md", "html")]  # fmt: skip
    written = [p.read_text() for p in (tmp_path / "multirun" / "report").glob("report.*")]
    assert logged and written and "alice:***@" in logged[0]
    assert not [text for text in logged + written if "Hunter2pw" in text]
    assert all("Hunter2pw" not in str(v) for v in parent.values())
    assert "Hunter2pw" not in done.stdout + done.stderr


def test_read_statuses_counts_every_job_of_the_sweep(tmp_path):
    """Jobs that never got a folder are rows too, named by number with their overrides."""
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "status.json").write_text(json.dumps({"status": "finished"}))
    (tmp_path / "report").mkdir()  # not a job
    jobs = [["seed=1"], ["seed=2"], ["seed=3"]]
    rows = callback.read_statuses(tmp_path, jobs)
    assert [(r["job"], r["status"]) for r in rows] == [("0", "finished"), ("1", "missing"), ("2", "missing")]
    assert rows[2]["error"].endswith("(seed=3)")
    assert "3 jobs: 1 finished, 0 failed, 0 skipped, 0 killed, 2 missing" in callback.summary(rows)
    assert len(callback.read_statuses(tmp_path)) == 1  # the number unknown: the folders alone


def test_the_sweeps_jobs_are_listed_as_hydras_basic_sweeper_makes_them():
    from omegaconf import OmegaConf

    config = OmegaConf.create({"hydra": {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "params": {"seed": "1,2"}},
        "overrides": {"task": ["intervention.layer=8,16,24", "trainer.epochs=2"]}}})  # fmt: skip
    jobs = callback.job_list(config)
    assert len(jobs) == 6 and jobs[0] == ["seed=1", "intervention.layer=8", "trainer.epochs=2"]
    config.hydra.sweeper._target_ = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert callback.job_list(config) is None  # another sweeper: its folders are counted as today


@pytest.mark.slow
def test_a_sweep_over_datasets_has_one_parent_run_a_dataset_with_its_report(tmp_path, empty_store):
    """data=a,b: each dataset's jobs are the children of a parent of its own (under the sweep's), which
    holds their counts, best job and report; the sweep's own parent holds the totals."""
    import mlflow

    uri = store_in(tmp_path, empty_store)
    done = train_here("-m", "intervention=tfidf", "data=opinion_spam,persuasion_sample", "data.max_train=64",
                      "data.max_val=32", "data.max_eval=32", f"mlflow.tracking_uri={uri}",
                      f"hydra.sweep.dir={tmp_path / 'multirun'}")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    table = runs(uri, sweeps=True)
    top = table[(table["tags.kind"] == "sweep") & table["tags.part"].isna()]
    parts = table[table["tags.part"].notna()].set_index("tags.part")
    jobs = table[table["tags.kind"] != "sweep"].set_index("params.data.name")
    assert len(top) == 1 and sorted(parts.index) == ["data=opinion_spam", "data=persuasion_sample"]
    assert (parts["tags.mlflow.parentRunId"] == top["run_id"].iloc[0]).all() and (
        parts["status"] == "FINISHED"
    ).all()
    for name in ("opinion_spam", "persuasion_sample"):
        part = parts.loc[f"data={name}"]
        assert jobs.loc[name, "tags.mlflow.parentRunId"] == part["run_id"]
        assert part["metrics.jobs_finished"] == 1 and part["tags.best_run_id"] == jobs.loc[name, "run_id"]
        report = mlflow.tracking.MlflowClient(uri).download_artifacts(part["run_id"], "report/report.md")
        assert "1 finished runs" in Path(report).read_text()
    assert top["metrics.jobs_finished"].iloc[0] == 2 and top["status"].iloc[0] == "FINISHED"
    for name in ("opinion_spam", "persuasion_sample"):  # the summary points to each dataset's parent
        part = parts.loc[f"data={name}", "run_id"]
        assert f"data={name}: run {part}, python report.py --run {part}" in done.stderr


def test_a_sweep_over_datasets_ranks_each_datasets_jobs_apart(tmp_path):
    """BoolQ's 2 options and ARC's 4 do not compare: the closing ranking lists each dataset's jobs
    apart, best validation first within it; a sweep over one dataset keeps its one list."""
    import yaml

    def job(n: int, data: str, method: str, val: float) -> dict:
        folder = tmp_path / str(n)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(
            yaml.safe_dump([f"data={data}", f"intervention={method}"])
        )
        (folder / "metrics.json").write_text(
            json.dumps({"val_accuracy": val, "accuracy": val, "train_seconds": 1})
        )
        return {"job": n, "folder": folder, "status": "finished"}

    rows = [job(0, "arc_easy", "lora", 0.3), job(1, "arc_easy", "none", 0.4), job(2, "boolq", "lora", 0.7),
            job(3, "boolq", "none", 0.6)]  # fmt: skip
    said = callback.ranking(rows)
    assert "within each dataset" in said
    arc, boolq = said.split("data=arc_easy:")[1].split("data=boolq:")
    assert arc.index("intervention=none") < arc.index("intervention=lora") and "boolq" not in arc
    assert boolq.index("intervention=lora") < boolq.index("intervention=none")
    one = callback.ranking(rows[:2])
    assert "within each dataset" not in one and "data=" not in one and one.count("overrides") == 1

"""Shared machines and shared folders: another user's /tmp, another host's jobs and temp files.

Run locks live in a private folder of this user and never follow a planted symlink; a sweep's end
closes only runs it has evidence are dead; the prefix store leaves alone what other hosts are
writing and evicts what a killed writer left behind."""

import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from test_reliability import small_cache

from reftlab import locks, tracking
from reftlab.data import versioning
from reftlab.engine import store as cache_store
from reftlab.sweep import callback as sweep

# --- run locks and lock files in shared folders ---


def other_process_can_lock(path) -> bool:
    """Whether a second process gets an exclusive flock on `path` without waiting."""
    code = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n    print('blocked')\n"
        "else:\n    print('locked')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "locked"


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """A temp folder standing in for /tmp (tempfile.gettempdir() returns it)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def run_lock_folder(tmp):
    return tmp / f"reftlab-{os.getuid()}" / "run-locks"


LOCKS = {
    "file_lock": lambda tmp: (tmp / "x.lock", lambda: locks.file_lock(tmp / "x.lock")),
    "prefix store key": lambda tmp: (
        tmp / cache_store.DiskStore.SUBFOLDER / "k.lock",
        lambda: cache_store.DiskStore(tmp, 10**9).lock("k"),
    ),
    "versioning": lambda tmp: (tmp / ".repo.lock", lambda: versioning.locked(tmp / "repo")),
    "run lock": lambda tmp: (run_lock_folder(tmp) / "exp-key.lock", lambda: locks.run_lock("exp-key")),
}


@pytest.mark.parametrize("where", LOCKS)
def test_a_symlink_planted_at_a_lock_path_is_refused_and_its_target_kept(private_tmp, where):
    path, lock = LOCKS[where](private_tmp)
    if where == "run lock":  # the private folder exists (made by an earlier run of ours)
        with locks.run_lock("other"):
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    target = private_tmp / "victim.txt"
    target.write_text("precious")
    path.symlink_to(target)
    with pytest.raises(locks.LockPathError, match=str(path)):
        with lock():
            pass
    assert target.read_text() == "precious"


def test_the_prefix_store_refuses_a_symlinked_store_lock(tmp_path):
    store = cache_store.DiskStore(tmp_path, 10**9)
    store.folder.mkdir(parents=True)
    target = tmp_path / "victim.txt"
    target.write_text("precious")
    (store.folder / ".store.lock").symlink_to(target)
    with pytest.raises(locks.LockPathError, match=".store.lock"):
        store.save("k", small_cache())
    assert target.read_text() == "precious" and not store.entries()


def test_run_locks_live_in_a_private_folder_of_this_user(private_tmp):
    with locks.run_lock("exp-key"):
        folder = run_lock_folder(private_tmp)
        for f in (folder, folder.parent):
            st = f.lstat()
            assert f.is_dir() and not f.is_symlink()
            assert st.st_uid == os.getuid() and st.st_mode & 0o777 == 0o700, oct(st.st_mode)
        assert (folder / "exp-key.lock").lstat().st_mode & 0o077 == 0
        assert not other_process_can_lock(folder / "exp-key.lock")  # it excludes another process
    assert other_process_can_lock(folder / "exp-key.lock")  # and is released after the block


def plant_open_base(tmp):
    (tmp / f"reftlab-{os.getuid()}").mkdir(mode=0o777)
    os.chmod(tmp / f"reftlab-{os.getuid()}", 0o777)  # anyone may plant files in it
    return tmp / f"reftlab-{os.getuid()}"


def plant_symlinked_base(tmp):
    (tmp / "elsewhere").mkdir(mode=0o700)
    (tmp / f"reftlab-{os.getuid()}").symlink_to(tmp / "elsewhere")
    return tmp / "elsewhere"


def plant_symlinked_folder(tmp):
    (tmp / f"reftlab-{os.getuid()}").mkdir(mode=0o700)
    (tmp / "elsewhere").mkdir(mode=0o700)
    run_lock_folder(tmp).symlink_to(tmp / "elsewhere")
    return tmp / "elsewhere"


def plant_foreign_folder(tmp):
    if os.getuid() != 0:
        pytest.skip("making a folder owned by another user needs root")
    run_lock_folder(tmp).mkdir(parents=True, mode=0o700)
    os.chown(run_lock_folder(tmp), 12345, 12345)
    return run_lock_folder(tmp)


@pytest.mark.parametrize(
    "plant", [plant_open_base, plant_symlinked_base, plant_symlinked_folder, plant_foreign_folder]
)
def test_a_run_lock_folder_that_is_not_private_is_not_used(private_tmp, plant):
    planted = plant(private_tmp)
    before = sorted(p.name for p in planted.rglob("*"))
    with pytest.raises(locks.LockPathError, match=f"reftlab-{os.getuid()}"):
        with locks.run_lock("exp-key"):
            pass
    assert sorted(p.name for p in planted.rglob("*")) == before  # nothing was made in it


def test_a_lock_file_of_another_user_in_a_shared_folder_is_locked_read_only(tmp_path, monkeypatch):
    path = tmp_path / ".store.lock"
    path.write_text("left by another user")
    real = os.open

    def not_writable(p, flags, *args):  # the file is another user's, 0644: no write access for us
        if str(p) == str(path) and flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(13, "Permission denied", str(p))
        return real(p, flags, *args)

    monkeypatch.setattr(locks.os, "open", not_writable)
    with locks.file_lock(path):
        assert not other_process_can_lock(path)
    assert other_process_can_lock(path)
    assert path.read_text() == "left by another user"  # never truncated


# --- a sweep's end on SLURM: only jobs with evidence of their end are closed ---


def running_job(folder, client, experiment, **where):
    """A job folder whose status says running, with an open MLflow run; returns the run id."""
    run_id = client.create_run(experiment).info.run_id
    (folder / ".hydra").mkdir(parents=True)
    tracking.write_status(folder, "running", run_id=run_id, **where)
    return run_id


def fake_scheduler(tmp_path, monkeypatch, squeue: str | None, sacct: str | None):
    """`squeue`/`sacct` on PATH that answer for job 4242 only (None: the command is missing)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, answer in (("squeue", squeue), ("sacct", sacct)):
        if answer is not None:
            script = bin_dir / name
            script.write_text(f'#!/bin/sh\ncase "$*" in *4242*) {answer} ;; *) exit 2 ;; esac\n')
            script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


def a_dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


SCHEDULER = {  # (squeue, sacct) -> what becomes of the job: closed, left running, left unverified
    "no scheduler commands": (None, None, "unverified"),
    "squeue says running": ("echo RUNNING", "exit 1", "running"),
    "scheduler commands fail": ("exit 1", "exit 1", "unverified"),
    "squeue forgot it, sacct says cancelled": ("exit 1", "echo 'CANCELLED by 0'", "closed"),
    "squeue empty, sacct says completed": ("true", "echo COMPLETED", "closed"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", SCHEDULER)
def test_a_job_on_another_host_is_closed_only_on_the_schedulers_word(tmp_path, mlflow_uri, monkeypatch, case):
    from mlflow.tracking import MlflowClient

    squeue, sacct, outcome = SCHEDULER[case]
    client = MlflowClient(mlflow_uri)
    experiment = client.create_experiment("t")
    job = tmp_path / "sweep" / "0"
    run_id = running_job(job, client, experiment, pid=os.getpid(), host="node-elsewhere", slurm_job_id="4242")
    before = (job / "status.json").read_bytes()
    fake_scheduler(tmp_path, monkeypatch, squeue, sacct)
    rows = sweep.read_statuses(tmp_path / "sweep")
    sweep.close_dead_runs(rows, mlflow_uri, all_ended=False)
    run = client.get_run(run_id)
    text = sweep.summary(rows)
    if outcome == "closed":
        assert run.info.status == "KILLED" and rows[0]["status"] == "killed" and "job 0 killed" in text
        assert '"killed"' in (job / "status.json").read_text()
    else:
        assert run.info.status == "RUNNING" and "error" not in run.data.tags
        assert (job / "status.json").read_bytes() == before and rows[0]["status"] == "running"
        assert "job 0 still running on host node-elsewhere" in text
        assert ("not verified" in text) == (outcome == "unverified")


@pytest.mark.slow
def test_a_job_on_another_host_without_a_scheduler_id_is_left_running(tmp_path, mlflow_uri, monkeypatch):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = client.create_experiment("t")
    job = tmp_path / "sweep" / "0"
    run_id = running_job(job, client, experiment, pid=a_dead_pid(), host="node-elsewhere")
    before = (job / "status.json").read_bytes()
    fake_scheduler(tmp_path, monkeypatch, "echo RUNNING", "echo COMPLETED")  # not asked: no job id
    rows = sweep.read_statuses(tmp_path / "sweep")
    assert sweep.alive(rows[0]) is None  # a pid of another host says nothing here
    sweep.close_dead_runs(rows, mlflow_uri, all_ended=False)
    assert client.get_run(run_id).info.status == "RUNNING"
    assert (job / "status.json").read_bytes() == before
    assert "job 0 still running on host node-elsewhere" in sweep.summary(rows)


@pytest.mark.slow
def test_a_dead_pid_here_or_a_launcher_that_returned_still_closes_runs(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = client.create_experiment("t")
    sweep_dir = tmp_path / "sweep"
    here = socket.gethostname()
    dead_here = running_job(sweep_dir / "0", client, experiment, pid=a_dead_pid(), host=here)
    alive_here = running_job(sweep_dir / "1", client, experiment, pid=os.getpid(), host=here)
    rows = sweep.read_statuses(sweep_dir)
    assert sweep.alive(rows[0]) is False and sweep.alive(rows[1]) is True
    sweep.close_dead_runs(rows, mlflow_uri, all_ended=False)
    assert client.get_run(dead_here).info.status == "KILLED" and rows[0]["status"] == "killed"
    assert client.get_run(alive_here).info.status == "RUNNING" and rows[1]["status"] == "running"
    # the launcher returned normally: every job has ended, wherever it ran
    elsewhere = running_job(sweep_dir / "2", client, experiment, pid=os.getpid(), host="node-elsewhere")
    rows = sweep.read_statuses(sweep_dir)
    sweep.close_dead_runs(rows, mlflow_uri, all_ended=True)
    assert {client.get_run(r).info.status for r in (alive_here, elsewhere)} == {"KILLED"}
    assert [r["status"] for r in rows] == ["killed"] * 3


# --- the prefix store on a folder shared by several hosts ---


def test_a_temp_file_is_dead_only_if_its_hosts_pid_is_gone_or_it_is_old(tmp_path):
    store = cache_store.DiskStore(tmp_path, 10**9)
    store.folder.mkdir(parents=True)
    here, gone = socket.gethostname(), a_dead_pid()
    names = {
        f"{'a' * 24}.tmp-node-7.cluster-{gone}.safetensors": False,  # another host writes it now
        f"{'b' * 24}.tmp-node-7.cluster-{gone}.json": True,  # another host's, but hours old
        f"{'c' * 24}.tmp-{here}-{gone}.safetensors": True,  # this host's, its writer is gone
        f"{'d' * 24}.tmp-{here}-{os.getpid()}.safetensors": False,  # this host's, its writer runs
        f"{'e' * 24}.tmp-{gone}.safetensors": True,  # the old name (no host): a pid of this host
    }
    for name in names:
        (store.folder / name).write_bytes(b"z" * 10)
    old = time.time() - store.STALE_TEMP_SECONDS - 60
    os.utime(store.folder / f"{'b' * 24}.tmp-node-7.cluster-{gone}.json", (old, old))
    assert sorted(p.name for p in store.stale_temps()) == sorted(n for n, dead in names.items() if dead)
    store.evict(10**9)
    assert sorted(p.name for p in store.folder.glob("*.tmp-*")) == sorted(
        n for n, d in names.items() if not d
    )


def test_a_save_names_its_temp_files_with_this_host(tmp_path, monkeypatch):
    store = cache_store.DiskStore(tmp_path, 10**9)
    seen = []
    real = cache_store.Path.replace

    def spy(self, target):
        seen.append(self.name)
        return real(self, target)

    monkeypatch.setattr(cache_store.Path, "replace", spy)
    assert store.save("f" * 24, small_cache())
    assert seen and all(n.startswith(f"{'f' * 24}.tmp-{socket.gethostname()}-{os.getpid()}.") for n in seen)


def hold_lock(path) -> subprocess.Popen:
    """A process holding an exclusive flock on `path` until its stdin closes (a writer mid-save)."""
    code = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\nsys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_tensor_file_left_without_its_metadata_is_counted_and_evicted_first(tmp_path):
    cache = small_cache()
    store = cache_store.DiskStore(tmp_path, int(cache.nbytes * 2.5))
    store.folder.mkdir(parents=True)
    assert store.save("a", cache)
    orphan = store.path("0123456789abcdef01234567")  # a key's tensors; the kill came before its .json
    orphan.write_bytes(b"o" * cache.nbytes)
    planted = store.folder / "mine.safetensors"  # not named like a key: never the store's
    planted.write_bytes(b"y" * cache.nbytes)
    writing = store.path("fedcba9876543210fedcba98")  # a writer between its two renames holds the key lock
    writing.write_bytes(b"w" * cache.nbytes)
    writer = hold_lock(store.folder / "fedcba9876543210fedcba98.lock")
    try:
        assert store.save("b", cache)  # a + b + the orphan exceed the bound: the orphan goes, not `a`
        assert not orphan.exists() and writing.exists() and planted.exists()
        assert [p.stem for p in store.entries()] == ["a", "b"]
    finally:
        writer.communicate("")
    assert store.save("c", cache)  # its writer died without the .json: now an orphan, removed first
    assert not writing.exists() and planted.exists()
    assert [p.stem for p in store.entries()] == ["b", "c"]  # then the oldest entry, for the bound
    assert store.load("c", "cpu") is not None

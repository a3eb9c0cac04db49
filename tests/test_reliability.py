"""Lose nothing, leak nothing: the store never deletes what it did not write, no pickle is loaded
from a shared folder, credentials never reach logs, bad input stops early with its name."""

import os
import pickle
import subprocess

import numpy as np
import pytest
import torch
from conftest import PYTHON, ROOT, compose, one_thread, runs, tiny_overrides, train_here

from reftlab import run, tracking, validate
from reftlab.data import versioning
from reftlab.engine import prefix
from reftlab.engine import store as cache_store


def small_cache(start=1, n=4):
    keys = torch.randn(2, 1 + 10 * n, 2, 8)
    return prefix.PrefixCache(
        start, keys, torch.randn_like(keys), torch.randn(1 + 2 * n, 16),
        np.arange(n) * 10 + 1, np.full(n, 10), np.arange(n) * 2 + 1, np.full(n, 2),
    )  # fmt: skip


def test_the_prefix_store_deletes_only_what_it_wrote(tmp_path):
    foreign = [tmp_path / "checkpoint.pt", tmp_path / "model.safetensors", tmp_path / "notes.json"]
    for f in foreign:
        f.write_bytes(b"x" * 100_000)
    cache = small_cache()
    store = cache_store.DiskStore(tmp_path, int(cache.nbytes * 2.5))
    store.folder.mkdir(parents=True)
    planted = store.folder / "mine.safetensors"  # no metadata beside it: not an entry of the store
    planted.write_bytes(b"y" * 100_000)
    dead_temp = store.folder / "abc.tmp-999999999.safetensors"  # left by a job that died
    dead_temp.write_bytes(b"z" * 10)
    for key in ("a", "b", "c", "d"):
        assert store.save(key, cache)
    assert [p.stem for p in store.entries()] == ["c", "d"]  # the bound holds two: oldest removed
    assert all(f.exists() for f in foreign) and planted.exists()
    assert not dead_temp.exists()
    loaded = store.load("d", "cpu")
    assert torch.equal(loaded.keys, cache.keys) and np.array_equal(loaded.suffix_len, cache.suffix_len)


def test_the_store_never_unpickles_a_file_from_the_cache_folder(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    store = cache_store.DiskStore(tmp_path, 10**9)
    store.folder.mkdir(parents=True)
    (tmp_path / "k.pt").write_bytes(pickle.dumps(Payload()))  # the old format's name
    store.path("k").write_bytes(pickle.dumps(Payload()))  # a pickle where tensors should be
    store.meta_path("k").write_text('{"start": 1}')
    assert store.load("k", "cpu") is None  # unreadable as safetensors: rebuilt, never executed
    assert not marker.exists()


@pytest.mark.slow
def test_credentials_are_masked_everywhere_they_would_be_logged(in_root, mlflow_uri, tmp_path):
    assert tracking.redact("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert tracking.redact("https://h/f.csv?token=abc&x=1") == "https://h/f.csv?token=***&x=1"
    assert tracking.redact("sqlite:///a/b.db") == "sqlite:///a/b.db"
    cfg = compose(*tiny_overrides(f"mlflow.tracking_uri={mlflow_uri}", "+note=postgresql://bob:s3cret@db/x"))
    run.run(cfg, output_dir=tmp_path / "job")
    (row,) = runs(mlflow_uri).to_dict("records")
    assert row["params.note"] == "postgresql://bob:***@db/x"
    assert "s3cret" not in (tmp_path / "job" / "config.yaml").read_text()
    data = compose("data=csv", "data.path=https://bob:tok3n@example.org/d.csv").data
    prepared = type("P", (), {"full": [0], "train": [0], "val": [0], "eval": [0]})()
    assert "tok3n" not in versioning.commit_message(prepared, data, "k")


@pytest.mark.parametrize(
    "override, words",
    [
        ("trainer.log_every=0", "trainer.log_every=0 is not valid: it must be an integer >= 1"),
        ("model.device=tpu", "model.device='tpu' is not valid: choose auto, cpu, cuda"),
        ("model.dtype=fp8", "model.dtype='fp8' is not valid: choose one of"),
        ("model.source=web", "model.source='web' is not valid"),
        ("intervention.layer=[]", "intervention.layer=[] is not valid"),
        ("intervention.layer=1.5", "intervention.layer=1.5 is not a layer"),
        ("intervention.layer=null", "intervention.layer=None is not a layer"),
        ("data.name=..", "data.name='..' is not valid: use letters"),
        ("data.name=a/b", "data.name='a/b' is not valid"),
        ("trainer.max_length=12", "trainer.max_length=12 leaves no room for text"),
        ("trainer.weight_decay=-0.1", "trainer.weight_decay=-0.1 is not valid: it must be >= 0"),
        ("trainer.warmup_ratio=2", "trainer.warmup_ratio=2.0 is not valid: it must be in [0, 1]"),
    ],
)
def test_bad_settings_stop_before_any_loading_with_their_name(override, words):
    from reftlab import methods

    cfg = compose(override)
    with pytest.raises(validate.ConfigError) as e:
        validate.check(cfg, methods.get(cfg.intervention.method))
    assert words in str(e.value)


def test_a_dataset_repository_stays_inside_the_repository_root():
    with pytest.raises(validate.ConfigError, match="data.name='..'"):
        versioning.repo_dir("..")


@pytest.mark.slow
def test_a_user_error_prints_its_message_without_a_traceback(mlflow_uri, tmp_path):
    out = train_here(*tiny_overrides("intervention.layer=7", f"mlflow.tracking_uri={mlflow_uri}",
                                     f"hydra.run.dir={tmp_path / 'run'}"))  # fmt: skip
    assert out.returncode == 2
    assert "error: intervention.layer=7 is not a layer of model 'tiny_random'" in out.stderr
    assert "Traceback" not in out.stderr
    assert runs(mlflow_uri)["status"].tolist() == ["FAILED"]  # still recorded


def test_make_clean_never_touches_the_team_servers_store():
    dry = subprocess.run(["make", "-n", "clean"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "rm -rf" in dry and "mlflow-server.db" not in dry and "mlartifacts" not in dry
    server = subprocess.run(["make", "-n", "clean-server"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "/health" in server and "running: stop it first" in server


def test_the_server_store_uri_is_never_on_a_command_line():
    env = {"MLFLOW_BACKEND_STORE_URI": "postgresql://bob:s3cret@db/x", "PATH": "/usr/bin:/bin"}
    dry = subprocess.run(
        ["make", "-n", "mlflow-server"], cwd=ROOT, capture_output=True, text=True, env=env
    ).stdout
    assert "mlflow server" in dry and "s3cret" not in dry and "backend-store-uri" not in dry


def test_single_run_folders_are_unique_to_the_microsecond():
    from reftlab.config.compose import compose as full

    hydra = full([], return_hydra_config=True).hydra
    import re

    # two processes started in the same second differ in the microseconds of the folder name
    assert re.fullmatch(r"outputs/\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}-\d{6}", str(hydra.run.dir))


def test_status_and_metrics_files_are_written_whole(tmp_path):
    tracking.write_atomic(tmp_path / "metrics.json", '{"a": 1}')
    tracking.write_status(tmp_path, "finished", run_id="r")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "status.json"]  # no temp left


@pytest.mark.slow
def test_resume_notices_an_edited_data_file(in_root, mlflow_uri, tmp_path):
    path = tmp_path / "mine.csv"
    rows = [f"text {i},{'spam' if i % 2 else 'ham'}" for i in range(60)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    overrides = tiny_overrides("data=csv", f"data.path={path}", "data.positive_label=spam",
                               f"mlflow.tracking_uri={mlflow_uri}")  # fmt: skip
    run.run(compose(*overrides), output_dir=tmp_path / "a")
    run.run(compose(*overrides), output_dir=tmp_path / "b")  # same file: skipped
    assert len(runs(mlflow_uri)) == 1
    path.write_text("text,label\n" + "\n".join(rows[::-1]) + "\nan edit,spam\n")
    run.run(compose(*overrides), output_dir=tmp_path / "c")  # same path, new content: runs again
    assert runs(mlflow_uri)["status"].tolist() == ["FINISHED", "FINISHED"]


@pytest.mark.slow
def test_two_identical_jobs_started_together_run_once(mlflow_uri, tmp_path):
    uri = f"sqlite:///{tmp_path / 'new.db'}"  # no database yet: the two race to create it too
    args = [
        PYTHON,
        "train.py",
        *tiny_overrides(f"mlflow.tracking_uri={uri}", "save_intervention=false"),
    ]
    first = subprocess.Popen([*args, f"hydra.run.dir={tmp_path / 'a'}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=one_thread())  # fmt: skip
    second = subprocess.Popen([*args, f"hydra.run.dir={tmp_path / 'b'}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=one_thread())  # fmt: skip
    for proc in (first, second):
        assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
    statuses = sorted(
        __import__("json").loads((tmp_path / d / "status.json").read_text())["status"] for d in ("a", "b")
    )
    assert statuses == ["finished", "skipped"] and len(runs(uri)) == 1


def test_a_job_that_died_without_a_status_fails_the_sweep(tmp_path):
    from reftlab.sweep import callback as sweep

    for job, status in (("0", "finished"), ("1", None), ("2", "failed")):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        if status:
            tracking.write_status(tmp_path / job, status, error="boom" if status == "failed" else "")
    rows = sweep.read_statuses(tmp_path)
    assert [r["status"] for r in rows] == ["finished", "missing", "failed"]
    text = sweep.summary(rows)
    assert text.startswith("sweep summary: 3 jobs: 1 finished, 1 failed, 0 skipped, 0 killed, 1 missing")
    assert "job 1 missing" in text


@pytest.mark.slow
def test_the_pre_timeout_system_exit_is_recorded_killed(mlflow_uri, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("t")
    with pytest.raises(SystemExit):
        with tracking.recorded_run("job", tmp_path):
            raise SystemExit(0)
    assert runs(mlflow_uri, "t")["status"].tolist() == ["KILLED"]
    assert '"killed"' in (tmp_path / "status.json").read_text()


@pytest.mark.slow  # a fresh MLflow store: ~2 s
def test_a_sigterm_as_a_run_ends_waits_until_its_run_and_its_status_both_say_finished(
    mlflow_uri, tmp_path, monkeypatch
):
    """SIGTERM (a stopped sweep, SLURM) just as a job's run ends: the MLflow run and the job's status
    file are recorded first (both FINISHED; a status "finished" beside a RUNNING run made a stopped
    fused sweep's finished job look alive), then the signal goes on to the handler outside."""
    import signal

    import mlflow
    from mlflow.tracking import fluent

    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("t")
    end = fluent.end_run

    def end_after_a_sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return end(*args, **kwargs)

    monkeypatch.setattr(fluent, "end_run", end_after_a_sigterm)
    outside = signal.signal(signal.SIGTERM, tracking._terminate)  # a sweep's own handler
    try:
        with pytest.raises(tracking.Terminated):
            with tracking.recorded_run("job", tmp_path):
                pass
    finally:
        signal.signal(signal.SIGTERM, outside)
    assert runs(mlflow_uri, "t")["status"].tolist() == ["FINISHED"]
    assert '"finished"' in (tmp_path / "status.json").read_text()


@pytest.mark.slow
def test_sqlite_with_a_slurm_launcher_warns(caplog, tmp_path):
    from reftlab.config.compose import compose as full
    from reftlab.sweep import SweepCallback

    cfg = full(
        ["hydra/launcher=slurm", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'x.db'}"],
        return_hydra_config=True,
    )
    with caplog.at_level("WARNING"):
        SweepCallback().on_multirun_start(cfg)
    assert "SQLite locking on a shared (NFS) filesystem is unreliable" in caplog.text


# --- fault injection in other processes: the store survives a kill -9 and an eviction mid-load ---

CHILD_SETUP = """
import sys, time, pathlib
import numpy as np, torch
sys.path.insert(0, {src!r})
from reftlab import models
from reftlab.engine import prefix
from reftlab.engine import store as cache_store
from reftlab.config.compose import compose
model, *_ = models.load_model_and_tokenizer(compose(["model=tiny_random", "model.num_layers=3"]).model)
seqs = [list(range(5, 5 + n)) for n in (9, 12, 7, 15)]
store = cache_store.DiskStore(pathlib.Path({folder!r}), 10**9)
"""


def tiny_store_inputs():
    model, *_ = __import__("reftlab.models", fromlist=["x"]).load_model_and_tokenizer(
        compose("model=tiny_random", "model.num_layers=3").model
    )
    return model, [list(range(5, 5 + n)) for n in (9, 12, 7, 15)]


def child(code: str, folder) -> subprocess.Popen:
    script = CHILD_SETUP.format(src=str(ROOT / "src"), folder=str(folder)) + code
    return subprocess.Popen([PYTHON, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def wait_for(predicate, proc, seconds=120):
    import time

    end = time.time() + seconds
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the child ended early:\n{proc.stderr.read()[-3000:]}")
        assert time.time() < end, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_during_a_cache_write_leaves_nothing_that_is_loaded_and_is_cleaned(tmp_path):
    import signal

    # the child writes the tensors, then "hangs" before the metadata that completes the entry
    proc = child(
        """
import safetensors.torch as st
real = st.save_file
def slow(*a, **k):
    real(*a, **k)
    time.sleep(600)
st.save_file = slow
cache = prefix.build(model, 1, seqs, [2] * 4, 0, progress=False)
store.save(cache_store.cache_key(model, seqs, [2] * 4, {}), cache)
""",
        tmp_path,
    )
    store = cache_store.DiskStore(tmp_path, 10**9)
    wait_for(lambda: list(store.folder.glob("*.tmp-*.safetensors")), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    model, seqs = tiny_store_inputs()
    key = cache_store.cache_key(model, seqs, [2] * 4, {})
    assert store.load(key, "cpu") is None and not store.entries()  # the kill came before it was complete
    assert len(store.stale_temps()) == 1  # its writer is dead: the store knows the file is garbage
    cache_store.clear_memory()
    cache, source, _ = cache_store.obtain(model, 1, seqs, 2, [()] * 4, 0, store, 4, False)
    assert source == "built"
    saved = wait_for_shard(store)  # the save runs in a thread; the eviction before it removes the dead temp
    assert not list(store.folder.glob("*.tmp-*")) and [p.stem for p in store.entries()] == [saved]
    again = store.load(saved, "cpu")
    assert torch.equal(again.keys, cache.keys) and torch.equal(again.hidden, cache.hidden)


def wait_for_shard(store) -> str:
    """The key of the store's one complete entry, once a background save has written it."""
    for _ in range(400):
        if store.entries():
            return store.entries()[0].stem
        __import__("time").sleep(0.05)
    raise AssertionError("no entry was written")


@pytest.mark.slow
def test_an_entry_evicted_while_another_job_loads_it_is_rebuilt_there(tmp_path):
    model, seqs = tiny_store_inputs()
    first = prefix.build(model, 1, seqs, [2] * 4, 0, progress=False)
    store = cache_store.DiskStore(tmp_path, int(first.nbytes * 1.5))
    cache_store.clear_memory()
    assert cache_store.obtain(model, 1, seqs, 2, [()] * 4, 0, store, 4, False)[1] == "built"
    key = wait_for_shard(store)
    # the other job has found the shard in the store's index and is about to open it when it is evicted
    proc = child(
        """
import safetensors
real = safetensors.safe_open
def paused(*a, **k):
    pathlib.Path({go!r}).parent.joinpath("loading").touch()
    while not pathlib.Path({go!r}).exists():
        time.sleep(0.05)
    return real(*a, **k)
safetensors.safe_open = paused
cache, source, _ = cache_store.obtain(model, 1, seqs, 2, [()] * 4, 0, store, 4, False)
direct = prefix.build(model, 1, seqs, [2] * 4, 0, progress=False)
print(source, torch.equal(cache.keys, direct.keys), torch.equal(cache.hidden, direct.hidden))
""".format(go=str(tmp_path / "go")),
        tmp_path,
    )
    wait_for(lambda: (tmp_path / "loading").exists(), proc)
    assert store.save("other", small_cache())  # this job's write evicts the entry being loaded
    assert not store.path(key).exists()
    (tmp_path / "go").touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert out.split() == ["built", "True", "True"]  # it noticed, rebuilt, and has the right cache

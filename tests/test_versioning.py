"""Datasets under version control with Oxen: commits only on change, exact old versions, run tags."""

import subprocess

import pandas as pd
import pytest
from conftest import PYTHON, ROOT, compose, runs, tiny_overrides

from reftlab import run
from reftlab.data import versioning

pytestmark = pytest.mark.slow  # every test runs a job or writes a dataset repository


@pytest.fixture
def repos(tmp_path, monkeypatch):
    monkeypatch.setenv("REFTLAB_DATA_REPOS", str(tmp_path / "repos"))
    return tmp_path / "repos"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """opinion_spam prepared once for the module with the default settings: its repositories folder
    and the commit (a test copies the folder: what its own first `prepare` would have left)."""
    import contextlib
    import os

    folder = tmp_path_factory.mktemp("prepared") / "repos"
    before = os.environ["REFTLAB_DATA_REPOS"]
    os.environ["REFTLAB_DATA_REPOS"] = str(folder)
    try:
        with contextlib.chdir(ROOT):
            commit, made = versioning.prepare(compose().data)
    finally:
        os.environ["REFTLAB_DATA_REPOS"] = before
    assert made
    return folder, commit


def prepare_default(prepared, repos) -> str:
    """`versioning.prepare(compose().data)` on an empty repositories folder, as a copy of its result."""
    import shutil

    shutil.copytree(prepared[0], repos, symlinks=True)
    return prepared[1]


def own_csv(path, offset: int):
    texts = [f"review number {i + offset} about the hotel" for i in range(40)]
    pd.DataFrame({"text": texts, "label": ["Yes", "No"] * 20}).to_csv(path, index=False)
    return set(texts)


def test_prepare_commits_only_when_the_content_changes(repos, in_root):
    first, made = versioning.prepare(compose().data)
    again, made_again = versioning.prepare(compose().data)
    assert made and not made_again and again == first
    second, made_second = versioning.prepare(compose("data.split=hotel").data)
    assert made_second and second != first
    history = versioning.history(compose().data)
    assert [h["commit"] for h in history] == [second, first]
    assert "split=hotel" in history[0]["message"] and "train 1037, val 240" in history[0]["message"]
    # Back to the first settings: the existing commit is reused, no third commit.
    assert versioning.prepare(compose().data) == (first, False)
    assert versioning.oxen("dirty", repos / "opinion_spam") == []
    readme = (repos / "opinion_spam" / "README.md").read_text()
    assert "CC BY-NC-SA" in readme and "split: hotel" in readme


def test_a_run_reads_an_older_revision_and_logs_its_id(repos, tmp_path, mlflow_uri, in_root):
    path = tmp_path / "mine.csv"
    v1_texts = own_csv(path, 0)
    v1, _ = versioning.prepare(compose("data=csv", f"data.path={path}").data)
    v2_texts = own_csv(path, 1000)
    v2, _ = versioning.prepare(compose("data=csv", f"data.path={path}").data)
    assert v1 != v2
    cfg = compose(*tiny_overrides("data=csv", f"data.path={path}", f"data.revision={v1[:10]}",
                                  f"mlflow.tracking_uri={mlflow_uri}"))  # fmt: skip
    run.run(cfg, output_dir=tmp_path / "job")
    predictions = pd.read_parquet(tmp_path / "job" / "predictions.parquet")
    assert set(predictions["text"]) <= v1_texts and not set(predictions["text"]) & v2_texts
    (row,) = runs(mlflow_uri).to_dict("records")
    assert row["tags.data_version"] == v1
    assert row["tags.data_repo"].endswith("repos/csv")
    # Reading the old version did not disturb the repository's working tree (still v2).
    assert set(pd.read_parquet(repos / "csv" / "full.parquet")["text"]) == v2_texts
    assert versioning.oxen("dirty", repos / "csv") == []


def test_training_prepares_the_data_when_no_repository_exists(repos, tmp_path, mlflow_uri, in_root):
    assert not (repos / "opinion_spam").exists()
    run.run(compose(*tiny_overrides(f"mlflow.tracking_uri={mlflow_uri}")), output_dir=tmp_path / "job")
    (row,) = runs(mlflow_uri).to_dict("records")
    assert row["tags.data_version"] == versioning.history(compose().data)[0]["commit"]


def test_unknown_revision_is_named_with_the_repository(repos, prepared, in_root):
    prepare_default(prepared, repos)
    with pytest.raises(
        versioning.VersionError, match=r"data.revision='deadbeef' is not a commit of .*opinion_spam"
    ):
        versioning.load(compose("data.revision=deadbeef").data)


def test_uncommitted_changes_stop_prepare_and_are_kept(repos, prepared, in_root):
    prepare_default(prepared, repos)
    readme = repos / "opinion_spam" / "README.md"
    readme.write_text("my notes\n")
    with pytest.raises(versioning.VersionError, match=r"uncommitted changes \(README.md\)"):
        versioning.prepare(compose("data.split=hotel").data)
    assert readme.read_text() == "my notes\n"


def test_a_half_done_reftlab_commit_is_rolled_back_and_said(repos, prepared, in_root, caplog):
    """What a kill during `prepare` leaves (the files copied, no commit, the marker beside the
    repository) is rolled back on the next run, which then proceeds; a user's own edit is not."""
    first = prepare_default(prepared, repos)
    folder = repos / "opinion_spam"
    (folder / "train.parquet").write_bytes(b"half a parquet file")
    versioning.pending_marker(folder).write_text('{"operation": "prepare", "pid": 1}')
    with caplog.at_level("WARNING"):
        again, made = versioning.prepare(compose().data)
    assert (again, made) == (first, False) and "Rolled back train.parquet" in caplog.text
    assert versioning.oxen("dirty", folder) == [] and not versioning.pending_marker(folder).exists()
    assert len(pd.read_parquet(folder / "train.parquet")) == 1084


def test_a_killed_prepare_leaves_a_repository_the_next_run_can_use(repos, prepared, in_root, tmp_path):
    """Fault injection: kill -9 a `prepare` of other settings while it runs, then prepare again."""
    import signal
    import time

    prepare_default(prepared, repos)
    folder = repos / "opinion_spam"
    proc = subprocess.Popen([PYTHON, "-m", "reftlab.data.cli", "prepare", "data.split=hotel"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while not versioning.pending_marker(folder).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    commit_id, _ = versioning.prepare(compose("data.split=hotel").data)  # whatever the kill left
    assert versioning.oxen("dirty", folder) == [] and commit_id


def test_corrupt_parquet_is_reported(repos, tmp_path):
    (tmp_path / "train.parquet").write_bytes(b"garbage")
    with pytest.raises(
        versioning.VersionError, match=r"train.parquet in the dataset repository .* cannot be read"
    ):
        versioning.read(repos / "x", tmp_path, "train")


def test_remote_must_be_an_http_url(repos, in_root):
    versioning.prepare(compose("data=persuasion_sample").data)
    with pytest.raises(versioning.VersionError, match=r"data.remote=None is not valid"):
        versioning.pull(compose("data=persuasion_sample").data)
    with pytest.raises(versioning.VersionError, match=r"data.remote=None is not valid"):
        versioning.push(compose("data=persuasion_sample").data)
    with pytest.raises(versioning.VersionError, match=r"data.remote='/tmp/x' is not valid"):
        versioning.push(compose("data=persuasion_sample", "data.remote=/tmp/x").data)


def test_repositories_stay_usable_from_other_processes(repos, in_root):
    # liboxen locks a repository for the life of a process that opened it; reftlab opens it only in
    # short-lived helper processes, so this process and others can keep working on it.
    versioning.prepare(compose("data=persuasion_sample").data)
    code = (
        "from reftlab.data import versioning as v; print(len(v.oxen('log', v.repo_dir('persuasion_sample'))))"
    )
    out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr
    versioning.prepare(compose("data=persuasion_sample", "data.split=seed").data)
    assert len(versioning.history(compose("data=persuasion_sample").data)) == 2


def test_cli_prepare_and_log(repos, in_root, capsys):
    from conftest import Done

    from reftlab.data import cli as data_cli

    def cli(*args):  # the CLI's main, here (the command itself runs first, below)
        capsys.readouterr()
        code = data_cli.main(list(args))
        said = capsys.readouterr()
        return Done(code, said.out, said.err)

    out = subprocess.run([PYTHON, "-m", "reftlab.data.cli", "prepare", "data=persuasion_sample"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "(committed)" in out.stdout
    assert "no new commit" in cli("prepare", "data=persuasion_sample").stdout
    log = cli("log", "data=persuasion_sample").stdout
    assert "prepare persuasion_sample (full 90" in log
    missing = cli("log", "data=opinion_spam")
    assert missing.returncode == 2 and "No dataset repository" in missing.stderr  # a user error: exit 2
    assert cli("frobnicate").returncode == 2

"""The data CLI (python -m reftlab.data.cli): train.py's settings checks, a bad setting or data file
said in one message with exit status 2, before anything is written."""

import os
import subprocess

import pytest
from conftest import PYTHON, ROOT, Done

from reftlab.config import ConfigError
from reftlab.data import cli


@pytest.fixture
def repos(tmp_path, monkeypatch):
    monkeypatch.setenv("REFTLAB_DATA_REPOS", str(tmp_path / "repos"))
    return tmp_path / "repos"


def data_cli(capsys, *args: str) -> Done:
    """`python -m reftlab.data.cli <args>` run in this process: its exit status and what it printed."""
    capsys.readouterr()
    code = cli.main(list(args))
    said = capsys.readouterr()
    return Done(code, said.out, said.err)


def repositories(repos) -> list[str]:
    """The dataset repositories in `repos` (not the lock files beside them)."""
    return sorted(p.name for p in repos.glob("*") if p.is_dir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("prepare", "data.folds=5", "data.fold=9"), "data.fold=9 is not valid: choose 0 .. 4 (data.folds=5)"),
        (("prepare", "data.folds=1"), "data.folds=1 is not valid: it must be an integer >= 2"),
        (("prepare", "data.name=../evil"), "data.name='../evil' is not valid: use letters"),
        (("log", "data.name=../evil"), "data.name='../evil' is not valid: use letters"),
        (("pull", "data.name=../evil", "data.remote=https://hub.oxen.ai/a/b"), "data.name='../evil' is not valid"),
        (("prepare", "data=csv"), "data.path is not set"),
        (("prepare", "+data.upsample_seed=3"), "data.upsample_seed is not a setting of the table recipe"),
        (("prepare", "data=persuasion_sample", "+data.keep.claim=x"), "data.keep.claim='x': ['x'] does not occur"),
        (("prepare", "data.folds=abc"), "Error merging override data.folds=abc: Value 'abc' of type 'str'"),
        (("prepare", "data=nope"), "In 'train': Could not find 'data/nope'"),
    ],
)  # fmt: skip
def test_bad_settings_are_one_message_and_exit_2_before_anything_is_written(
    repos, in_root, capsys, args, message
):
    done = data_cli(capsys, *args)
    assert (done.returncode, done.stdout) == (2, ""), done
    assert done.stderr.startswith(f"error: {message}") and "Traceback" not in done.stderr, done.stderr
    assert repositories(repos) == []  # none made, nothing committed


def test_a_missing_repository_is_a_user_error_too(repos, in_root, capsys):
    done = data_cli(capsys, "log", "data=persuasion_sample")
    assert done.returncode == 2 and done.stderr.startswith("error: No dataset repository")


def test_hydra_full_error_shows_the_traceback(repos, in_root, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError, match=r"data.fold=9 is not valid"):
        cli.main(["prepare", "data.folds=5", "data.fold=9"])


@pytest.mark.slow
def test_the_command_refuses_a_keep_value_the_data_lacks(tmp_path):
    """The issue's command, as a process: a message and exit 2, no version committed."""
    env = {**os.environ, "REFTLAB_DATA_REPOS": str(tmp_path / "repos")}
    out = subprocess.run([PYTHON, "-m", "reftlab.data.cli", "prepare", "data=persuasion_sample",
                          "+data.keep.claim=x"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "error: data.keep.claim='x'" in out.stderr and "its values are: Corporations" in out.stderr
    assert repositories(tmp_path / "repos") == []


def test_a_bug_is_its_traceback_and_exit_1_with_credentials_masked(repos, in_root, capsys, monkeypatch):
    def broken(cfg):
        raise RuntimeError("could not reach https://me:s3cret@hub.example/x")

    monkeypatch.setattr(cli, "pull", broken)
    done = data_cli(capsys, "pull", "data.remote=https://hub.example/x")
    assert done.returncode == 1 and "Traceback" in done.stderr and "RuntimeError" in done.stderr
    assert "s3cret" not in done.stderr and "me:***@hub.example" in done.stderr

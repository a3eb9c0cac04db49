"""Prepared datasets under version control with Oxen: one local repository per dataset.

`prepare` runs a dataset's recipe and commits full/train/val/eval parquet, recipe.json (the settings
and cleaning counts that made them) and a README into
`data/repos/<name>/` (only when the content changed). `load` gives a run the rows of one commit:
the version its settings produce (prepared first if needed), or `data.revision=<commit id>`,
read from a cache of that commit without touching the repository's working tree.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from ..config import ConfigError
from ..locks import file_lock
from . import recipes

log = logging.getLogger(__name__)
# recipe.json: the settings that made the files (versions prepared before it existed: from README.md)
FILES = ("full.parquet", "train.parquet", "val.parquet", "eval.parquet", "recipe.json", "README.md")
# Settings that do not change the prepared files (applied at training time, or not data at all).
NOT_RECIPE = {"name", "max_train", "max_val", "max_eval", "system_prompt", "revision", "remote"}


class VersionError(RuntimeError):
    """A problem with a dataset repository: unknown revision, changes in the way, bad files."""


def repos_root() -> Path:
    return Path(os.environ.get("REFTLAB_DATA_REPOS", "data/repos")).resolve()


def safe_name(value, setting: str) -> str:
    """A name used as one folder name (data/repos/<name>, reports/<name>): one plain path component."""
    text = str(value)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text) or ".." in text:
        raise ConfigError(
            f"{setting}={value!r} is not valid: use letters, digits, '.', '_' or '-' (a single folder name, "
            "not a path)"
        )
    return text


def repo_dir(name: str) -> Path:
    return repos_root() / safe_name(name, "data.name")


def locked(folder: Path):
    """One process at a time per dataset repository (parallel sweep jobs)."""
    return file_lock(folder.parent / f".{folder.name}.lock")


def oxen(op: str, folder: Path, **request):
    """Run one Oxen operation in a short-lived process (see reftlab.data.oxen_ops for why)."""
    from .oxen_ops import MARK

    payload = json.dumps({"op": op, "folder": str(folder), **request})
    out = subprocess.run(
        [sys.executable, "-m", "reftlab.data.oxen_ops", payload], capture_output=True, text=True
    )
    results = [line[len(MARK) :] for line in out.stdout.splitlines() if line.startswith(MARK)]
    if out.returncode != 0 or not results:
        reason = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise VersionError(f"oxen {op} failed in the dataset repository {folder}: {reason}")
    return json.loads(results[-1])


def exists(folder: Path) -> bool:
    return (folder / ".oxen").is_dir()


def require(folder: Path) -> None:
    if not exists(folder):
        raise VersionError(
            f"No dataset repository at {folder}: run `python -m reftlab.data.cli prepare data=...` first"
        )


def recipe_settings(cfg) -> dict:
    return {k: cfg[k] for k in cfg if k not in NOT_RECIPE}


def content_key(folder: Path) -> str:
    h = hashlib.sha256()
    for name in FILES:
        h.update((folder / name).read_bytes())
    return h.hexdigest()[:16]


def commit_message(prepared: recipes.Prepared, cfg, key: str) -> str:
    from ..tracking import redact

    settings = redact(" ".join(f"{k}={v}" for k, v in recipe_settings(cfg).items()))
    return (
        f"prepare {cfg.name} (full {len(prepared.full)}, train {len(prepared.train)}, val {len(prepared.val)}, "
        f"eval {len(prepared.eval)}) [content {key}]: {settings}"
    )


def pending_marker(folder: Path) -> Path:
    """Beside the repository: exists while reftlab changes its working tree (copy + commit, or the
    export of an older version). Left behind, it says an interrupted reftlab operation made the mess."""
    return folder.parent / f".{folder.name}.pending"


@contextlib.contextmanager
def changing(folder: Path, what: str):
    marker = pending_marker(folder)
    marker.write_text(json.dumps({"operation": what, "pid": os.getpid()}))
    yield
    marker.unlink(missing_ok=True)  # only when the operation completed


def check_clean(folder: Path, dirty: list[str] | None = None, history: list[dict] | None = None) -> None:
    """A dirty working tree stops us, unless an interrupted reftlab operation left it so: then its
    files are put back to the last commit (logged), and the operation can run again. `dirty` and
    `history`: what one "state" operation already said (else asked here)."""
    dirty = oxen("dirty", folder) if dirty is None else dirty
    marker = pending_marker(folder)
    if dirty and marker.exists() and set(map(str, dirty)) <= set(FILES):
        history = oxen("log", folder) if history is None else history
        oxen("rollback", folder, files=list(FILES), head=history[0]["id"] if history else None)
        log.warning(
            "Rolled back %s in %s: left half-done by an interrupted reftlab operation (%s)",
            ", ".join(map(str, dirty)), folder, marker.read_text(),
        )  # fmt: skip
        marker.unlink(missing_ok=True)
        dirty = oxen("dirty", folder)
    if dirty:
        raise VersionError(
            f"The dataset repository {folder} has uncommitted changes ({', '.join(map(str, dirty))}); "
            "commit them with oxen or restore them (oxen restore <file>) before preparing again"
        )


def prepare(cfg) -> tuple[str, bool]:
    """Run the recipe and commit its outputs unless a commit already holds exactly them.

    Returns (commit id, whether a new commit was made).
    """
    folder = repo_dir(cfg.name)
    with locked(folder):
        commit_id, new, _ = prepare_locked(cfg, folder)
    return commit_id, new


def prepare_locked(cfg, folder: Path) -> tuple[str, bool, list[dict]]:
    """`prepare` under the repository's lock; also gives the history after it (newest first). When the
    content was committed before, this costs one Oxen process (state), not three."""
    import tempfile

    prepared = recipes.prepare(cfg, caps=False)  # first: bad settings or data leave no repository behind
    if not exists(folder):
        oxen("init", folder)
    state = oxen("state", folder)
    history = state["log"]
    if state["dirty"]:  # a rollback restores files, never commits: the history stays as it is
        check_clean(folder, state["dirty"], history)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        recipes.write(prepared, cfg, Path(tmp))
        key = content_key(Path(tmp))
        for commit in history:  # newest first: the same content was committed before
            if f"[content {key}]" in commit["message"]:
                return commit["id"], False, history
        with changing(folder, "prepare"):
            for name in FILES:
                shutil.copyfile(Path(tmp) / name, folder / name)
            commit_id = oxen("commit", folder, files=list(FILES), message=commit_message(prepared, cfg, key))
    return commit_id, True, oxen("log", folder)


def resolve(folder: Path, revision: str, history: list[dict]) -> str:
    ids = [c["id"] for c in history]
    matches = [i for i in ids if i.startswith(str(revision))]
    if len(matches) != 1:
        known = ", ".join(i[:12] for i in ids) or "none"
        what = "is ambiguous" if matches else "is not a commit"
        raise VersionError(
            f"data.revision={revision!r} {what} of the dataset repository {folder}; its commits: {known}"
        )
    return matches[0]


def snapshot(folder: Path, commit_id: str, head: str) -> Path:
    """The files of `commit_id`, copied once into a cache; the working tree is put back as it was."""
    target = repos_root() / ".versions" / folder.name / commit_id
    if target.is_dir():  # written whole: renamed from its temp folder at the end
        return target
    check_clean(folder)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with changing(folder, "export"):
        oxen("export", folder, files=list(FILES), commit=commit_id, head=head, dest=str(tmp))
    tmp.rename(target)
    return target


def read(folder: Path, where: Path, part: str) -> pd.DataFrame:
    path = where / f"{part}.parquet"
    if part == "val" and not path.exists():  # a version prepared before validation splits existed
        return pd.DataFrame(columns=["text", "label", "group"])
    try:
        return as_lists(pd.read_parquet(path))
    except Exception as e:
        raise VersionError(f"{path} in the dataset repository {folder} cannot be read: {e}") from e


def as_lists(df: pd.DataFrame) -> pd.DataFrame:
    """List columns (a multiple-choice question's options and keys) as Python lists, as the recipe
    made them: parquet gives them back as arrays."""
    import numpy as np

    for name in df.columns:
        if len(df) and df[name].dtype == object and isinstance(df[name].iloc[0], np.ndarray):
            df[name] = df[name].map(list)
    return df


README_RECIPE = re.compile(
    r"^- Recipe: (?P<recipe>[^;\n]+); split: (?P<split>[^;\n]+); eval fraction (?P<eval_fraction>[-+.\de]+); "
    r"split seed (?P<split_seed>-?\d+)",
    re.M,
)
README_VAL = re.compile(r"^- val \(validation, (?P<val_fraction>[-+.\de]+) of the training part", re.M)
README_SOURCE = re.compile(r"^- Source: (?P<source>.+)$", re.M)
README_TYPES = {"eval_fraction": float, "split_seed": int, "val_fraction": float}


def recorded(where: Path) -> dict:
    """The settings and counts a version was prepared with: its recipe.json, else what its README says."""
    if (where / "recipe.json").is_file():
        try:
            return json.loads((where / "recipe.json").read_text())
        except ValueError as e:
            raise VersionError(f"{where / 'recipe.json'} cannot be read as JSON: {e}") from e
    readme = where / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    found = {}
    for pattern in (README_SOURCE, README_RECIPE, README_VAL):
        match = pattern.search(text)
        found.update(match.groupdict() if match else {})
    return {k: README_TYPES.get(k, str)(v.strip()) for k, v in found.items()}


def warn_if_pinned_differs(cfg, info: dict, commit_id: str) -> None:
    """Say so when a pinned version was made with other settings than today's config gives."""
    differ = {
        k: (info[k], cfg.get(k))
        for k in recipes.DESCRIBED
        if k in info and k in cfg and info[k] != cfg.get(k)
    }
    if differ:
        shown = ", ".join(f"{k}={was!r} (the config says {now!r})" for k, (was, now) in differ.items())
        log.warning(
            "data.revision=%s was prepared with %s: it is described with its own settings",
            commit_id[:12],
            shown,
        )


def load(cfg) -> tuple[recipes.Prepared, str]:
    """The data a run uses and its Oxen commit id (caps applied after reading)."""
    folder = repo_dir(cfg.name)
    revision = cfg.get("revision")
    with locked(folder):  # one lock for prepare and read: a parallel job may commit in between
        if revision is None:
            commit_id, _, history = prepare_locked(cfg, folder)
        else:
            require(folder)
            history = oxen("log", folder)
            commit_id = resolve(folder, revision, history)
        head = history[0]["id"]
        where = folder if commit_id == head else snapshot(folder, commit_id, head)
        # Read under the lock: a parallel job may commit other settings into the working tree next.
        info = {"source": str(folder), **recorded(where), "repo": str(folder)}
        prepared = recipes.Prepared(
            cfg.name, read(folder, where, "full"), read(folder, where, "train"), read(folder, where, "eval"),
            info, read(folder, where, "val"),
        )  # fmt: skip
    warn_if_pinned_differs(cfg, info, commit_id)
    return recipes.apply_caps(prepared, cfg), commit_id


def history(cfg) -> list[dict]:
    folder = repo_dir(cfg.name)
    require(folder)
    return [{"commit": c["id"], "date": c["timestamp"], "message": c["message"]} for c in oxen("log", folder)]


def remote(cfg) -> str:
    url = cfg.get("remote")
    if not url or not str(url).startswith(("http://", "https://")):
        raise VersionError(
            f"data.remote={url!r} is not valid: give the http(s) URL of an Oxen hub repository"
        )
    return str(url)


def push(cfg) -> None:
    """Push the dataset repository to `data.remote` (an Oxen hub URL)."""
    folder = repo_dir(cfg.name)
    url = remote(cfg)
    require(folder)
    oxen("push", folder, remote=url)


def pull(cfg) -> None:
    folder = repo_dir(cfg.name)
    url = remote(cfg)
    if not exists(folder):
        oxen("init", folder)
    oxen("pull", folder, remote=url)

"""One Oxen operation per process: `python -m reftlab.data.oxen_ops '<json request>'`.

liboxen keeps a repository's refs database locked for the whole life of any process that opened
it, which would block every other process (parallel sweep jobs, the next run, a user's `oxen`
command). So reftlab runs each operation in a short-lived process (see versioning.oxen) that
releases the lock when it exits. Imports only oxen: it starts in a fraction of a second.
"""

import contextlib
import json
import shutil
import sys
from pathlib import Path

MARK = "@@reftlab-oxen@@"


def ensure_user() -> None:
    """Oxen needs a user before the first commit; set a local one if none is configured."""
    from oxen import user
    from oxen.oxen_py import util

    if not (Path(util.get_oxen_config_dir()) / "user_config.toml").exists():
        user.config_user("reftlab", "reftlab@localhost")


def commits(repo) -> list[dict]:
    try:
        log = list(repo.log())
    except ValueError:  # a repository without commits
        return []
    return [{"id": c.id, "message": c.message, "timestamp": str(c.timestamp)} for c in log]


def dirty(repo) -> list[str]:
    s = repo.status()
    parts = (s.unstaged_modified_files(), s.unstaged_removed_files(), s.modified_files(), s.removed_files(),
             s.added_files())  # fmt: skip
    return sorted({str(f) for part in parts for f in part})


def run(request: dict):
    import oxen

    op, folder = request["op"], Path(request["folder"])
    if op == "init":
        ensure_user()
        oxen.Repo(str(folder), mkdir=True).init()
        return None
    repo = oxen.Repo(str(folder))
    if op == "log":
        return commits(repo)
    if op == "dirty":
        return dirty(repo)
    if op == "state":  # what a run's load needs, in one process: the changed files and the history
        return {"dirty": dirty(repo), "log": commits(repo)}
    if op == "commit":
        ensure_user()
        for name in request["files"]:
            repo.add(str(folder / name))
        return repo.commit(request["message"]).id
    if op == "export":  # copy files of a commit elsewhere, then put the working tree back
        dest = Path(request["dest"])
        dest.mkdir(parents=True, exist_ok=True)
        try:
            for name in request["files"]:
                try:
                    repo.restore(str(folder / name), source=request["commit"])
                except ValueError:  # not in that commit (val.parquet of versions before validation splits)
                    continue
                shutil.copy2(folder / name, dest / name)
        finally:
            for name in request["files"]:
                repo.restore(str(folder / name), source=request["head"])
        return str(dest)
    if op == "rollback":  # reftlab's files back to the last commit (or removed: no commit yet)
        for name in request["files"]:
            path = str(folder / name)
            with contextlib.suppress(ValueError):  # nothing staged for it
                repo.restore(path, staged=True)  # unstage what an interrupted commit had added
            if request["head"] is None:
                (folder / name).unlink(missing_ok=True)
                continue
            try:
                repo.restore(path, source=request["head"])
            except ValueError:  # not in that commit
                (folder / name).unlink(missing_ok=True)
        return None
    if op in ("push", "pull"):
        repo.set_remote("origin", request["remote"])
        getattr(repo, op)("origin", "main")
        return None
    raise ValueError(f"unknown oxen operation {op!r}")


if __name__ == "__main__":
    print(MARK + json.dumps(run(json.loads(sys.argv[1]))))

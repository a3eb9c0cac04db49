"""The data CLI: python -m reftlab.data.cli prepare|log|push|pull [data=<name>] [data.key=value ...]

Prepares a dataset into its Oxen repository, lists its versions, pushes or pulls it (see
reftlab.data.versioning); the settings are composed from conf/ like train.py's.
"""

from __future__ import annotations

import sys

from ..tracking import redact
from .recipes import DataError
from .versioning import VersionError, history, prepare, pull, push, repo_dir


def main(argv: list[str] | None = None) -> int:
    """python -m reftlab.data.cli prepare|log|push|pull [data=<name>] [data.key=value ...]"""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("prepare", "log", "push", "pull")
    if not argv or argv[0] not in commands:
        print(
            f"usage: python -m reftlab.data.cli {{{'|'.join(commands)}}} [data=<name>] [data.key=value ...]"
        )
        return 2
    command, overrides = argv[0], argv[1:]
    from ..config.compose import compose

    cfg = compose(overrides).data
    try:
        if command == "prepare":
            commit_id, committed = prepare(cfg)
            state = "committed" if committed else "unchanged, no new commit"
            print(f"{cfg.name}: {repo_dir(cfg.name)} @ {commit_id} ({state})")
        elif command == "log":
            for row in history(cfg):
                print(f"{row['commit']}  {row['date']}  {redact(row['message'])}")
        else:
            (push if command == "push" else pull)(cfg)
            print(f"{command} {cfg.name}: done ({redact(cfg.remote)})")
    except (VersionError, DataError) as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

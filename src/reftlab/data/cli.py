"""The data CLI: python -m reftlab.data.cli prepare|log|push|pull [data=<name>] [data.key=value ...]

Prepares a dataset into its Oxen repository, lists its versions, pushes or pulls it (see
reftlab.data.versioning); the settings are composed from conf/ like train.py's and checked by the
same function (`validate.check_data`). A bad setting or data file is one message and exit status 2,
as in train.py (HYDRA_FULL_ERROR=1 shows the traceback); a bug is its traceback and exit status 1.
"""

from __future__ import annotations

import os
import sys
import traceback

from ..config import ConfigError
from ..tracking import redact
from .recipes import DataError
from .versioning import VersionError, history, prepare, pull, push, repo_dir

COMMANDS = ("prepare", "log", "push", "pull")
# "Change a setting or the data", not a bug: run.USER_ERRORS, what train.py prints alone (run.py
# itself imports far more than this command needs).
USER_ERRORS = (ConfigError, DataError, VersionError)


def main(argv: list[str] | None = None) -> int:
    """python -m reftlab.data.cli prepare|log|push|pull [data=<name>] [data.key=value ...]"""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(
            f"usage: python -m reftlab.data.cli {{{'|'.join(COMMANDS)}}} [data=<name>] [data.key=value ...]"
        )
        return 2
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        run(argv[0], argv[1:])
    except (*USER_ERRORS, HydraException, OmegaConfBaseException) as e:  # Hydra's: a bad override
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {redact(message(e))}", file=sys.stderr)
        return 2
    except Exception:  # a bug: the traceback, with any credential in it masked
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(redact(traceback.format_exc()), file=sys.stderr)
        return 1
    return 0


def message(error: Exception) -> str:
    """The error's text, with its cause's where it has one (Hydra's "Error merging override ...")."""
    cause = error.__cause__
    return f"{error}: {cause}" if cause is not None and str(cause) not in str(error) else str(error)


def run(command: str, overrides: list[str]) -> None:
    """One command on the dataset that `overrides` compose: its settings checked first, as train.py's are."""
    from ..config.compose import compose
    from .checks import check_data

    cfg = compose(overrides).data
    if command == "prepare":
        check_data(cfg)  # the name, recipe, settings, file and folds, before anything is written
        commit_id, committed = prepare(cfg)
        state = "committed" if committed else "unchanged, no new commit"
        print(f"{cfg.name}: {repo_dir(cfg.name)} @ {commit_id} ({state})")
    elif command == "log":
        for row in history(cfg):
            print(f"{row['commit']}  {row['date']}  {redact(row['message'])}")
    else:
        (push if command == "push" else pull)(cfg)
        print(f"{command} {cfg.name}: done ({redact(cfg.remote)})")


if __name__ == "__main__":
    sys.exit(main())

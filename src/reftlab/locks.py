"""An exclusive lock across processes on a lock file (parallel jobs of a sweep).

Lock files never follow a symlink and are never truncated (a lock path in a shared folder can be
planted by someone else); run locks live in a folder private to this user (`run_lock`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from pathlib import Path


class LockPathError(OSError):
    """A lock file or lock folder that is unsafe to use (a symlink, not ours, open to others)."""


def open_lock_file(path: Path, mode: int = 0o666) -> int:
    """A descriptor on the lock file `path`: created if missing, never truncated, never via a symlink.

    A lock file another user created in a shared folder may not be writable: it is opened read-only
    then (flock works on a read-only descriptor)."""
    base = os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | base, mode)
        except PermissionError:
            fd = os.open(path, os.O_RDONLY | base)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise LockPathError(
                errno.ELOOP, f"the lock file {path} is a symlink (planted?): not followed; remove it"
            ) from e
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LockPathError(errno.EINVAL, f"the lock file {path} is not a regular file: remove it")
    return fd


@contextlib.contextmanager
def file_lock(path: Path, mode: int = 0o666):
    """Hold an exclusive flock on `path` (created if missing, with `mode` less the umask) while the
    block runs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_lock_file(path, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def try_file_lock(path: Path, mode: int = 0o666):
    """Take an exclusive flock on `path` without waiting; yields whether it was taken."""
    fd = open_lock_file(Path(path), mode)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def private_folder(path: Path) -> Path:
    """`path` as a folder only this user can enter: made 0700 if missing, else checked (not a
    symlink, owned by this user, no group/other access); refused with LockPathError otherwise."""
    path = Path(path)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # we just made it: set exactly 0700 whatever the umask
    st = os.lstat(path)
    problem = (
        "is a symlink" if stat.S_ISLNK(st.st_mode)
        else "is not a folder" if not stat.S_ISDIR(st.st_mode)
        else f"belongs to uid {st.st_uid}, not {os.getuid()}" if st.st_uid != os.getuid()
        else f"is open to other users (mode {stat.S_IMODE(st.st_mode):04o})" if st.st_mode & 0o077
        else None
    )  # fmt: skip
    if problem:
        raise LockPathError(
            errno.EPERM,
            f"the private lock folder {path} {problem}: not used; remove it (it may have been planted "
            "by someone else) or set TMPDIR to a folder of your own",
        )
    return path


def run_lock_folder() -> Path:
    """This user's folder of run locks, `<tempdir>/reftlab-<uid>/run-locks` (private, 0700)."""
    base = private_folder(Path(tempfile.gettempdir()) / f"reftlab-{os.getuid()}")
    return private_folder(base / "run-locks")


def run_lock(name: str):
    """The lock of one job key on this machine (`<experiment id>-<config hash>`), in this user's
    private folder: a parallel twin waits for it, then finds its run FINISHED."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"run lock name {name!r}: expected a plain file name such as '<experiment>-<key>'")
    return file_lock(run_lock_folder() / f"{name}.lock", mode=0o600)

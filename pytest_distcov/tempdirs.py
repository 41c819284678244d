"""Temporary directories that tell whether a live run still needs them (standard library only).

Every process of a measured run keeps its data in a directory ``distcov-<who>-XXXXXXXX`` in the
temp directory. While the process lives it holds a shared ``flock`` on the file ``distcov.lock``
inside; the controller takes a shared lock on each local worker's directory too, as soon as it
hears of it, so that a worker that crashed keeps its directory until the controller has
recovered its data. A later run removes a directory only if it can take that lock exclusively
without waiting: no process holds it, so the run that made it was killed (SIGKILL, a lost
machine). A lock, unlike a process id, cannot be mistaken for an unrelated process that was
given the same id later.

What a later run removes, and nothing else: directories (not symlinks) in the temp directory
whose names start with ``distcov-``, owned by the same user, holding the lock file. The lock
file appears already locked (it is locked under another name, then renamed), so a directory
being made is never taken for a dead one; a directory whose files a run keeps on purpose (data
that could not be read, a rescued data file) loses its lock file when the run ends, and stays.

On a system without ``fcntl`` (Windows) nothing is locked and nothing is removed by later runs.

A worker's directory also carries its run's tag (``distcov-gw0-XXXXXXXX.<tag>``, from the run's
unique id that xdist gives the controller and every worker): the controller holds, reads and
removes a directory that a worker's hello names only when :class:`RunDirs` finds it to be that
worker's directory of this run. A hello comes from another process, perhaps on another machine;
without that check a forged one could have the controller read or remove any directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import shutil
import stat
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "PARENT_ENV", "PREFIX", "HeldDir", "RunDirs", "run_tag", "sweep"]

PREFIX = "distcov-"
LOCK_NAME = "distcov.lock"
#: A directory to make this process's directory in, held by another process that outlives it
#: (on a remote host: the run's directory, held by the host's agent). Copied in remote_worker.py.
PARENT_ENV = "PYTEST_DISTCOV_TMP_PARENT"

#: Never through a symlink; not inherited by programs the process starts (neither on Windows).
_FLAGS = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class HeldDir:
    """A directory that this process keeps other runs from removing while it lives."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def create(cls, who: str, *, run: str | None = None) -> HeldDir:
        """A new ``distcov-<who>-XXXXXXXX`` directory, with its lock file held; with ``run``
        (a worker's run id), ``distcov-<who>-XXXXXXXX.<run tag>`` (see :class:`RunDirs`)."""
        prefix, suffix = f"{PREFIX}{who}-", f".{run_tag(run)}" if run else ""
        parent = os.environ.get(PARENT_ENV)
        if parent and os.path.isdir(parent):  # held by the process that made the parent
            return cls(Path(tempfile.mkdtemp(suffix, prefix, dir=parent)), None)
        path = Path(tempfile.mkdtemp(suffix, prefix))
        return cls(path, _hold_new(path))

    @classmethod
    def adopt(cls, path: str | os.PathLike[str]) -> HeldDir | None:
        """Hold another process's directory too (None if it has no lock file, or is being
        removed): it then outlives that process until :meth:`release`."""
        fd = _open_lock(Path(path))
        if fd is None:
            return None
        if not _try_lock(fd, exclusive=False):
            os.close(fd)
            return None
        return cls(Path(path), fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self, *, handed_over: bool = False) -> None:
        """Let go. If the directory is still there, the run keeps what is in it on purpose:
        its lock file goes first, so that no later run removes it. With ``handed_over`` (a
        worker's directory, which its controller holds and removes or keeps) the lock file
        stays: if that controller is killed, a later run removes the directory."""
        if self._fd is None:
            return
        if not handed_over:
            with contextlib.suppress(OSError):
                (self.path / LOCK_NAME).unlink()
        os.close(self._fd)
        self._fd = None


def _hold_new(path: Path) -> int | None:
    """Lock a new lock file under a temporary name, then rename it into place, so that the
    lock file is never seen unlocked while its owner lives."""
    if fcntl is None:  # pragma: no cover - Windows
        return None
    new = path / f"{LOCK_NAME}.new"
    try:
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _FLAGS, 0o600)
    except OSError:  # the directory is then never removed by another run, as before locks
        return None
    if not _try_lock(fd, exclusive=False) or not _renamed(new, path / LOCK_NAME):
        os.close(fd)
        return None
    return fd


def _renamed(old: Path, new: Path) -> bool:
    try:
        os.rename(old, new)
    except OSError:
        return False
    return True


def _open_lock(path: Path) -> int | None:
    if fcntl is None:  # pragma: no cover - Windows
        return None
    try:
        # O_NONBLOCK: a FIFO under that name would otherwise block the open (it is refused next)
        fd = os.open(path / LOCK_NAME, os.O_RDONLY | os.O_NONBLOCK | _FLAGS)
    except OSError:  # none: not ours, kept on purpose, or gone
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _try_lock(fd: int, *, exclusive: bool) -> bool:
    """Take the lock without ever waiting for it."""
    assert fcntl is not None
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def sweep(directory: str | None = None) -> int:
    """Remove the directories of runs that were killed from ``directory`` (the temp directory);
    how many were removed."""
    if fcntl is None:  # pragma: no cover - Windows
        return 0
    root = directory or tempfile.gettempdir()
    removed = 0
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    uid = os.getuid()
    for entry in entries:
        if not entry.name.startswith(PREFIX):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_uid != uid:
                continue
        except OSError:
            continue
        if remove_if_unheld(Path(entry.path)):
            removed += 1
    return removed


def remove_if_unheld(path: Path) -> bool:
    """Remove ``path`` if it has a lock file that nobody holds; True if it is gone now."""
    fd = _open_lock(path)
    if fd is None:
        return False
    try:
        if not _try_lock(fd, exclusive=True):
            return False  # its owner, or a run that adopted it, is alive
        shutil.rmtree(path, ignore_errors=True)
        return not os.path.lexists(path)
    finally:
        os.close(fd)


def run_tag(run: str) -> str:
    """Eight hex digits of a run's unique id: what tells this run's worker directories from
    those of other runs (the id itself may be anything ``--testrunuid`` is given)."""
    return hashlib.sha256(run.encode("utf-8", "surrogatepass")).hexdigest()[:8]


class RunDirs:
    """The directories of this run's workers: the only ones a worker's hello may name for the
    controller to hold, read (recovering a dead worker's data) or remove (at the end).

    A hello comes from a worker process, perhaps on another machine, and may name any path. It
    is taken only when the path is absolute and normal (no ``..``) and its last part is the name
    this run gives that worker's directory: ``distcov-<worker id>-XXXXXXXX.<run tag>``, the tag
    of the run id the controller gave that worker (:meth:`expect`), which no other run's
    directory has. A local directory must also be a real directory (not a symlink) of this
    user, and one without a run tag (a worker that was given no run id) must be in the same
    directory as the controller's own; a remote worker's must be directly in its host's run
    directory (where the host's agent has its workers make theirs).
    """

    def __init__(self, parent: str | os.PathLike[str]) -> None:
        #: where this run's local directories are made (the controller's own is there)
        self.parent = os.fspath(parent)
        self._tags: dict[str, str] = {}

    def expect(self, worker_id: str, run: str | None) -> None:
        """The controller gave worker ``worker_id`` the run id ``run`` (None: no run id)."""
        if run:
            self._tags[worker_id] = run_tag(run)
        else:
            self._tags.pop(worker_id, None)

    def _named(self, worker_id: str, name: str) -> bool:
        tag = self._tags.get(worker_id)
        suffix = rf"\.{tag}" if tag else ""
        pattern = rf"{re.escape(PREFIX + worker_id)}-[A-Za-z0-9_]+{suffix}"
        return re.fullmatch(pattern, name) is not None

    def named(self, worker_id: str, path: str) -> bool:
        """``path`` (from the hello of local worker ``worker_id``) is where that worker's
        directory of this run would be: its name and place, not yet what is there."""
        head, name = os.path.split(path)
        return (
            os.path.isabs(path)
            and os.path.normpath(path) == path
            and self._named(worker_id, name)
            and (worker_id in self._tags or head == self.parent)
        )

    def local(self, worker_id: str, path: str) -> Path | None:
        """``path`` (from the hello of local worker ``worker_id``) if it is that worker's
        directory of this run, as it is on disk now; None if it is not (or is gone)."""
        if not self.named(worker_id, path):
            return None
        try:
            st = os.lstat(path)
        except (OSError, ValueError):
            return None
        mine = not hasattr(os, "getuid") or st.st_uid == os.getuid()
        # a symlink, whatever it points to, is not ours
        return Path(path) if stat.S_ISDIR(st.st_mode) and mine else None

    def hello(self, worker_id: str, path: str) -> str | None:
        """What the hello of local worker ``worker_id`` names, if it may be taken: its
        directory of this run, or where that directory was if it is gone already (the hello is
        read on the controller's main thread, perhaps after the worker's directory was
        destroyed; nothing is read there then, and :meth:`local` looks at it again before
        anything is). None if it is not that worker's of this run."""
        local = self.local(worker_id, path)
        if local is not None:
            return str(local)
        if self.named(worker_id, path) and not os.path.lexists(path):
            return path
        return None

    def remote(self, worker_id: str, path: str, run_dir: object) -> str | None:
        """``path`` (from the hello of worker ``worker_id`` on a host whose run directory is
        ``run_dir``) if it is that worker's directory of this run there; None if it is not.
        The host's paths are POSIX paths; the host's agent is the one to look at the disk."""
        if not (isinstance(run_dir, str) and posixpath.isabs(run_dir) and posixpath.isabs(path)):
            return None
        if posixpath.normpath(path) != path:
            return None
        head, name = posixpath.split(path)
        if head != posixpath.normpath(run_dir) or not self._named(worker_id, name):
            return None
        return path

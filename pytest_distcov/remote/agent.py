"""The agent that runs on a remote host, over pytest-distcov's own execnet gateway (stdlib only).

execnet sends this module's source to the host and runs it there as ``__channelexec__``; the host
has nothing but a Python, so this file imports the standard library only and nothing of its own
package. It serves requests on its channel until it receives ``None``:

``setup``      describe the host (hostname, Python, standard library, cache) and which trees
               its cache already holds complete; prune the cache to the size the run allows
``manifests``  take the file lists of the trees to build; answer which contents are missing
``blobs``      store file contents by digest (no answer: the controller streams them)
``build``      put the trees together from the stored contents; answer their paths (or the
               stored contents found damaged, for the controller to send again)
``fetch``      read the coverage data files a worker left in its directory (crash recovery)
``cleanup``    remove this run's directories
``ping``       answer ``pong`` (is the host still there?)

The cache lives in ``$XDG_CACHE_HOME/pytest-distcov`` (default ``~/.cache/pytest-distcov``):
``objects/`` holds file contents by digest, ``trees/<digest>`` the shared package trees,
``envs/`` the virtual environments made around a shipped site-packages, and ``runs/<run id>``
the per-run copies of the project and the workers' data directories, removed at the end of the
run. While the agent lives (as long as the run's gateway) it holds a shared ``flock`` on
``runs/<run id>/distcov.lock``; the next run's agent removes every run directory whose lock
nobody holds (its run was killed), as ``pytest_distcov/tempdirs.py`` does locally (a run
directory without a lock file is removed after a day).

The shared part (objects, trees, environments) is kept under the size the controller asks for,
least recently used first. A use is recorded cheaply: a tree's or an environment's marker is
touched when a run uses it, an object's file when a manifest finds it present or it is stored.
Two locks keep pruning from ever taking what a run needs:

* ``cache.lock`` in the cache root: a run holds it shared from its setup until its trees are
  built (objects must stay between the manifest's answer and the copy; half-built trees are
  work directories). Pruning takes it exclusively, without waiting: when another run is
  building, this run leaves the pruning to a later one.
* ``runs/<run id>/uses`` lists the trees and the environment a run uses, written before it
  answers its setup and again once built. Pruning keeps everything that any run directory
  still there lists (a live run's: its lock is held; a dead run's was removed just before).
  A live run never holds the cache lock for its whole life, so pruning is not starved on a
  host that is never idle.

Installing a built tree or environment is serialized by ``install.lock`` (a rename or two),
so that two runs building the same tree at once both end with one complete copy.

What the cache holds is trusted only as far as it can be checked. The agent works under umask
077, so every directory and file it makes is its user's alone; a cache root owned by another
user, or writable by group or others, is refused (:class:`Refused`, one line naming it) before
anything in it is read. Objects are named by their digest; a manifest's answer checks only an
object's size (the contents are hashed once, while a tree is copied from them, and a damaged
one is never copied: it is removed and named for the controller to send again). The
completion marker of a tree or an environment holds its digest, and a tree or an environment
whose marker says anything else is built again. ``fetch`` and ``cleanup`` act only on
directories directly in this run's directory, and ``fetch`` reads regular files only, through
no link, up to :data:`FETCH_MAX` bytes.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import hashlib
import importlib.metadata
import os
import platform
import shutil
import stat
import sys
import tempfile
import time
from typing import Any

RUN_MAX_AGE = 24 * 3600.0
#: A built tree's completion marker: it holds the tree's digest.
COMPLETE = ".distcov-complete"
#: A built tree's size in bytes (its files'), so that pruning need not walk it.
SIZE_FILE = ".distcov-size"
#: As tempdirs.LOCK_NAME (this module imports nothing of its package).
LOCK_NAME = "distcov.lock"
#: In the cache root: held shared from a run's setup until its trees are built, exclusively
#: while the cache is pruned.
CACHE_LOCK = "cache.lock"
#: In the cache root: held exclusively while a built tree or environment is put into place.
INSTALL_LOCK = "install.lock"
#: In a run's directory: the trees and environment the run uses ("trees/<digest>", ...).
USES = "uses"
#: What the agent's own interrupted work leaves: removed by pruning once this old.
LEFTOVER_AGE = 3600.0
LEFTOVER_SUFFIXES = (".building", ".stale", ".tmp")
#: The largest data file ``fetch`` sends back (a worker's coverage data, not a disk image).
FETCH_MAX = 512 << 20

_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.realpath(os.path.join(base, "pytest-distcov"))


class Refused(Exception):
    """The host cannot be used as it is; the message is one line for the user (sent without the
    exception's type name)."""


class _Damaged(Exception):
    """Stored contents that do not hash to their names (removed already)."""

    def __init__(self, digests: list[str], first: str) -> None:
        super().__init__(first)
        self.digests = digests


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _own_cache(cache: str) -> None:
    """Make the cache root (0700) and refuse one that another user could change: anyone who
    can write to it could put code into every tree a run builds from it."""
    os.makedirs(cache, mode=0o700, exist_ok=True)
    st = os.stat(cache)
    uid = os.geteuid()
    fix = "remove it (or set XDG_CACHE_HOME to a directory of your own) on that host and run again"
    if st.st_uid != uid:
        raise Refused(
            f"the cache directory {cache} belongs to uid {st.st_uid}, not to the connecting"
            f" user (uid {uid}): {fix}"
        )
    if st.st_mode & 0o022:
        raise Refused(
            f"the cache directory {cache} is writable by group or others"
            f" (mode {st.st_mode & 0o777:04o}): chmod 700 it, or {fix}"
        )


def _marker_is(path: str, digest: str) -> bool:
    """Whether the completion marker in ``path`` holds ``digest`` (no marker: False)."""
    try:
        with open(os.path.join(path, COMPLETE), encoding="ascii", errors="replace") as fh:
            return fh.read(200).strip() == digest
    except OSError:
        return False


def _touch(path: str) -> None:
    """Record a use (pruning removes the least recently used first)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def _write_atomic(path: str, content: bytes, prefix: str | None = None) -> None:
    """Write ``path`` whole: under a name of its own beside it (another process may write the
    same path now), then renamed into place."""
    fd, tmp = tempfile.mkstemp(prefix=(prefix or os.path.basename(path)) + ".", suffix=".tmp",
                               dir=os.path.dirname(path))  # fmt: skip
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _work_dir(final: str) -> str:
    """A fresh, unique directory beside ``final`` to build it in (unique among processes and
    among agents in one process)."""
    parent, name = os.path.split(final)
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{name}.{os.getpid()}.", suffix=".building", dir=parent)


def _flock(path: str, mode: int) -> int | None:
    """Open ``path`` (made if need be) and lock it with ``mode`` (fcntl.LOCK_*); None without
    fcntl (Windows) or when a non-blocking lock is taken."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no pruning, no serialized installs
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, mode)
    except OSError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _install(work: str, final: str, digest: str | None) -> None:
    """Move a freshly built ``work`` directory to ``final``. A ``final`` that another run built
    meanwhile is kept when its marker holds ``digest`` (and touched: this run uses it); one
    that does not (damaged, or left by an interrupted build) is replaced. ``digest`` None:
    ``final`` is always replaced. Installs of shared trees are serialized by the cache's
    install lock, so that the check and the renames are one step for every other run."""
    stale = ""
    held = None
    if digest is not None:
        try:
            import fcntl

            cache = os.path.dirname(os.path.dirname(final))
            held = _flock(os.path.join(cache, INSTALL_LOCK), fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - Windows
            pass
    try:
        if os.path.lexists(final):
            if digest is not None and _marker_is(final, digest):
                _touch(os.path.join(final, COMPLETE))
                shutil.rmtree(work, ignore_errors=True)
                return
            stale = f"{work}.stale"
            with contextlib.suppress(OSError):  # gone meanwhile
                os.rename(final, stale)
        try:
            os.replace(work, final)
        except OSError:
            # another run (without the install lock: no fcntl) put its own copy there
            if digest is None or not _marker_is(final, digest):
                raise
            shutil.rmtree(work, ignore_errors=True)
    finally:
        _unlock(held)
        if stale:
            shutil.rmtree(stale, ignore_errors=True)


def _is_stdlib(path: str) -> bool:
    real = os.path.realpath(path)
    if "site-packages" in real or "dist-packages" in real:
        return False
    for root in {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}:
        if real == root or real.startswith(root + os.sep):
            return True
    return False


def _has_versions(versions: dict[str, str]) -> bool:
    if not versions:
        return False
    for dist, version in versions.items():
        try:
            if importlib.metadata.version(dist) != version:
                return False
        except Exception:
            return False
    return True


def _hold(path: str) -> int | None:
    """Hold a shared lock on ``path``'s lock file for the agent's life. The file is locked under
    another name and then renamed, so that it is never seen unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: runs are removed by age only
        return None
    new = os.path.join(path, LOCK_NAME + ".new")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(new, flags, 0o600)
    except OSError:  # unheld and without a lock file: removed by age only, as before
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        os.rename(new, os.path.join(path, LOCK_NAME))
    except OSError:
        os.close(fd)
        return None
    return fd


def _remove_if_unheld(path: str) -> bool | None:
    """Remove a run's directory if nobody holds its lock (its run was killed): True if it is
    gone, False if its run lives (or it could not be removed), None if it has no lock file.
    Never waits for the lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    try:
        fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    else:
        shutil.rmtree(path, ignore_errors=True)
        return not os.path.lexists(path)
    finally:
        os.close(fd)


def _prune_runs(cache: str, current: str) -> int:
    """Remove the directories of killed runs; how many were removed."""
    now = time.time()
    removed = 0
    for path in glob.glob(os.path.join(cache, "runs", "*")):
        try:
            if path == current or os.path.islink(path) or not os.path.isdir(path):
                continue
            gone = _remove_if_unheld(path)
            if gone is None and now - os.stat(path).st_mtime > RUN_MAX_AGE:
                shutil.rmtree(path, ignore_errors=True)  # no lock file: an old run
                gone = not os.path.lexists(path)
            removed += bool(gone)
        except OSError:
            pass
    return removed


# -- pruning the shared cache -------------------------------------------------------------------


def _in_use(cache: str) -> set[str]:
    """What the runs whose directories are still there use ("trees/<digest>", "envs/<name>"):
    after :func:`_prune_runs`, those are live runs (and runs kept on purpose, for a day)."""
    used: set[str] = set()
    for path in glob.glob(os.path.join(cache, "runs", "*", USES)):
        with contextlib.suppress(OSError, UnicodeDecodeError), open(path, encoding="utf-8") as fh:
            used.update(line.strip() for line in fh if line.strip())
    return used


def _tree_size(path: str) -> int:
    """A built tree's size: from its size file, else (built by an older agent, or not
    complete) by walking it."""
    try:
        with open(os.path.join(path, SIZE_FILE), encoding="ascii") as fh:
            return int(fh.read(40))
    except (OSError, ValueError):
        pass
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _last_use(path: str) -> float:
    """When a tree or an environment was last used: its marker's time (none: the directory's,
    which is older than any use of a complete one)."""
    for where in (os.path.join(path, COMPLETE), path):
        with contextlib.suppress(OSError):
            return os.lstat(where).st_mtime
    return 0.0


def _remove_tree(path: str) -> bool:
    """Take a tree out of its place first, so that no run ever sees half of it (with its
    marker); then remove it."""
    gone = f"{path}.{os.getpid()}.{time.monotonic_ns()}.stale"
    try:
        os.rename(path, gone)
    except OSError:
        return False
    shutil.rmtree(gone, ignore_errors=True)
    return True


def prune_cache(cache: str, limit: int, keep: set[str]) -> dict[str, int] | None:
    """Remove the least recently used objects, trees and environments until what the cache
    holds is at most ``limit`` bytes; never what ``keep`` names. Call with the cache lock held
    exclusively (no run is building). Leftovers of interrupted work older than
    :data:`LEFTOVER_AGE` go first. What was removed, or None if nothing was."""
    now = time.time()
    entries: list[tuple[float, int, str, str]] = []  # (last use, bytes, kind, path)
    removed = {"objects": 0, "trees": 0, "envs": 0, "leftovers": 0}
    kept = 0

    def leftover(path: str, mtime: float) -> bool:
        if not path.endswith(LEFTOVER_SUFFIXES):
            return False
        if now - mtime > LEFTOVER_AGE:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            removed["leftovers"] += 1
        return True

    for shard in glob.glob(os.path.join(cache, "objects", "*")):
        with contextlib.suppress(OSError):
            for entry in os.scandir(shard):
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    if not leftover(entry.path, st.st_mtime):
                        entries.append((st.st_mtime, st.st_size, "objects", entry.path))
    for kind in ("trees", "envs"):
        with contextlib.suppress(OSError):
            for entry in os.scandir(os.path.join(cache, kind)):
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    if leftover(entry.path, st.st_mtime):
                        continue
                    size = _tree_size(entry.path) if kind == "trees" else 4096
                    if f"{kind}/{entry.name}" in keep:
                        kept += size  # counted, never removed
                    else:
                        entries.append((_last_use(entry.path), size, kind, entry.path))
    total = kept + sum(size for _, size, _, _ in entries)
    freed = 0
    if total > limit:
        for _used, size, kind, path in sorted(entries):
            if total - freed <= limit:
                break
            if kind == "objects":
                try:
                    os.unlink(path)
                except OSError:
                    continue
            elif not _remove_tree(path):
                continue
            freed += size
            removed[kind] += 1
    if not any(removed.values()):
        return None
    return {**removed, "freed": freed, "size": total - freed}


class Agent:
    def __init__(self) -> None:
        self.cache = _cache_dir()
        self.run = ""
        self.lock: int | None = None  # held for the agent's life
        #: the cache lock, held shared from the setup until the trees are built
        self.cache_lock: int | None = None
        self.pending: dict[str, dict[str, Any]] = {}  # tree name -> tree (with files)
        self.paths: dict[str, str] = {}
        self.uses: set[str] = set()  # what this run uses in the shared cache
        self.errors: list[str] = []  # from blobs, which get no answer of their own

    @property
    def run_dir(self) -> str:
        return os.path.join(self.cache, "runs", self.run)

    def _object(self, digest: str) -> str:
        return os.path.join(self.cache, "objects", digest[:2], digest)

    def _tree_dir(self, tree: dict[str, Any]) -> str:
        if tree["per_run"]:
            return os.path.join(self.run_dir, tree["name"])
        return os.path.join(self.cache, "trees", tree["digest"])

    def _record_uses(self) -> None:
        """Write what this run uses where pruning (by any run) reads it."""
        _write_atomic(
            os.path.join(self.run_dir, USES),
            "".join(f"{u}\n" for u in sorted(self.uses)).encode("utf-8"),
        )

    def _release_cache(self) -> None:
        _unlock(self.cache_lock)
        self.cache_lock = None

    def setup(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.run = msg["run"]
        _own_cache(self.cache)
        run_dir = self.run_dir
        os.makedirs(run_dir, exist_ok=True)
        self.lock = _hold(run_dir)
        removed = _prune_runs(self.cache, run_dir)
        self.uses = {f"trees/{t['digest']}" for t in msg["trees"] if not t["per_run"]}
        self._record_uses()  # before pruning, by this run or any other
        pruned = self._lock_and_prune(msg.get("cache_size"))
        have = []
        for tree in msg["trees"]:
            path = self._tree_dir(tree)
            if not tree["per_run"] and _marker_is(path, tree["digest"]):
                have.append(tree["name"])
                self.paths[tree["name"]] = path
                _touch(os.path.join(path, COMPLETE))  # used now
        return {
            "host": platform.node(),
            "python": platform.python_version(),
            "version": list(sys.version_info[:2]),
            "executable": sys.executable,
            "stdlib": [p for p in sys.path if p and _is_stdlib(p)],
            "site": [p for p in sys.path if p and not _is_stdlib(p) and os.path.isdir(p)],
            "cache": self.cache,
            "run_dir": run_dir,
            "have": have,
            "removed": removed,
            "has_packages": _has_versions(msg.get("versions") or {}),
            "pruned": pruned,
        }

    def _lock_and_prune(self, limit: object) -> dict[str, int] | None:
        """Take the cache lock for this run's building (shared); prune first if ``limit`` (in
        bytes) is given and no other run is building now. What was pruned, or None."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: the cache is never pruned
            return None
        path = os.path.join(self.cache, CACHE_LOCK)
        pruned = None
        if isinstance(limit, int) and limit >= 0:
            fd = _flock(path, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if fd is not None:
                try:
                    pruned = prune_cache(self.cache, limit, _in_use(self.cache))
                finally:
                    os.close(fd)  # then shared, as any building run (another may prune between)
        self.cache_lock = _flock(path, fcntl.LOCK_SH)
        return pruned

    def manifests(self, msg: dict[str, Any]) -> list[str]:
        """The digests this host has no copy of (of the listed size). The contents of a stored
        object are checked once, when a tree is copied from it (see :meth:`build`): hashing
        them here too would read every cached file twice a run. A present object is touched:
        it was used now."""
        missing: set[str] = set()
        for tree in msg["trees"]:
            self.pending[tree["name"]] = tree
            for _rel, digest, size, _exe in tree["files"]:
                if digest in missing:
                    continue
                path = self._object(digest)
                try:
                    st = os.lstat(path)
                    sound = stat.S_ISREG(st.st_mode) and st.st_size == size
                except OSError:
                    sound = False
                if sound:
                    _touch(path)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    missing.add(digest)
        return sorted(missing)

    def blobs(self, msg: dict[str, Any]) -> None:
        for digest, content in msg["items"]:
            if _digest(content) != digest:
                raise OSError(f"a shipped file arrived damaged (digest {digest})")
            target = self._object(digest)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            _write_atomic(target, content, prefix=digest)  # another run may store it now

    def build(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Build the pending trees; answer their paths. With ``resend``, stored contents found
        damaged are answered as ``{"damaged": [digest, ...]}`` (removed; the trees that need
        them stay pending) for the controller to send again before it asks once more;
        without, they refuse the build."""
        try:
            paths: dict[str, Any] = self._build_trees(msg.get("overrides") or [])
        except _Damaged as exc:
            if msg.get("resend"):
                return {"damaged": exc.digests}  # the cache lock stays held: objects must stay
            self._release_cache()
            raise Refused(str(exc)) from None
        except BaseException:
            self._release_cache()
            raise
        try:
            site = msg.get("site_tree")
            if site and site in paths:
                env = self._venv(paths[site])
                self.uses.add(f"envs/{os.path.basename(env)}")
                paths["venv-python"] = os.path.join(env, "bin", "python3")
                paths["venv-site"] = self._venv_site(env)
            self._record_uses()
        finally:
            self._release_cache()  # built: this run's trees are kept by its uses from now on
        return paths

    def _venv_site(self, env: str) -> str:
        return os.path.join(
            env, "lib", "python{}.{}".format(*sys.version_info[:2]), "site-packages"
        )

    def _venv(self, site_tree: str) -> str:
        """A virtual environment whose site-packages is ``site_tree``: links and a pyvenv.cfg.

        Python started through ``bin/python3`` treats the tree as its site-packages, so
        coverage leaves it out of the measurement exactly as it leaves out the controller's.
        """
        exe = os.path.realpath(sys.executable)
        full = _digest(f"{exe}\0{site_tree}".encode())
        env = os.path.join(self.cache, "envs", full[:16])
        self.uses.add(f"envs/{full[:16]}")
        self._record_uses()
        if _marker_is(env, full):
            _touch(os.path.join(env, COMPLETE))
            return env
        work = _work_dir(env)
        os.makedirs(os.path.join(work, "bin"))
        os.symlink(exe, os.path.join(work, "bin", "python3"))
        site = self._venv_site(work)
        os.makedirs(os.path.dirname(site))
        os.symlink(site_tree, site)
        with open(os.path.join(work, "pyvenv.cfg"), "w") as fh:
            fh.write(
                f"home = {os.path.dirname(exe)}\ninclude-system-site-packages = false\n"
                f"version = {platform.python_version()}\n"
            )
        with open(os.path.join(work, COMPLETE), "w") as fh:
            fh.write(full)
        _install(work, env, full)
        return env

    def _build_trees(self, overrides: list[list[str]]) -> dict[str, str]:
        """Put the pending trees together. ``overrides`` are files that changed on the
        controller after they were listed, each with the digest of what was sent instead.
        Stored contents found damaged are all named (:class:`_Damaged`) once every tree was
        tried: the trees that need them stay pending, the others are built."""
        if self.errors:
            raise OSError(f"storing the shipped files failed: {self.errors[0]}")
        changed: dict[str, dict[str, str]] = {}
        for tree_name, rel, digest in overrides:
            changed.setdefault(tree_name, {})[rel] = digest
        damaged: list[str] = []
        for name, tree in sorted(self.pending.items()):
            final = self._tree_dir(tree)
            work = _work_dir(final)
            size = 0
            sound = True
            for rel, listed, _size, executable in tree["files"]:
                digest = changed.get(name, {}).get(rel, listed)
                target = os.path.join(work, *rel.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                copied = self._copy_object(digest, target)
                if copied < 0:
                    sound = False
                    if digest not in damaged:
                        damaged.append(digest)
                    continue
                size += copied
                os.chmod(target, 0o755 if executable else 0o644)
            if not sound:
                shutil.rmtree(work, ignore_errors=True)
                continue
            shared = not tree["per_run"] and name not in changed  # else not what its digest says
            with open(os.path.join(work, SIZE_FILE), "w") as fh:
                fh.write(str(size))
            if shared:
                with open(os.path.join(work, COMPLETE), "w") as fh:
                    fh.write(tree["digest"])
            # a shared tree that another run built meanwhile is kept if its marker is right
            _install(work, final, tree["digest"] if shared else None)
            self.paths[name] = final
            del self.pending[name]
        if damaged:
            raise _Damaged(
                damaged,
                f"the cached file {self._object(damaged[0])} does not match its digest (damaged"
                " or changed since it was stored): it was removed, run again to send it anew",
            )
        return dict(self.paths)

    def _copy_object(self, digest: str, target: str) -> int:
        """Copy a stored object to ``target``, checking it against its digest on the way (the
        one check of its contents a run makes); the bytes copied. A damaged or missing object
        is removed and -1 answered: it is never built from."""
        source = self._object(digest)
        h = hashlib.blake2b(digest_size=16)
        size = 0
        try:
            with open(source, "rb") as src, open(target, "wb") as dst:
                for block in iter(lambda: src.read(1 << 20), b""):
                    h.update(block)
                    dst.write(block)
                    size += len(block)
        except FileNotFoundError:
            return -1
        if h.hexdigest() != digest:
            with contextlib.suppress(OSError):
                os.unlink(source)
            return -1
        return size

    def _run_child(self, path: object) -> str | None:
        """``path`` if it is a directory (not a link) directly in this run's directory: the
        only places ``fetch`` reads and ``cleanup`` removes, whatever the controller sends."""
        if not self.run or not isinstance(path, str) or "\x00" in path:
            return None
        parent, name = os.path.split(path)
        if parent != self.run_dir or name in ("", ".", ".."):
            return None
        try:
            return path if stat.S_ISDIR(os.lstat(path).st_mode) else None
        except OSError:
            return None

    def fetch(self, msg: dict[str, Any]) -> list[tuple[str, bytes]]:
        """The regular files matching ``pattern`` (a name pattern) in a worker's directory of
        this run; a directory anywhere else is refused."""
        directory = self._run_child(msg.get("dir"))
        if directory is None:
            raise Refused(f"not a worker directory of this run: {msg.get('dir')!r:.200}")
        pattern = msg.get("pattern", ".coverage.*")
        if not isinstance(pattern, str) or "/" in pattern:
            raise Refused(f"not a file name pattern: {pattern!r:.200}")
        out = []
        for name in sorted(os.listdir(directory)):
            if not fnmatch.fnmatchcase(name, pattern):
                continue
            try:
                fd = os.open(os.path.join(directory, name), os.O_RDONLY | _OPEN_FLAGS)
            except OSError:  # a link (O_NOFOLLOW), or gone
                continue
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    continue
                if st.st_size > FETCH_MAX:
                    raise Refused(
                        f"the data file {name} is {st.st_size} bytes, more than the"
                        f" {FETCH_MAX >> 20} MiB a fetch takes"
                    )
                out.append((name, fh.read(FETCH_MAX)))
        return out

    def cleanup(self, msg: dict[str, Any]) -> dict[str, int]:
        """Remove this run's directory (and first the worker directories named, which must be
        in it; others are ignored and counted)."""
        self._release_cache()
        run_dir = self.run_dir
        if not self.run:
            return {"removed": 0, "ignored": 0}
        if msg.get("keep"):
            # The controller could not write the combined data: the workers' directories in
            # this run's directory are what it names for recovery. Without its lock file the
            # next run leaves it to the age rule (a day) instead of removing it at once.
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(run_dir, LOCK_NAME))
            return {"removed": 0, "ignored": 0}
        removed = ignored = 0
        dirs = msg.get("dirs")
        for path in dirs if isinstance(dirs, list) else []:
            child = self._run_child(path)
            if child is None:
                ignored += 1
                continue
            shutil.rmtree(child, ignore_errors=True)
            removed += 1
        if os.path.isdir(run_dir) and not os.path.islink(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
            removed += 1
        return {"removed": removed, "ignored": ignored}


def serve(channel: Any) -> None:
    os.umask(0o077)  # everything the agent makes is its user's alone
    agent = Agent()
    while True:
        msg = channel.receive()
        if msg is None:
            return
        op = msg["op"]
        if op == "blobs":  # streamed without answers; a failure is reported by "build"
            try:
                agent.blobs(msg)
            except Exception as exc:
                agent.errors.append(f"{type(exc).__name__}: {exc}")
            continue
        # Every answer carries its request's id: an answer that comes after the controller
        # gave up waiting is then never taken for the answer to the next request.
        ident = msg.get("id")
        try:
            if op == "ping":
                result: Any = "pong"
            else:
                result = getattr(agent, op)(msg)
        except Refused as exc:
            channel.send({"error": str(exc), "id": ident})
            continue
        except Exception as exc:  # answered as an error, so the controller can name it
            channel.send({"error": f"{type(exc).__name__}: {exc}", "id": ident})
            continue
        channel.send({"ok": result, "id": ident})


if __name__ == "__channelexec__":
    serve(channel)  # type: ignore[name-defined]  # noqa: F821

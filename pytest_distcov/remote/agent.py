"""The agent that runs on a remote host, over pytest-distcov's own execnet gateway (stdlib only).

execnet sends this module's source to the host and runs it there as ``__channelexec__``; the host
has nothing but a Python, so this file imports the standard library only and nothing of its own
package. It serves requests on its channel until it receives ``None``:

``setup``      describe the host (hostname, Python, standard library, cache) and which trees
               its cache already holds complete
``manifests``  take the file lists of the trees to build; answer which contents are missing
``blobs``      store file contents by digest (no answer: the controller streams them)
``build``      put the trees together from the stored contents; answer their paths
``fetch``      read the coverage data files a worker left in a directory (crash recovery)
``cleanup``    remove this run's directories
``ping``       answer ``pong`` (is the host still there?)

The cache lives in ``$XDG_CACHE_HOME/pytest-distcov`` (default ``~/.cache/pytest-distcov``):
``objects/`` holds file contents by digest, ``trees/<digest>`` the shared package trees and
``runs/<run id>`` the per-run copies of the project and the workers' data directories, removed at
the end of the run. While the agent lives (as long as the run's gateway) it holds a shared
``flock`` on ``runs/<run id>/distcov.lock``; the next run's agent removes every run directory
whose lock nobody holds (its run was killed), as ``pytest_distcov/tempdirs.py`` does locally
(a run directory without a lock file is removed after a day).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.metadata
import os
import platform
import shutil
import sys
import time
from typing import Any

RUN_MAX_AGE = 24 * 3600.0
#: As tempdirs.LOCK_NAME (this module imports nothing of its package).
LOCK_NAME = "distcov.lock"


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.realpath(os.path.join(base, "pytest-distcov"))


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


class Agent:
    def __init__(self) -> None:
        self.cache = _cache_dir()
        self.run = ""
        self.lock: int | None = None  # held for the agent's life
        self.pending: dict[str, dict[str, Any]] = {}  # tree name -> tree (with files)
        self.paths: dict[str, str] = {}
        self.errors: list[str] = []  # from blobs, which get no answer of their own

    def _object(self, digest: str) -> str:
        return os.path.join(self.cache, "objects", digest[:2], digest)

    def _tree_dir(self, tree: dict[str, Any]) -> str:
        if tree["per_run"]:
            return os.path.join(self.cache, "runs", self.run, tree["name"])
        return os.path.join(self.cache, "trees", tree["digest"])

    def setup(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.run = msg["run"]
        run_dir = os.path.join(self.cache, "runs", self.run)
        os.makedirs(run_dir, exist_ok=True)
        self.lock = _hold(run_dir)
        removed = _prune_runs(self.cache, run_dir)
        have = []
        for tree in msg["trees"]:
            path = self._tree_dir(tree)
            if not tree["per_run"] and os.path.exists(os.path.join(path, ".distcov-complete")):
                have.append(tree["name"])
                self.paths[tree["name"]] = path
                os.utime(path)  # in use: keeps it from any pruning by age
        return {
            "host": platform.node(),
            "python": platform.python_version(),
            "version": list(sys.version_info[:2]),
            "executable": sys.executable,
            "stdlib": [p for p in sys.path if p and _is_stdlib(p)],
            "site": [p for p in sys.path if p and not _is_stdlib(p) and os.path.isdir(p)],
            "cache": self.cache,
            "run_dir": os.path.join(self.cache, "runs", self.run),
            "have": have,
            "removed": removed,
            "has_packages": _has_versions(msg.get("versions") or {}),
        }

    def manifests(self, msg: dict[str, Any]) -> list[str]:
        """The digests this host has no sound copy of (a stored object of the wrong size, from
        an interrupted or damaged write, counts as missing and is sent again)."""
        missing: set[str] = set()
        for tree in msg["trees"]:
            self.pending[tree["name"]] = tree
            for _rel, digest, size, _exe in tree["files"]:
                try:
                    sound = os.stat(self._object(digest)).st_size == size
                except OSError:
                    sound = False
                if not sound:
                    missing.add(digest)
        return sorted(missing)

    def blobs(self, msg: dict[str, Any]) -> None:
        for digest, content in msg["items"]:
            if hashlib.blake2b(content, digest_size=16).hexdigest() != digest:
                raise OSError(f"a shipped file arrived damaged (digest {digest})")
            target = self._object(digest)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.{os.getpid()}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(content)
            os.replace(tmp, target)

    def build(self, msg: dict[str, Any]) -> dict[str, str]:
        paths = self._build_trees(msg.get("overrides") or [])
        site = msg.get("site_tree")
        if site and site in paths:
            env = self._venv(paths[site])
            paths["venv-python"] = os.path.join(env, "bin", "python3")
            paths["venv-site"] = self._venv_site(env)
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
        key = hashlib.blake2b(f"{exe}\0{site_tree}".encode(), digest_size=8).hexdigest()
        env = os.path.join(self.cache, "envs", key)
        if os.path.exists(os.path.join(env, "pyvenv.cfg")):
            return env
        work = f"{env}.{os.getpid()}.building"
        shutil.rmtree(work, ignore_errors=True)
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
        if os.path.exists(env):
            shutil.rmtree(work, ignore_errors=True)
        else:
            os.replace(work, env)
        return env

    def _build_trees(self, overrides: list[list[str]]) -> dict[str, str]:
        """Put the pending trees together. ``overrides`` are files that changed on the
        controller after they were listed, each with the digest of what was sent instead."""
        if self.errors:
            raise OSError(f"storing the shipped files failed: {self.errors[0]}")
        changed: dict[str, dict[str, str]] = {}
        for tree_name, rel, digest in overrides:
            changed.setdefault(tree_name, {})[rel] = digest
        for name, tree in sorted(self.pending.items()):
            final = self._tree_dir(tree)
            work = f"{final}.{os.getpid()}.building"
            shutil.rmtree(work, ignore_errors=True)
            for rel, listed, _size, executable in tree["files"]:
                digest = changed.get(name, {}).get(rel, listed)
                target = os.path.join(work, *rel.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(self._object(digest), target)
                os.chmod(target, 0o755 if executable else 0o644)
            os.makedirs(work, exist_ok=True)
            if not tree["per_run"] and name not in changed:  # else not what its digest says
                with open(os.path.join(work, ".distcov-complete"), "w") as fh:
                    fh.write(tree["digest"])
            if os.path.exists(final):  # another run built the same tree meanwhile
                shutil.rmtree(work, ignore_errors=True)
            else:
                os.makedirs(os.path.dirname(final), exist_ok=True)
                os.replace(work, final)
            self.paths[name] = final
        self.pending.clear()
        return dict(self.paths)

    def fetch(self, msg: dict[str, Any]) -> list[tuple[str, bytes]]:
        out = []
        for path in sorted(glob.glob(os.path.join(msg["dir"], msg.get("pattern", "*")))):
            if os.path.isfile(path):
                with open(path, "rb") as fh:
                    out.append((os.path.basename(path), fh.read()))
        return out

    def cleanup(self, msg: dict[str, Any]) -> int:
        run_dir = os.path.join(self.cache, "runs", self.run)
        if msg.get("keep"):
            # The controller could not write the combined data: the workers' directories in
            # this run's directory are what it names for recovery. Without its lock file the
            # next run leaves it to the age rule (a day) instead of removing it at once.
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(run_dir, LOCK_NAME))
            return 0
        removed = 0
        for path in [*msg.get("dirs", []), run_dir]:
            if path and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed


def serve(channel: Any) -> None:
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
        try:
            if op == "ping":
                result: Any = "pong"
            else:
                result = getattr(agent, op)(msg)
        except Exception as exc:  # answered as an error, so the controller can name it
            channel.send({"error": f"{type(exc).__name__}: {exc}"})
            continue
        channel.send({"ok": result})


if __name__ == "__channelexec__":
    serve(channel)  # type: ignore[name-defined]  # noqa: F821

"""``--distcov-remote``: workers on other hosts over ssh, on hosts that have only a python3.

The flow, all in the controller:

1. :func:`parse_hosts` turns ``[N*][user@]host[:port]`` entries (or full execnet ``ssh=`` specs)
   into :class:`HostSpec` values, at option time, so a typo is a usage error before anything
   connects.
2. :class:`Fleet` opens one execnet gateway of its own per host, in parallel, runs the
   :mod:`~pytest_distcov.remote.agent` there, checks the host's Python, and ships the
   :class:`~pytest_distcov.remote.shipping.Bundle` (only the contents the host's cache lacks). Every
   failure becomes one :class:`RemoteError` line naming the host and what to do.
3. :class:`RemoteHooks` hands the hosts to xdist as ``popen`` workers whose Python is a local
   launcher running ssh (``--tx popen//python=...``): xdist schedules, restarts and reports as
   for any worker. :mod:`~pytest_distcov.remote.launch` puts the host's paths into each
   worker's start-up message. The worker then measures and streams like a local one.
4. Paths come home: :meth:`Fleet.path_mapper` maps every path under a shipped tree on the host to
   the controller's own file, for streamed chunks and recovered files alike.
5. A worker that dies leaves its flushed data file on the host; :meth:`Fleet.fetch` brings it
   back through the agent. A host that stops answering keeps what it streamed; its workers are
   restarted on a host that still answers.

What this needs of xdist and execnet beyond their documented API goes through
:mod:`.xdist_door`.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import execnet
import pytest

from pytest_distcov.errors import RemoteError, UntrustedPath, printable
from pytest_distcov.secretnames import looks_private
from pytest_distcov.settings.hosts import HostSpec
from pytest_distcov.settings.options import Settings
from pytest_distcov.tempdirs import HeldDir

from . import agent as remote_agent
from . import launch as remote_worker
from . import xdist_door
from .shipping import Bundle, Tree, build_bundle, digest_bytes

__all__ = ["Fleet", "RemoteError", "RemoteHooks", "start_remote"]

#: Where the controller keeps the digests of the files it ships, in pytest's cache.
HASH_CACHE_KEY = "distcov/shipped-digests"

#: Seconds a host may take to connect, start its Python and answer, before it is given up
#: (``--distcov-remote-timeout`` sets it for a run).
CONNECT_TIMEOUT = 30.0
#: Seconds a running host may take to answer a ping before it counts as unreachable.
PING_TIMEOUT = 5.0
#: Bytes of file contents per message while shipping (execnet's limit is 2 GiB; this keeps
#: memory flat and the channel responsive).
BATCH_BYTES = 8 << 20
#: Distributions whose exact versions on a host mean "it already has everything".
WORKER_DISTS = ("pytest", "pytest-xdist", "execnet", "coverage", "pytest-distcov")

# -- one host -----------------------------------------------------------------------------------


@dataclass
class HostReport:
    """What the header says about a host."""

    hostname: str = ""
    python: str = ""
    executable: str = ""
    files: int = 0  # files the host needs
    shipped_files: int = 0  # file contents sent this time (identical files are sent once)
    shipped_bytes: int = 0
    packages: str = "shipped"  # or "the host's own"
    seconds: float = 0.0
    #: what pruning the host's cache removed at the setup (empty: nothing)
    pruned: dict[str, int] = field(default_factory=dict)


@dataclass
class HostSession:
    spec: HostSpec
    index: int
    gateway: Any = None
    channel: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    trees: dict[str, str] = field(default_factory=dict)  # tree name -> path on the host
    venv_python: str = ""  # the venv made around the shipped site-packages, if any
    venv_site: str = ""
    launcher: str = ""  # the local executable xdist starts as this host's workers' Python
    report: HostReport = field(default_factory=HostReport)
    alive: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: the id of the last request sent: the agent echoes it in the answer
    serial: int = 0

    def request(self, msg: dict[str, Any], timeout: float | None = None) -> Any:
        """Send ``msg`` to the host's agent and wait up to ``timeout`` seconds for its answer.

        A request that timed out may still be answered later; that late answer carries the
        old request's id and is dropped here, never taken for the answer to this one."""
        # Another thread's request (a dead worker's data being fetched) holds the channel: wait
        # no longer than this request's own timeout for it.
        if not self.lock.acquire(timeout=-1 if timeout is None else timeout):
            raise RemoteError(f"{self.spec.label}: busy with another request for {timeout} s")
        try:
            self.serial += 1
            ident = self.serial
            self.channel.send({**msg, "id": ident})
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                reply = self.channel.receive(left)
                late = isinstance(reply, dict) and isinstance(reply.get("id"), int)
                if not (late and reply["id"] < ident):
                    break
        finally:
            self.lock.release()
        if (
            not isinstance(reply, dict)
            or not ({"ok", "error"} & reply.keys())
            or reply.get("id") != ident
        ):
            raise RemoteError(f"{self.spec.label}: a malformed reply from the host: {reply!r:.80}")
        if "error" in reply:
            raise RemoteError(f"{self.spec.label}: {reply['error']}")
        return reply["ok"]


def _connect_error(spec: HostSpec, exc: BaseException) -> str:
    if isinstance(exc, execnet.HostNotFound):
        return (
            f"{spec.label}: ssh could not connect (unknown host, refused key or no route);"
            f" check that `ssh {'-F ' + spec.ssh_config + ' ' if spec.ssh_config else ''}"
            f"{spec.ssh.split()[-1]} true` works without a prompt"
        )
    return (
        f"{spec.label}: connected, but could not start {spec.python!r} there"
        f" ({exc or 'it exited'}); install python3 on the host or point"
        " --distcov-remote-python at an interpreter"
    )


class Fleet:
    """The remote hosts of one run, over pytest-distcov's own gateways."""

    def __init__(
        self,
        hosts: Sequence[HostSpec],
        bundle: Bundle,
        *,
        timeout: float = CONNECT_TIMEOUT,
        engine: str = "auto",
        cache_size: int | None = None,
    ) -> None:
        self.hosts = [HostSession(spec, i + 1) for i, spec in enumerate(hosts)]
        self.bundle = bundle
        self.engine = engine
        self.timeout = timeout
        #: bytes each host's cache may hold (None: never pruned)
        self.cache_size = cache_size
        self.run_id = uuid.uuid4().hex[:12]
        self.group = execnet.Group(execmodel="thread")
        self.versions = _installed_versions()
        self.closed = False
        self.scripts = HeldDir.create("ssh")
        self.scripts_dir = str(self.scripts.path)

    # -- setting up ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to every host and ship what it lacks, all hosts at once."""
        errors: dict[int, str] = {}

        def run(host: HostSession) -> None:
            try:
                self._setup(host)
            except RemoteError as exc:
                errors[host.index] = str(exc)
            except (execnet.HostNotFound, OSError, EOFError, execnet.RemoteError) as exc:
                errors[host.index] = _connect_error(host.spec, exc)
            except execnet.TimeoutError:
                errors[host.index] = (
                    f"{host.spec.label}: no answer within {self.timeout:.0f} s; check that the"
                    " host is up and reachable"
                )

        threads = [threading.Thread(target=run, args=(h,), daemon=True) for h in self.hosts]
        for t in threads:
            t.start()
        deadline = time.monotonic() + self.timeout + 5.0
        for host, t in zip(self.hosts, threads, strict=True):
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive() and host.index not in errors:
                errors[host.index] = (
                    f"{host.spec.label}: no answer within {self.timeout:.0f} s; check that the"
                    " host is up and reachable"
                )
        if errors:
            self.close()
            # one line a host, whatever the host said (see errors.printable)
            raise RemoteError("\n".join(printable(errors[i]) for i in sorted(errors)))

    def _setup(self, host: HostSession) -> None:
        start = time.monotonic()
        host.gateway = self.group.makegateway(host.spec.xspec(id=f"distcov-agent-{host.index}"))
        host.channel = host.gateway.remote_exec(remote_agent)
        info = host.request(
            {
                "op": "setup",
                "run": self.run_id,
                "versions": self.versions,
                "cache_size": self.cache_size,
                "trees": [
                    {"name": t.name, "digest": t.digest, "per_run": t.per_run}
                    for t in self.bundle.trees
                ],
            },
            timeout=self.timeout,
        )
        info = host.info = _setup_answer(host.spec.label, info)
        host.report.pruned = info["pruned"] or {}
        if tuple(info["version"]) != sys.version_info[:2]:
            raise RemoteError(
                f"{host.spec.label} runs Python {info['python']} ({info['executable']}), the"
                f" controller {sys.version.split()[0]}: workers need the same minor version;"
                f" point --distcov-remote-python at a Python {sys.version_info[0]}."
                f"{sys.version_info[1]} on that host"
            )
        trees = self._trees_of(host)
        host.report.packages = "the host's own" if info["has_packages"] else "shipped"
        to_build = [t for t in trees if t.name not in info["have"]]
        self._ship(host, to_build)
        host.report.hostname = info["host"]
        host.report.python = info["python"]
        host.report.executable = info["executable"]
        host.report.files = sum(len(t.files) for t in trees)
        host.report.seconds = time.monotonic() - start

    def _ship(self, host: HostSession, trees: list[Tree]) -> None:
        if trees:
            missing = host.request(
                {
                    "op": "manifests",
                    "trees": [
                        {
                            "name": t.name,
                            "digest": t.digest,
                            "per_run": t.per_run,
                            "files": [f.wire() for f in t.files],
                        }
                        for t in trees
                    ],
                },
                timeout=self.timeout,
            )
            overrides = self._send_contents(host, _digests(host.spec.label, missing, "manifests"))
        else:
            overrides = []
        # build answers with the paths of every tree, built now or found in the cache; or
        # (once) with the stored contents it found damaged: those are sent again
        request = {"op": "build", "site_tree": self.bundle.site_tree, "overrides": overrides}
        paths = host.request({**request, "resend": True}, timeout=None)
        if isinstance(paths, dict) and "damaged" in paths:
            damaged = _digests(host.spec.label, paths["damaged"], "build")
            overrides += self._send_contents(host, damaged)
            paths = host.request({**request, "overrides": overrides}, timeout=None)
        paths = _build_answer(host.spec.label, paths)
        host.venv_python = paths.pop("venv-python", "")
        host.venv_site = paths.pop("venv-site", "")
        host.trees = paths

    def _send_contents(self, host: HostSession, missing: list[str]) -> list[list[str]]:
        """Send the contents the host lacks; return overrides for files that changed since
        they were listed (a log the run itself writes into the project, say): each such
        file is sent as it is now, under its new digest."""
        candidates = self.bundle.blobs()
        overrides: list[list[str]] = []
        batch: list[tuple[str, bytes]] = []
        size = 0

        def add(digest: str, content: bytes) -> None:
            nonlocal batch, size
            batch.append((digest, content))
            size += len(content)
            host.report.shipped_files += 1
            host.report.shipped_bytes += len(content)
            if size >= BATCH_BYTES:
                host.channel.send({"op": "blobs", "items": batch})
                batch, size = [], 0

        for digest in missing:
            if digest not in candidates:
                raise RemoteError(
                    f"{host.spec.label}: the host asked for contents that were never listed"
                    f" ({digest!r:.40})"
                )
            current = [(tree, rel, _read(path)) for tree, rel, path in candidates[digest]]
            sound = next((c for _, _, c in current if digest_bytes(c) == digest), None)
            if sound is not None:
                add(digest, sound)
                continue
            for tree, rel, content in current:  # every copy changed: ship each as it is now
                overrides.append([tree, rel, digest_bytes(content)])
                add(digest_bytes(content), content)
        if batch:
            host.channel.send({"op": "blobs", "items": batch})
        return overrides

    # -- what xdist and the workers need --------------------------------------------------------

    def xdist_specs(self) -> list[str]:
        """Worker specs for xdist's --tx: one ``popen`` gateway per worker, whose "python" is a
        small local launcher that runs the host's Python over ssh (see :meth:`launcher`)."""
        workers: list[str] = []
        for host in self.hosts:
            host.launcher = host.launcher or self._write_launcher(host)
            workers.extend([f"popen//python={host.launcher}"] * host.spec.count)
        return workers

    def _write_launcher(self, host: HostSession) -> str:
        """A local executable that xdist starts as a worker's Python: it runs ``ssh HOST``
        with the host's Python (the venv's, when one was made), in the copy of the
        invocation directory, with the shipped packages on PYTHONPATH, and forwards the
        arguments execnet gives. To xdist this is a local ``popen`` worker: it passes the
        command line through unchanged, and ends the worker like a local process (so a host
        that vanished cannot break the end of the session)."""
        path = os.path.join(self.scripts_dir, f"ssh-{host.index}")
        python = host.venv_python or host.spec.python
        in_venv = self.bundle.site_tree if host.venv_python else None
        pythonpath = ":".join(
            host.trees[t.name]
            for t in self.bundle.packages
            if t.name in host.trees and t.name != in_venv
        )
        cwd = self.host_path(host, os.getcwd()) or "."
        prefix = f"cd {shlex.quote(cwd)} && "
        if pythonpath:
            prefix += f"PYTHONPATH={shlex.quote(pythonpath)} "
        prefix += f"exec {shlex.quote(python)} "
        ssh = ["ssh"]
        if host.spec.ssh_config:
            ssh += ["-F", host.spec.ssh_config]
        ssh += shlex.split(host.spec.ssh)
        script = (
            f"#!{sys.executable}\n"
            "# pytest-distcov: start a worker's Python on a remote host (made for one run)\n"
            "import os, shlex, sys\n"
            f"ssh = {ssh!r}\n"
            f"command = {prefix!r} + ' '.join(shlex.quote(a) for a in sys.argv[1:])\n"
            "os.execvp(ssh[0], [*ssh, command])\n"
        )
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(script)
        os.chmod(path, 0o700)
        return path

    def host_for_launcher(self, python: str | None) -> HostSession | None:
        return next((h for h in self.hosts if h.launcher and h.launcher == python), None)

    def _pairs(self, host: HostSession) -> list[tuple[str, str]]:
        """(path on the host, local path), longest first."""
        pairs: list[tuple[str, str]] = []
        for tree in self._trees_of(host):
            remote = host.trees.get(tree.name)
            if remote:
                pairs.extend(tree.path_map(remote))
        return sorted(pairs, key=lambda p: len(p[0]), reverse=True)

    def host_path(self, host: HostSession, local: str) -> str:
        """Where a local path (under a shipped tree) lives on the host, or ""."""
        for remote, here in sorted(self._pairs(host), key=lambda p: len(p[1]), reverse=True):
            if local == here or local.startswith(here + os.sep):
                return remote + local[len(here) :].replace(os.sep, "/")
        return ""

    def worker_sys_path(self, host: HostSession) -> list[list[str]]:
        """The worker's sys.path on the host, as ["path", p] entries."""
        out: list[list[str]] = []
        for entry in self.bundle.sys_path:
            if entry.kind == "cwd":
                out.append(["path", ""])
            elif entry.kind == "stdlib":  # as the agent found it, run by the same interpreter
                out.extend(["path", p] for p in host.info["stdlib"] if ["path", p] not in out)
            elif entry.tree == self.bundle.site_tree and host.venv_site:
                out.append(["path", host.venv_site])
            elif entry.tree in host.trees:
                base = host.trees[entry.tree]
                out.append(["path", f"{base}/{entry.sub}" if entry.sub else base])
            elif host.info.get("has_packages"):  # the host's own site-packages instead
                out.extend(["path", p] for p in host.info["site"] if ["path", p] not in out)
        return out

    def worker_input(self, host: HostSession) -> dict[str, Any]:
        project = self.bundle.project
        return {
            "sys_path": self.worker_sys_path(host),
            "args_map": [[project.local, host.trees.get(project.name, "")]],
            "basetemp": f"{host.info['run_dir']}/basetemp",
            # the worker's data directory goes in the run's, which the agent holds
            "tmp_parent": host.info["run_dir"],
            # as resolved here, so that a choice made by the environment holds there too
            "engine": self.engine,
            # a core chosen by the environment here (ssh carries no environment): the header
            # names it, so the hosts measure with it too ('' for none)
            "coverage_core": os.environ.get(remote_worker.COVERAGE_CORE_ENV, ""),
        }

    def path_mapper(self, host: HostSession) -> Callable[[str], str]:
        """A host's paths made local: one naming a file shipped to it becomes the local file it
        was shipped from; any other is refused (:class:`UntrustedPath`).

        A host's data is input from another machine. A path outside the trees shipped to it
        (``/etc/passwd``, or a tree's path followed by ``/../..``) would pull a local file this
        machine can read into a report or an upload; so would a path inside a tree that names
        a local file which was not shipped (a secret left out, ``.git/config``, a link out of
        the tree). A path under a tree with no local file (a module a test wrote on the host)
        is kept, unless its name looks private (:func:`looks_private`): nothing here is read
        now, but a later report must not find a secret there either. A relative path
        (coverage's ``relative_files``) stays relative, and must name a shipped file wherever
        coverage.py would look it up. With the host's own site-packages, a ``.py`` file under
        one of the host's ``site-packages`` or ``dist-packages`` directories is kept as the
        host named it when no such file is here, or when it is one of this machine's own
        installed packages (the host says which directories those are: its word alone must
        not open any local file).
        """
        pairs = self._pairs(host)
        name = printable(host.spec.label)
        shipped = self._shipped(host)
        sites = [
            s.rstrip("/")
            for s in (host.info.get("site") or [])
            if host.info.get("has_packages")
            and isinstance(s, str)
            and s.startswith("/")
            and {"site-packages", "dist-packages"} & set(s.split("/"))
            and os.path.normpath(s) == s.rstrip("/")
        ]

        own_sites = _local_site_dirs() if sites else ()

        def here(path: str, local: str) -> str:
            if local in shipped or not os.path.lexists(local):
                return path
            raise UntrustedPath(
                f"it names {path!r:.200} from {name}, a file here that was not shipped to it"
            )

        def private(path: str) -> UntrustedPath:
            return UntrustedPath(
                f"it names {path!r:.200} from {name}, a file that looks like a secret (a key, a"
                " credentials or environment file, version control's own files)"
            )

        def map_path(path: str) -> str:
            if not path.startswith("/"):
                rel = os.path.normpath(path)
                if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
                    raise UntrustedPath(f"it names {path!r:.200}, which leads out of its root")
                if looks_private(rel.replace(os.sep, "/")):
                    raise private(path)
                # coverage.py looks a relative name up in the current directory and then in
                # each sys.path entry (canonical_filename): each file it could read is checked
                found = False
                for base in ["", *(p for p in sys.path if isinstance(p, str))]:
                    candidate = os.path.abspath(os.path.join(base, rel))
                    if os.path.lexists(candidate):
                        here(rel, os.path.normpath(candidate))
                        found = True
                if not found:  # a later report, from elsewhere, could find something else
                    raise UntrustedPath(
                        f"it names {path!r:.200} from {name}, a relative name of no file"
                        " shipped to it"
                    )
                return rel
            for remote, local in pairs:
                if path == remote or path.startswith(remote + "/"):
                    mapped = os.path.normpath(local + path[len(remote) :].replace("/", os.sep))
                    if mapped == local or mapped.startswith(local.rstrip(os.sep) + os.sep):
                        inside = os.path.relpath(mapped, local).replace(os.sep, "/")
                        if looks_private(inside):
                            raise private(path)
                        return here(mapped, mapped)
                    break
            if path.endswith(".py") and os.path.normpath(path) == path:
                for site in sites:
                    if path.startswith(site + "/") and _public_package(path, own_sites):
                        return path
            raise UntrustedPath(
                f"it names {path!r:.200} on {name}, outside the trees shipped to that host"
            )

        return map_path

    def _trees_of(self, host: HostSession) -> list[Tree]:
        """The trees shipped to ``host``: the project alone where it has its own packages.
        Chosen here, never taken from the names the host's answers hold."""
        return [self.bundle.project] if host.info.get("has_packages") else list(self.bundle.trees)

    def _shipped(self, host: HostSession) -> frozenset[str]:
        """The local paths of every file shipped to ``host``."""
        return frozenset(
            os.path.normpath(tree.local_path(f.rel))
            for tree in self._trees_of(host)
            if tree.name in host.trees
            for f in tree.files
        )

    # -- while and after the run ----------------------------------------------------------------

    def ping(self, host: HostSession) -> bool:
        if host.lock.locked():
            # A request is under way (a dead worker's data being fetched, which the controller
            # started only after a ping of its own just now): that answer stands.
            return host.alive
        if host.alive:
            try:
                host.alive = host.request({"op": "ping"}, timeout=PING_TIMEOUT) == "pong"
            except (OSError, EOFError, RemoteError, execnet.TimeoutError, execnet.RemoteError):
                host.alive = False
        return host.alive

    def fetch(self, host: HostSession, directory: str) -> list[tuple[str, bytes]]:
        """The coverage data files a worker left in ``directory`` on the host."""
        reply = host.request(
            {"op": "fetch", "dir": directory, "pattern": ".coverage.*"}, timeout=120.0
        )
        # What a host sends is input from a stranger: plain names of coverage data files (no
        # directory part, so nothing is written outside the recovery directory) and bytes.
        files: list[tuple[str, bytes]] = []
        for item in reply if isinstance(reply, list) else [reply]:
            name, content = (
                item if isinstance(item, (list, tuple)) and len(item) == 2 else ("", b"")
            )
            if not (
                isinstance(name, str)
                and name.startswith(".coverage.")
                and os.path.basename(name) == name
                and "\x00" not in name
                and isinstance(content, bytes)
            ):
                raise RemoteError(
                    f"{host.spec.label}: the fetch's reply is malformed: {item!r:.80}"
                )
            files.append((name, content))
        return files

    def close(self, leftovers: dict[str, list[str]] | None = None, *, keep: bool = False) -> None:
        """Stop the hosts; they remove this run's directories, or with ``keep`` leave them
        (the combined data could not be written: the workers' data there is still needed)."""
        if self.closed:
            return
        self.closed = True
        for host in self.hosts:
            if host.channel is not None and host.alive:
                dirs = (leftovers or {}).get(host.spec.label, [])
                try:
                    request = {"op": "cleanup", "dirs": dirs, "keep": keep}
                    host.request(request, timeout=PING_TIMEOUT)
                    host.channel.send(None)
                except (OSError, EOFError, RemoteError, execnet.TimeoutError, execnet.RemoteError):
                    pass
        self.group.terminate(timeout=PING_TIMEOUT)
        shutil.rmtree(self.scripts_dir, ignore_errors=True)
        self.scripts.release()


#: The setup answer's fields and their types ("str list": a list of strings).
SETUP_FIELDS = {
    "host": "str",
    "python": "str",
    "version": "int list",
    "executable": "str",
    "stdlib": "str list",
    "site": "str list",
    "cache": "str",
    "run_dir": "str",
    "have": "str list",
    "removed": "int",
    "has_packages": "bool",
    "pruned": "counts",
}


def _is(value: object, kind: str) -> bool:
    if kind == "str":
        return type(value) is str
    if kind == "int":
        return type(value) is int and value >= 0
    if kind == "bool":
        return type(value) is bool
    if kind == "counts":  # None, or names to whole numbers
        return value is None or (
            type(value) is dict and all(_is(k, "str") and _is(v, "int") for k, v in value.items())
        )
    return type(value) is list and all(_is(v, kind.removesuffix(" list")) for v in value)


def _setup_answer(label: str, info: object) -> dict[str, Any]:
    """The host's setup answer, checked: what a host says is input from a stranger, and a
    field of the wrong type would otherwise fail far from here (or be trusted as a path)."""
    if type(info) is not dict:
        raise RemoteError(f"{label}: a malformed setup answer from the host: {info!r:.80}")
    for name, kind in SETUP_FIELDS.items():
        if not _is(info.get(name), kind):
            raise RemoteError(
                f"{label}: a malformed setup answer from the host: {name} is"
                f" {info.get(name)!r:.60}, not a {kind}"
            )
    if len(info["version"]) != 2 or not info["run_dir"].startswith("/"):
        raise RemoteError(
            f"{label}: a malformed setup answer from the host: version {info['version']!r:.40},"
            f" run_dir {info['run_dir']!r:.80}"
        )
    return info


def _digests(label: str, value: object, op: str) -> list[str]:
    if not _is(value, "str list"):
        raise RemoteError(f"{label}: a malformed {op} answer from the host: {value!r:.80}")
    assert isinstance(value, list)
    return value


def _build_answer(label: str, value: object) -> dict[str, str]:
    if type(value) is not dict or not all(
        _is(k, "str") and _is(v, "str") for k, v in value.items()
    ):
        raise RemoteError(f"{label}: a malformed build answer from the host: {value!r:.80}")
    return value


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:  # gone since it was listed: it is shipped empty
        return b""


def _installed_versions() -> dict[str, str]:
    import importlib.metadata

    out = {}
    for dist in WORKER_DISTS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return {}
    return out


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def _pruned(counts: dict[str, int]) -> str:
    """``cache pruned to 1.9 GiB (removed 12 trees, 400 files)``."""
    parts = []
    for key, one, many in (
        ("trees", "tree", "trees"),
        ("envs", "environment", "environments"),
        ("objects", "file", "files"),
        ("leftovers", "leftover of an interrupted build", "leftovers of interrupted builds"),
    ):
        n = counts.get(key, 0)
        if n:
            parts.append(f"{n} {one if n == 1 else many}")
    return f"cache pruned to {_size(counts.get('size', 0))} (removed {', '.join(parts)})"


# -- the pytest side ----------------------------------------------------------------------------


class RemoteHooks:
    """xdist hooks for remote workers; registered in the controller only when hosts are given."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.worker_hosts: dict[str, HostSession] = {}  # worker id -> host
        self.notes: list[str] = []
        # host label -> directories of dead workers to remove there at the end
        self.leftovers: dict[str, list[str]] = {}
        #: why a dead host's workers cannot be moved to another host ('' when they can)
        self.reroute_obstacle = xdist_door.reroute_obstacle()

    def configure_xdist(self, config: pytest.Config) -> None:
        """Add the hosts to xdist's options (before xdist reads them in its configure)."""
        workers = self.fleet.xdist_specs()
        config.option.tx = [*(config.getoption("tx", None) or []), *workers]
        if config.getoption("dist", "no") == "no":
            config.option.dist = "load"
        if config.getoption("maxworkerrestart", None) is None:
            # xdist restarts --tx workers without limit by default; a broken host would
            # otherwise make it start workers forever.
            config.option.maxworkerrestart = str(2 * len(config.option.tx))

    def pytest_report_header(self) -> list[str]:
        lines = [
            f"distcov: not shipped to the hosts (not a directory on sys.path): {entry}"
            for entry in self.fleet.bundle.skipped
        ]
        bundle = self.fleet.bundle
        if bundle.secrets:
            n = len(bundle.secrets)
            lines.append(
                f"distcov: {n} file{'s' if n != 1 else ''} that look{'s' if n == 1 else ''} like"
                " secrets (.env*, *.pem, *.key, id_*, .netrc, .pypirc, .git-credentials, .ssh/,"
                " .aws/) not shipped to the hosts; name them in the distcov_remote_include ini"
                " list to ship them"
            )
        if bundle.outside_links:
            n = len(bundle.outside_links)
            lines.append(
                f"distcov: {n} symbolic link{'s' if n != 1 else ''} pointing outside the shipped"
                " trees not shipped to the hosts (links are not followed out of a tree)"
            )
        if bundle.unused_include:
            lines.append(
                "distcov: distcov_remote_include patterns that matched no file that looks like a"
                f" secret (they include nothing): {', '.join(bundle.unused_include)}"
            )
        for host in self.fleet.hosts:
            r = host.report
            shipped = (
                f"shipped {r.shipped_files} new file contents ({_size(r.shipped_bytes)})"
                f" of {r.files} files"
                if r.shipped_files
                else f"nothing new to ship ({r.files} files cached there)"
            )
            packages = "" if r.packages == "shipped" else ", using the host's own packages"
            lines.append(
                f"distcov: host {host.spec.label} ({r.hostname}, Python {r.python}):"
                f" {host.spec.count} worker{'s' if host.spec.count != 1 else ''}; {shipped}"
                f"{packages}; set up in {r.seconds:.1f} s"
            )
            if r.pruned:
                lines.append(f"distcov: host {host.spec.label}: {_pruned(r.pruned)}")
        if self.reroute_obstacle:
            lines.append(
                "distcov: the workers of a host that stops answering stay on that host"
                f" ({self.reroute_obstacle})"
            )
        # a host's name and Python version are what the host said: one printable line each
        return [printable(line) for line in lines]

    def pytest_configure_node(self, node: Any) -> None:
        host = self.fleet.host_for_launcher(xdist_door.worker_python(node))
        if host is not None:
            node.workerinput["distcov_remote"] = self.fleet.worker_input(host)
            self.worker_hosts[node.gateway.id] = host

    def pytest_xdist_getremotemodule(self) -> Any:
        return remote_worker

    def host_of(self, worker_id: str) -> HostSession | None:
        return self.worker_hosts.get(worker_id)

    def pytest_unconfigure(self) -> None:
        self.fleet.close()

    def pytest_internalerror(self, excinfo: pytest.ExceptionInfo[BaseException]) -> bool | None:
        """A remote worker that cannot start (its host went away after the setup, say): one
        line instead of execnet's traceback. Other internal errors are left alone."""
        exc = excinfo.value
        from_execnet = any("execnet" in str(entry.path) for entry in excinfo.traceback)
        if not (from_execnet and isinstance(exc, (OSError, EOFError))):
            return None
        hosts = ", ".join(h.spec.label for h in self.fleet.hosts)
        sys.stderr.write(
            f"distcov: a remote worker could not be started or reached ({exc}); check the"
            f" hosts ({hosts}) and the lines above\n"
        )
        return True

    @pytest.hookimpl(trylast=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """A worker on an unreachable host is restarted on a host that still answers."""
        host = self.worker_hosts.get(node.gateway.id)
        if host is None or not error or self.fleet.ping(host):
            return
        live = [h for h in self.fleet.hosts if self.fleet.ping(h)]
        if not live:
            raise pytest.exit(
                "distcov: every remote host is unreachable; the coverage streamed so far is"
                " kept (see the summary)",
                returncode=pytest.ExitCode.INTERRUPTED,
            )
        if self.reroute_obstacle:
            note = (
                f"host {host.spec.label} is unreachable: its workers cannot be moved to another"
                f" host ({self.reroute_obstacle}); xdist restarts them there, up to"
                " --maxworkerrestart"
            )
            if note not in self.notes:
                self.notes.append(note)
            return
        target = min(live, key=lambda h: sum(1 for w in self.worker_hosts.values() if w is h))
        xdist_door.reroute(node, target.launcher)
        note = f"host {host.spec.label} is unreachable: its workers continue on {target.spec.label}"
        if note not in self.notes:
            self.notes.append(note)


def start_remote(config: pytest.Config, settings: Settings) -> RemoteHooks:
    """Ship to every host and hand them to xdist; a RemoteError names each failed host."""
    cache = getattr(config, "cache", None)
    known = cache.get(HASH_CACHE_KEY, None) if cache is not None else None
    bundle, digests = build_bundle(
        str(config.rootpath),
        extra_ignores=settings.remote_ignore,
        include=settings.remote_include,
        hash_cache=known if isinstance(known, dict) else None,
    )
    if cache is not None:
        cache.set(HASH_CACHE_KEY, digests)
    root = bundle.project.local
    if not _inside_root(os.getcwd(), root):
        raise RemoteError(
            f"--distcov-remote: run pytest from inside the rootdir ({root}): the workers start"
            " in the same place in its copy"
        )
    here = os.path.relpath(os.path.realpath(os.getcwd()), root).replace(os.sep, "/")
    if here != "." and not any(f.rel.startswith(here + "/") for f in bundle.project.files):
        raise RemoteError(
            f"--distcov-remote: the current directory {here} is not shipped (.gitignore or"
            " distcov_remote_ignore leaves out every file in it); run pytest from a shipped"
            f" directory, or from the rootdir {root}"
        )
    fleet = Fleet(
        settings.remote,
        bundle,
        engine=settings.engine,
        timeout=settings.remote_timeout,
        cache_size=settings.remote_cache_size,
    )
    fleet.start()
    hooks = RemoteHooks(fleet)
    hooks.configure_xdist(config)
    return hooks


def _inside_root(path: str, root: str) -> bool:
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep)


@functools.cache
def _local_site_dirs() -> tuple[str, ...]:
    """This machine's own installed-package directories, resolved (each ends with a ``/``)."""
    import site
    import sysconfig

    dirs = [*getattr(site, "getsitepackages", list)(), site.getusersitepackages()]
    dirs += [sysconfig.get_paths().get(k, "") for k in ("purelib", "platlib")]
    return tuple({os.path.realpath(d).rstrip(os.sep) + os.sep for d in dirs if d})


def _public_package(path: str, own_sites: tuple[str, ...]) -> bool:
    """True if no file is at ``path`` here, or if it is one of this machine's own installed
    packages' (under ``own_sites``: read by the report as under a serial run here)."""
    if not os.path.lexists(path):
        return True
    return os.path.realpath(path).startswith(own_sites)

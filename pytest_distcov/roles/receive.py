"""Receiving from workers: the controller's inbox, merged into memory as the tests run.

execnet calls :meth:`Receiver.enqueue` in its receiver thread, which only enqueues; the main
thread drains the inbox between test reports (never waiting for it). Each message is decoded;
a ``hello`` says where the worker's durable data lives (a local worker's directory is held
until its data is recovered or combined); a chunk's paths are mapped to local ones (a remote
worker's) and merged into the :class:`~pytest_distcov.data.merge.Accumulator`, and its Python
files are offered to the parse helper. In verbose mode a progress estimate follows.

What a worker sends is not trusted. A message that :func:`~pytest_distcov.protocol.decode`
refuses is left out whole and named in one error line (one a worker, however many it sends);
the worker's other messages, the other workers' and the controller's own data are kept. As a
refused chunk may have held data, the worker is marked (:attr:`WorkerState.refused`) and the
controller reads its data files at the end, as for a dead worker: the data file a worker leaves
in its directory holds everything it measured, so nothing is lost when that directory is
there. The directory a hello names is taken only when it is that worker's directory of this
run (:class:`~pytest_distcov.tempdirs.RunDirs`); a hello naming any other is refused, and
nothing is held, read or removed there.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import coverage

from pytest_distcov.covapi.parser import exclude_regex
from pytest_distcov.data.merge import Accumulator
from pytest_distcov.data.readers import PathMapper, checked_mapper
from pytest_distcov.engine.measure import Engine, MeasureSpec, open_coverage
from pytest_distcov.errors import DataFileError, ProtocolError, UntrustedPath, printable
from pytest_distcov.protocol import Blobs, Chunk, Hello, decode
from pytest_distcov.remote.fleet import HostSession, RemoteHooks
from pytest_distcov.sinks.parses import ParseCache
from pytest_distcov.sinks.preparse import PreParser
from pytest_distcov.tempdirs import HeldDir, RunDirs

__all__ = ["CHANNEL_CLOSED", "PROGRESS_EVERY", "Receiver", "WorkerState"]

#: Seconds between two progress lines in verbose mode.
PROGRESS_EVERY = 5.0
#: What a worker's channel delivers when it closes.
CHANNEL_CLOSED = ("distcov-channel-closed",)


@dataclass
class WorkerState:
    """The controller's view of one worker."""

    id: str
    #: its last hello that was taken (one naming a directory not of this run is not)
    hello: Hello | None = None
    #: the directory of the hello taken, as checked (a local path, or a path on its host)
    datadir: str | None = None
    finished: bool = False
    #: how many of its messages were refused (its data files are then read at the end)
    refused: int = 0
    #: the paths of its data left out (refused: :meth:`Receiver._left_out`), and why the first
    #: one was
    left_out: set[str] = field(default_factory=set)
    first_left_out: str = ""
    down_error: str | None = None
    tests: int = 0
    notes: list[str] = field(default_factory=list)


class Receiver:
    """The inbox, the workers as their messages describe them, and the in-memory union.

    ``remote``: the hosts (None without ``--distcov-remote``). ``arcs``: the run measures
    branches. ``preparse``: offer the files
    the workers run to the parse helper (parses the report will need; xdist only), whose cache
    ``parse_cache`` gives. ``progress``: where a verbose run's estimates go (None: none).
    """

    def __init__(
        self,
        engine: Engine,
        spec: MeasureSpec,
        remote: RemoteHooks | None,
        *,
        arcs: bool,
        preparse: bool,
        parse_cache: Callable[[], ParseCache | None],
        progress: Callable[[str], None] | None,
    ) -> None:
        self.engine = engine
        self.spec = spec
        self.remote = remote
        plugins = engine.cov.get_option("run:plugins") or []
        names = [str(p) for p in plugins] if isinstance(plugins, list) else []
        self.acc = Accumulator(branch=engine.branch, plugins=names)
        self.inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        #: the blobs of lines and arcs decoded lately (see :class:`Blobs`): the main thread's
        self.blobs = Blobs()
        self.workers: dict[str, WorkerState] = {}
        self.errors: list[str] = []
        #: the directories a worker's hello may name: this run's (see tempdirs.py)
        self.dirs = RunDirs(engine.data_dir.parent)
        #: where in ``errors`` each worker's refusal line is (one a worker)
        self._refusals: dict[str, int] = {}
        self._left_out_lines: dict[str, int] = {}  # worker id -> its line in errors
        #: True while a drain merges (a SIGTERM then waits for it to end)
        self.merging = False
        #: parses the report will need, made while the tests run (see preparse.py)
        self.preparser: PreParser | None = None
        self.arcs = arcs
        self.preparse = preparse
        self.parse_cache = parse_cache
        self.progress = progress
        self._mappers: dict[str, PathMapper] = {}
        #: local workers' directories, held until the end (see tempdirs.py)
        self._held: list[HeldDir] = []
        self._last_progress = time.monotonic()
        self._statements: dict[str, set[int]] = {}
        self._progress_cov: coverage.Coverage | None = None

    def enqueue(self, worker_id: str, message: Any) -> None:
        """Called in execnet's receiver thread: only enqueue there."""
        self.inbox.put((worker_id, message))

    def worker(self, worker_id: str) -> WorkerState:
        return self.workers.setdefault(worker_id, WorkerState(worker_id))

    def host_of(self, worker_id: str) -> HostSession | None:
        """The host a remote worker runs on (None for a local worker)."""
        return self.remote.host_of(worker_id) if self.remote is not None else None

    def drain(self) -> None:
        """Merge everything received so far (main thread); never waits for more."""
        self.merging = True
        try:
            got = self._drain()
            if self.preparser is not None:
                self.preparser.pump()  # never waits; keeps both of the helper's pipes moving
            if got and self.progress is not None:
                self._progress(self.progress)
        finally:
            self.merging = False

    def _drain(self) -> bool:
        got = False
        while True:
            try:
                worker_id, raw = self.inbox.get_nowait()
            except queue.Empty:
                return got
            got = True
            state = self.worker(worker_id)
            if raw is CHANNEL_CLOSED:
                continue
            try:
                msg = decode(raw, self.blobs)
                if msg["worker"] != worker_id:
                    raise ProtocolError(
                        f"a message signed by worker {msg['worker']!r:.40} on its own channel"
                    )
            except ProtocolError as exc:
                hello = isinstance(raw, dict) and raw.get("kind") == "hello"
                self._refuse(state, str(exc), data=not hello)
                continue
            if msg["kind"] == "hello":
                self._hello(state, msg)
            else:
                self._chunk(state, msg)

    def _refuse(self, state: WorkerState, what: str, *, data: bool) -> None:
        """Leave a message out, in one error line a worker. ``data``: the message may have
        held data, which the worker's data files give at the end instead."""
        if data:
            state.refused += 1
        instead = (
            "; its data files are read at the end instead"
            if data and state.datadir is not None
            else ""
        )
        host = self.host_of(state.id)
        who = f"{state.id} on host {host.spec.label}" if host is not None else state.id
        line = printable(f"worker {who} sent {what}; it is left out{instead}")
        index = self._refusals.get(state.id)
        if index is None:
            self._refusals[state.id] = len(self.errors)
            self.errors.append(line)
        elif "more of its messages were refused" not in self.errors[index]:
            self.errors[index] += " (more of its messages were refused)"

    def _left_out(self, state: WorkerState, refused: dict[str, str]) -> None:
        """Files of a worker's data whose paths the mapper refused: one line a worker, naming
        the first and counting the distinct files (the rest of its data is merged)."""
        if not state.left_out:
            state.first_left_out = next(iter(refused.values()))
            self._left_out_lines[state.id] = len(self.errors)
            self.errors.append("")
        before = len(state.left_out)
        state.left_out.update(refused)
        if len(state.left_out) == before:
            return
        count = len(state.left_out)
        files = "1 file" if count == 1 else f"{count} files"
        first = "" if count == 1 else "the first: "
        self.errors[self._left_out_lines[state.id]] = printable(
            f"worker {state.id} sent data for {files} left out ({first}{state.first_left_out})"
        )

    def expect(self, worker_id: str, run: str | None) -> None:
        """The controller gave worker ``worker_id`` the run id ``run`` (see :class:`RunDirs`)."""
        self.dirs.expect(worker_id, run)

    def _checked_dir(self, worker_id: str, datadir: str) -> str | None:
        """The directory a hello names, if it is that worker's of this run (None if not)."""
        host = self.host_of(worker_id)
        if host is not None:
            return self.dirs.remote(worker_id, datadir, host.info.get("run_dir"))
        return self.dirs.hello(worker_id, datadir)

    def _hello(self, state: WorkerState, hello: Hello) -> None:
        datadir = self._checked_dir(state.id, hello["datadir"])
        if datadir is None:
            self._refuse(
                state,
                f"a hello naming {hello['datadir']!r:.200} as its directory, which is not one"
                " of this run's: nothing there is held, read or removed",
                data=False,
            )
            return
        state.hello = hello
        state.datadir = datadir
        self._hold(state.id, datadir)
        state.notes.extend(n for n in hello["notes"] if n not in state.notes)
        if hello["coverage"] != coverage.__version__:
            self.errors.append(
                printable(
                    f"worker {state.id} on {hello['host']} runs coverage {hello['coverage']},"
                    f" the controller {coverage.__version__}: its data may differ; install"
                    " the same coverage version everywhere"
                )
            )

    def _chunk(self, state: WorkerState, chunk: Chunk) -> None:
        mapper = self.mapper(state.id)
        try:
            refused = self.acc.add_payload(chunk["data"], mapper)
        except DataFileError as exc:
            self._refuse(state, str(exc), data=True)
            return
        if refused:
            self._left_out(state, refused)
        python_files = chunk["data"]["touched"].get("", ())  # each named once a worker
        if python_files and self.preparse:
            names = []
            for path in python_files:
                with contextlib.suppress(UntrustedPath):  # left out above
                    names.append(mapper(path))
            self._preparse_files(names)
        state.tests = chunk["tests"]
        state.notes.extend(n for n in chunk["notes"] if n not in state.notes)
        if chunk["kind"] == "final":
            state.finished = True

    def _hold(self, worker_id: str, datadir: str) -> None:
        """Keep a local worker's directory from other runs' cleanup until its data is
        recovered, even if the worker dies."""
        if self.host_of(worker_id) is not None:
            return  # on a remote host, in the run's directory there, held by the host's agent
        held = HeldDir.adopt(datadir)
        if held is not None:
            self._held.append(held)

    def _preparse_files(self, names: list[str]) -> None:
        if self.preparser is None:
            cache = self.parse_cache()
            if cache is None:
                self.preparse = False
                return
            self.preparser = PreParser(
                cache,
                exclude_regex(self.engine.cov),
                arcs=self.arcs,
                relative_files=bool(self.engine.cov.get_option("run:relative_files")),
            )
        self.preparser.offer(names)

    def mapper(self, worker_id: str) -> PathMapper:
        """A worker's paths as the controller's, checked (:func:`checked_mapper`): a remote
        worker's mapped home (:meth:`Fleet.path_mapper`), a local one's as they are."""
        mapper = self._mappers.get(worker_id)
        if mapper is None:
            host = self.host_of(worker_id)
            remote = None
            if self.remote is not None and host is not None:
                remote = self.remote.fleet.path_mapper(host)
            mapper = self._mappers[worker_id] = checked_mapper(remote)
        return mapper

    def _progress(self, say: Callable[[str], None]) -> None:
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_EVERY:
            return
        self._last_progress = now
        if self._progress_cov is None:
            # A data file name that is never written: data_file=None would keep an in-memory
            # database open for the rest of the run.
            self._progress_cov = open_coverage(
                self.spec, data_file=str(self.engine.data_dir / "progress-estimate")
            )
        covered = total = 0
        for path, lines in self.acc.covered_lines().items():
            if path not in self._statements:
                try:
                    statements = self._progress_cov.analysis2(path)[1]
                except Exception:  # not Python, gone, unparsable: leave it out of the estimate
                    statements = []
                self._statements[path] = set(statements)
            total += len(self._statements[path])
            covered += len(lines & self._statements[path])
        if total:
            say(
                f"distcov: {covered} of {total} statements ({100.0 * covered / total:.1f}%)"
                f" in {len(self._statements)} files covered so far"
            )

    def forget_blobs(self) -> None:
        """The run's messages are all in: the decoded blobs go (what the union shares of
        them it keeps)."""
        self.blobs.clear()

    def stop(self) -> None:
        """No more parses for the report: the helper goes (idempotent)."""
        self.preparse = False
        if self.preparser is not None:
            self.preparser.stop()

    def release(self) -> None:
        """Let go of the local workers' directories (what is left in them stays)."""
        for held in self._held:
            held.release()
        self._held.clear()

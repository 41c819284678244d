"""The controller role: owns the merge, saves the combined data file, reports.

Used both for an xdist run (the controller runs no tests; workers stream to it) and for a plain
in-process run (no xdist, or ``-n 0``), which is the same thing with no workers.

Data reaching the final data file, all as a union (so nothing counted twice can distort it):

1. the controller's own engine (conftest hooks that run in the controller; every test in an
   in-process run);
2. chunks streamed by workers, merged in memory as they arrive (:class:`~.merge.Accumulator`);
3. the durable data files of workers that went down without their final message, and data
   files of measured subprocesses.

The data file is written atomically at session end, so neither a bad run nor a crash damages an
existing one.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import shutil
import signal
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import coverage
import pytest
from coverage.exceptions import CoverageException

from pytest_distcov.covapi.parser import exclude_regex
from pytest_distcov.data.journal import JOURNAL_SUFFIX
from pytest_distcov.data.merge import Accumulator, write_data_file
from pytest_distcov.data.readers import PathMapper, read_data_file, update_from_file
from pytest_distcov.engine.measure import Engine, MeasureSpec, open_coverage
from pytest_distcov.errors import (
    DataFileError,
    DistCovError,
    NothingToReport,
    ProtocolError,
    ReportError,
    SettingsError,
)
from pytest_distcov.protocol import Chunk, Hello, decode
from pytest_distcov.remote.fleet import HostSession, RemoteHooks
from pytest_distcov.settings.options import Settings
from pytest_distcov.sinks.parses import ParseCache
from pytest_distcov.sinks.preparse import PreParser
from pytest_distcov.sinks.report import (
    configured_fail_under,
    judge_fail_under,
    precision_of,
    produce_reports,
)
from pytest_distcov.sinks.store import open_store, write_shard
from pytest_distcov.tempdirs import HeldDir, sweep

__all__ = ["ControllerRole", "OutputPlan", "SigtermStop", "XdistControllerHooks"]

#: Seconds between two progress lines in verbose mode.
PROGRESS_EVERY = 5.0
#: Seconds the end of the run waits for a dead remote worker's data still being fetched (the
#: fetch's own timeout, plus the ping before it).
FETCH_WAIT = 130.0

_CHANNEL_CLOSED = ("distcov-channel-closed",)

#: Exit codes after which pytest calls pytest_terminal_summary (where we normally finish).
_SUMMARY_EXIT_CODES = (
    pytest.ExitCode.OK,
    pytest.ExitCode.TESTS_FAILED,
    pytest.ExitCode.INTERRUPTED,
    pytest.ExitCode.USAGE_ERROR,
    pytest.ExitCode.NO_TESTS_COLLECTED,
)


@dataclass(frozen=True)
class OutputPlan:
    """Where the combined data goes and how it is judged, validated before any test runs."""

    data_file: Path
    fail_under: float | None
    precision: int
    branch: bool
    source_desc: str

    @classmethod
    def make(cls, settings: Settings, spec: MeasureSpec) -> OutputPlan:
        probe = open_coverage(spec)
        data_file = Path(os.path.abspath(str(probe.get_option("run:data_file"))))
        branch = bool(probe.get_option("run:branch"))
        fail_under = settings.fail_under
        if fail_under is None:
            fail_under = configured_fail_under(probe)
        if settings.append and data_file.exists():
            existing = read_data_file(data_file)
            try:
                mismatch = bool(existing.measured_files()) and existing.has_arcs() != branch
                kind = "branch" if existing.has_arcs() else "line"
            finally:
                existing.close(force=True)
            if mismatch:
                raise SettingsError(
                    f"--distcov-append: {data_file} holds {kind} data but this run measures"
                    f" {'branches' if branch else 'lines only'}; remove the file or match"
                    " the branch setting"
                )
        source = probe.get_option("run:source") or []
        assert isinstance(source, list)
        source_desc = (
            ", ".join(str(s) for s in source) or "all code outside the stdlib and site-packages"
        )
        return cls(data_file, fail_under, precision_of(probe), branch, source_desc)


@dataclass
class WorkerState:
    id: str
    hello: Hello | None = None
    finished: bool = False
    down_error: str | None = None
    tests: int = 0
    notes: list[str] = field(default_factory=list)


class _AppendUnreadable(Exception):
    """The file named by --distcov-append cannot be read at the end of the run."""


def _reason(exc: BaseException) -> str:
    """An exception as a reason in a sentence: its text, with its kind when that says more."""
    if isinstance(exc, (OSError, DistCovError, CoverageException, sqlite3.Error)):
        return str(exc).rstrip(".")
    return f"{type(exc).__name__}: {exc}"


def _rescue_dirs(data_file: Path) -> list[Path]:
    """Where to save the combined data when ``data_file`` cannot be written, in order."""
    out: list[Path] = []
    places: list[Callable[[], Path]] = [
        lambda: data_file.parent,
        lambda: Path(tempfile.gettempdir()),
        Path.home,
        Path.cwd,
    ]
    for where in places:
        try:
            path = where().resolve()
        except (OSError, RuntimeError, KeyError):  # no home directory, a cwd that is gone
            continue
        if path not in out:
            out.append(path)
    return out


def _count_data_files(names: list[str]) -> str:
    """'2 data files': a worker's journal goes with its data file and is not counted."""
    count = sum(1 for name in names if not name.endswith(JOURNAL_SUFFIX))
    return f"{count} data file{'s' if count != 1 else ''}"


class ControllerRole:
    """Merges, saves and reports; registered in the controller (or the only) process."""

    def __init__(
        self,
        config: pytest.Config,
        settings: Settings,
        spec: MeasureSpec,
        plan: OutputPlan,
        engine: Engine,
        *,
        workers: int,
    ) -> None:
        self.config = config
        self.settings = settings
        self.spec = spec
        self.plan = plan
        self.engine = engine
        self.expected_workers = workers
        self.acc = Accumulator(branch=engine.branch)
        self.inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.workers: dict[str, WorkerState] = {}
        # (worker id, data file, path mapper for a file from a remote host)
        self.recover_paths: list[tuple[str, str, PathMapper | None]] = []
        #: fetches of dead remote workers' data, and what they brought (filled by their threads)
        self._fetches: list[threading.Thread] = []
        self._fetches_abandoned = threading.Event()
        self.fetched: list[tuple[str, str, PathMapper | None]] = []
        self.remote: RemoteHooks | None = None
        self.summary: list[str] = []
        self.errors: list[str] = []
        self.report_text = ""
        self._last_progress = time.monotonic()
        self._statements: dict[str, set[int]] = {}
        self._progress_cov: coverage.Coverage | None = None
        self._finished = False
        self._mappers: dict[str, PathMapper] = {}
        self.session: pytest.Session | None = None
        self._cache: ParseCache | None = None
        self._cache_made = False
        #: parses the report will need, made while the tests run (xdist only, see preparse.py)
        self.preparser: PreParser | None = None
        self._preparse = bool(workers) and PreParser.possible() and self._reports_parse()
        #: local workers' directories, held until the end (see tempdirs.py)
        self._held: list[HeldDir] = []
        self._swept = 0
        self._merging = False
        self.sigterm = SigtermStop(self)

    def pytest_configure(self) -> None:
        self._swept = sweep()
        self.sigterm.install()

    def _reports_parse(self) -> bool:
        """True if the end of the run parses sources: a report, a total, or an upload."""
        return bool(
            self.settings.reports or self.plan.fail_under is not None or self.settings.coveralls
        )

    # -- header -----------------------------------------------------------------------------

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        where = (
            f"in {self.expected_workers} worker{'s' if self.expected_workers != 1 else ''}"
            if self.expected_workers
            else "in-process"
        )
        what = "lines and branches" if self.engine.branch else "lines"
        lines = [
            f"distcov: measuring {what} of {self.plan.source_desc}"
            f" with {self.engine.description} {where}"
        ]
        if self.engine.core_note:
            lines.append(f"distcov: {self.engine.core_note}: using {self.engine.description}")
        return lines

    # -- receiving from workers -------------------------------------------------------------

    def enqueue(self, worker_id: str, message: Any) -> None:
        """Called in execnet's receiver thread: only enqueue there."""
        self.inbox.put((worker_id, message))

    def drain(self) -> None:
        """Merge everything received so far (main thread). A SIGTERM meanwhile stops the run
        after the merge, not in the middle of it."""
        self._merging = True
        try:
            self._drain()
        finally:
            self._merging = False
        self.sigterm.raise_if_deferred()

    def _drain(self) -> None:
        got = False
        while True:
            try:
                worker_id, raw = self.inbox.get_nowait()
            except queue.Empty:
                break
            got = True
            state = self.workers.setdefault(worker_id, WorkerState(worker_id))
            if raw is _CHANNEL_CLOSED:
                continue
            try:
                msg = decode(raw)
            except ProtocolError as exc:
                self.errors.append(f"worker {worker_id}: {exc}")
                continue
            if msg["kind"] == "hello":
                state.hello = msg
                self._hold(worker_id, msg["datadir"])
                state.notes.extend(n for n in msg["notes"] if n not in state.notes)
                if msg["coverage"] != coverage.__version__:
                    self.errors.append(
                        f"worker {worker_id} on {msg['host']} runs coverage {msg['coverage']},"
                        f" the controller {coverage.__version__}: its data may differ; install"
                        " the same coverage version everywhere"
                    )
                continue
            chunk: Chunk = msg
            mapper = self._mapper(worker_id)
            try:
                self.acc.add_payload(chunk["data"], mapper)
            except DataFileError as exc:
                self.errors.append(f"worker {worker_id}: {exc}")
            python_files = chunk["data"]["touched"].get("", ())  # each named once a worker
            if python_files and self._preparse:
                self._preparse_files([mapper(p) for p in python_files] if mapper else python_files)
            state.tests = chunk["tests"]
            state.notes.extend(n for n in chunk["notes"] if n not in state.notes)
            if chunk["kind"] == "final":
                state.finished = True
        if self.preparser is not None:
            self.preparser.pump()  # never waits; keeps both of the helper's pipes moving
        if got and self.config.get_verbosity() > 0:
            self._progress()

    def _hold(self, worker_id: str, datadir: str) -> None:
        """Keep a local worker's directory from other runs' cleanup until its data is
        recovered, even if the worker dies."""
        if self.remote is not None and self.remote.host_of(worker_id) is not None:
            return  # on a remote host, in the run's directory there, held by the host's agent
        held = HeldDir.adopt(datadir)
        if held is not None:
            self._held.append(held)

    def _preparse_files(self, names: list[str]) -> None:
        if self.preparser is None:
            cache = self._parse_cache()
            if cache is None:
                self._preparse = False
                return
            self.preparser = PreParser(
                cache,
                exclude_regex(self.engine.cov),
                arcs=self.plan.branch,
                relative_files=bool(self.engine.cov.get_option("run:relative_files")),
            )
        self.preparser.offer(names)

    def _mapper(self, worker_id: str) -> PathMapper | None:
        """Maps a remote worker's paths to local ones (None for a local worker)."""
        remote = self.remote
        host = remote.host_of(worker_id) if remote is not None else None
        if remote is None or host is None:
            return None
        mapper = self._mappers.get(worker_id)
        if mapper is None:
            mapper = self._mappers[worker_id] = remote.fleet.path_mapper(host)
        return mapper

    def _progress(self) -> None:
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
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(
                    f"distcov: {covered} of {total} statements ({100.0 * covered / total:.1f}%)"
                    f" in {len(self._statements)} files covered so far"
                )

    def node_down(self, worker_id: str, error: object) -> None:
        self.drain()
        state = self.workers.setdefault(worker_id, WorkerState(worker_id))
        if state.finished:
            return
        state.down_error = str(error) if error else "went down without its final data"
        self._recover(state)

    def _recover(self, state: WorkerState) -> None:
        if state.hello is None:
            self.summary.append(
                f"distcov: worker {state.id} died before it reported; it had run no test"
            )
            return
        host = self.remote.host_of(state.id) if self.remote is not None else None
        if host is not None and self.remote is not None:
            self._recover_remote(state, host)
            return
        datadir = Path(state.hello["datadir"])
        files = sorted(str(p) for p in datadir.glob(".coverage.*") if p.is_file())
        self.recover_paths.extend((state.id, f, None) for f in files)  # journals too
        found = _count_data_files(files)
        self.summary.append(
            f"distcov: worker {state.id} on {state.hello['host']} crashed ({state.down_error});"
            f" recovering the data of its finished tests: {found} in {datadir}"
        )

    def _recover_remote(self, state: WorkerState, host: HostSession) -> None:
        """Fetch what a dead remote worker flushed on its host, on a thread of its own.

        This runs while the tests run. Whether the host still answers is asked here, bounded
        by the ping's timeout (xdist's restart of the worker needs that answer now, and the
        remote hooks read it next); the fetch, which can take up to its own timeout, runs on a
        thread, and the end of the run collects what it brought (:meth:`_collect_fetches`).
        """
        assert self.remote is not None
        if not self.remote.fleet.ping(host):
            self.summary.append(
                f"distcov: worker {state.id} on host {host.spec.label} went down"
                f" ({state.down_error}) and the host does not answer: keeping the coverage it"
                " streamed until then; what it measured after its last chunk is lost"
            )
            return
        thread = threading.Thread(
            target=self._fetch_remote,
            args=(state, host),
            name=f"distcov-fetch-{state.id}",
            daemon=True,
        )
        self._fetches.append(thread)
        thread.start()

    def _fetch_remote(self, state: WorkerState, host: HostSession) -> None:
        assert self.remote is not None
        assert state.hello is not None
        fleet = self.remote.fleet
        where = f"worker {state.id} on host {host.spec.label}"
        try:
            files = fleet.fetch(host, state.hello["datadir"])
            if self._fetches_abandoned.is_set():
                return  # too late: the run's data is being written without it
            target = self.engine.data_dir / f"recovered-{state.id}"
            target.mkdir(parents=True, exist_ok=True)
            for name, content in files:
                path = target / name
                path.write_bytes(content)
                self.fetched.append((state.id, str(path), self._mapper(state.id)))
        except Exception as exc:  # whatever the host or the disk says: one line
            self.summary.append(f"distcov: {where} crashed; fetching its data failed: {exc}")
            return
        self.remote.leftovers.setdefault(host.spec.label, []).append(state.hello["datadir"])
        self.summary.append(
            f"distcov: {where} crashed ({state.down_error}); recovered the data of its finished"
            f" tests from the host: {_count_data_files([name for name, _ in files])}"
        )

    def _collect_fetches(self) -> None:
        """Wait for the fetches from hosts still under way (at the end of the run only), all
        of them together no longer than FETCH_WAIT."""
        deadline = time.monotonic() + FETCH_WAIT
        for thread in self._fetches:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self.summary.append(
                    f"distcov: {thread.name.removeprefix('distcov-fetch-')}: its host did not"
                    f" hand over the worker's data within {FETCH_WAIT:.0f} s; what it measured"
                    " after its last chunk is lost"
                )
        self._fetches_abandoned.set()  # a fetch still under way keeps what it brings to itself
        self._fetches.clear()
        self.recover_paths.extend(self.fetched)
        self.fetched.clear()

    # -- the end ----------------------------------------------------------------------------

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.session = session

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # Normally the work is done in pytest_terminal_summary, so that the user's own
        # terminal-summary hooks are measured as in a serial run; without a terminal reporter
        # (-p no:terminal) that hook never comes, so finish here.
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            self._finish(session)
        elif session.exitstatus not in _SUMMARY_EXIT_CODES:
            # pytest shows no terminal summary after an internal error: finish (and save the
            # data) here, and say what happened in a few plain lines.
            self.pytest_terminal_summary(reporter)

    @property
    def finished(self) -> bool:
        """True once the end of the run (saving, reporting) has begun."""
        return self._finished

    @property
    def merging(self) -> bool:
        """True while received chunks are merged (a SIGTERM then waits for the merge)."""
        return self._merging

    def _finish(self, session: pytest.Session | None) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            self._finish_run(session)
        finally:
            self._preparse = False
            if self.preparser is not None:
                self.preparser.stop()

    def _finish_run(self, session: pytest.Session | None) -> None:
        self.drain()
        for state in self.workers.values():
            if not state.finished and state.down_error is None:
                state.down_error = "did not finish"
                self._recover(state)
        self._collect_fetches()
        own = self.engine.finish()
        subprocess_files = self.engine.subprocess_files()
        unreadable: list[str] = []

        def fill_run(data: coverage.CoverageData) -> None:
            """This run's data: the workers', recovered files, the controller's own."""
            self.acc.write_into(data)
            data.update(own)
            sources = [*self.recover_paths, *(("", p, None) for p in subprocess_files)]
            for worker_id, path, mapper in sources:
                try:
                    update_from_file(data, path, mapper)
                except DataFileError as exc:
                    who = f"worker {worker_id}: " if worker_id else ""
                    unreadable.append(path)
                    error = f"{who}{exc}; the file is kept for inspection"
                    if error not in self.errors:  # fill may run again (see _rescue)
                        self.errors.append(error)

        def fill(data: coverage.CoverageData) -> None:
            fill_run(data)
            if self.settings.append and self.plan.data_file.exists():
                try:
                    update_from_file(data, self.plan.data_file)
                except DataFileError as exc:
                    raise _AppendUnreadable(str(exc)) from None

        try:
            write_data_file(self.plan.data_file, fill)
        except Exception as exc:  # whatever it was (a full disk, SQLite, coverage): see _rescue
            self._close_remote(keep_workers=True)
            self._rescue(exc, fill_run)
            self._set_failed(session, pytest.ExitCode.INTERNAL_ERROR)
            return
        self._close_remote(keep_workers=False)
        self._cleanup(keep=unreadable)
        if self.settings.store:
            self._store(session)
        self._report(session)

    def _rescue(self, exc: Exception, fill_run: Callable[[coverage.CoverageData], None]) -> None:
        """The data file could not be written: save this run's combined data elsewhere.

        Nothing is removed then (the workers' directories, the controller's own), and one line
        says where the data went and what to do. The file is tried in the data file's directory
        (the natural place, unless that disk is full), the temporary directory, the home
        directory, the current directory, in that order. It holds what the data file would have
        held: this run's data, and an appended file's data when that file can still be read.
        """
        data_file = self.plan.data_file
        append_error = str(exc) if isinstance(exc, _AppendUnreadable) else ""
        old_data: list[str] = []  # what became of the appended file's data in the rescue

        def fill(data: coverage.CoverageData) -> None:
            old_data.clear()
            fill_run(data)
            if self.settings.append and not append_error and data_file.exists():
                try:
                    update_from_file(data, data_file)
                except DataFileError:
                    old_data.append(f" (without the data of {data_file}, which cannot be read)")

        name = f"distcov-rescue-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.coverage"
        saved: Path | None = None
        failed: list[str] = []
        for directory in _rescue_dirs(data_file):
            try:
                write_data_file(directory / name, fill)
            except Exception as again:  # the next place, then
                failed.append(f"{directory}: {_reason(again)}")
                continue
            saved = directory / name
            break
        kept = self._kept_dirs()
        keeping = f"; kept the data directories {', '.join(kept)}" if kept else ""
        if append_error:
            what = f"--distcov-append: {append_error}; {data_file} is left as it is and "
        else:
            what = f"could not write {data_file}: {_reason(exc)}; "
        if saved is None:
            what += (
                f"saving this run's combined data failed everywhere too ({'; '.join(failed)}):"
                " its parts are in the directories kept (coverage data files, .coverage.*),"
                " which `coverage combine --keep` can read once the cause is fixed"
            )
        elif append_error:
            what += (
                f"this run's combined data was saved to {saved}: read it with `pytest-distcov"
                f" report --data-file {saved}`, or move it to {data_file} in place of the"
                " damaged file"
            )
        else:
            what += (
                f"this run's combined data was saved to {saved}{''.join(old_data)}: fix the"
                f" cause (free space?) and move it to {data_file}, or read it with"
                f" `pytest-distcov report --data-file {saved}`"
            )
        self.errors.append(what + keeping)

    def _kept_dirs(self) -> list[str]:
        """After a failed write: every directory that still holds a part of this run's data."""
        kept = [str(self.engine.data_dir)]
        for state in self.workers.values():
            if state.hello is None:
                continue
            host = self.remote.host_of(state.id) if self.remote is not None else None
            datadir = state.hello["datadir"]
            if host is not None:
                kept.append(f"{host.spec.label}:{datadir}")
            elif os.path.isdir(datadir) and datadir not in kept:
                kept.append(datadir)
        return kept

    def _store(self, session: pytest.Session | None) -> None:
        """This run's shard for a later `pytest-distcov combine` (the data file stays as it is)."""
        try:
            where = write_shard(
                self.plan.data_file, self.config.rootpath, open_store(self.settings.store or "")
            )
        except DistCovError as exc:
            self.errors.append(
                f"{exc}; this run's data is still in {self.plan.data_file}"
                " (combine can read that file directly)"
            )
            self._set_failed(session, pytest.ExitCode.INTERNAL_ERROR)
            return
        self.summary.append(f"distcov: stored shard {where}")

    def _close_remote(self, *, keep_workers: bool) -> None:
        """Close the hosts; unless ``keep_workers``, remove the remote workers' directories."""
        remote = self.remote
        if remote is None:
            return
        if keep_workers:
            remote.fleet.close(keep=True)
            return
        for state in self.workers.values():
            host = remote.host_of(state.id)
            if host is not None and state.hello is not None and not self._pointed_to(state):
                dirs = remote.leftovers.setdefault(host.spec.label, [])
                if state.hello["datadir"] not in dirs:
                    dirs.append(state.hello["datadir"])
        remote.fleet.close(remote.leftovers)

    def _pointed_to(self, state: WorkerState) -> bool:
        """True if a note of the worker names a file in its directory (kept for the user)."""
        datadir = state.hello["datadir"] if state.hello is not None else ""
        return bool(datadir) and any(datadir in note for note in state.notes)

    def _cleanup(self, keep: list[str]) -> None:
        """The combined data file is written: the run's directories go, the controller's and
        the local workers' (which keep their data until now), except one holding a file the
        user is pointed to."""
        dirs = {self.engine.data_dir} | {Path(p).parent for _, p, _ in self.recover_paths}
        for state in self.workers.values():
            on_host = self.remote is not None and self.remote.host_of(state.id) is not None
            if state.hello is None or on_host or self._pointed_to(state):
                continue
            datadir = Path(state.hello["datadir"])
            if datadir.name.startswith("distcov-"):  # never anything else a message names
                dirs.add(datadir)
        for d in dirs:
            if not any(Path(k).parent == d for k in keep):
                shutil.rmtree(d, ignore_errors=True)

    def _set_failed(self, session: pytest.Session | None, status: pytest.ExitCode) -> None:
        if session is not None and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = status

    def _report(self, session: pytest.Session | None) -> None:
        cov = open_coverage(self.spec, data_file=str(self.plan.data_file))
        cov.load()
        buf = io.StringIO()
        parse_cache = self._parse_cache()
        if parse_cache is not None and self.preparser is not None:
            parse_cache.incoming = self.preparser.take
        try:
            outcome = produce_reports(
                cov,
                self.settings.reports,
                buf,
                need_total=self.plan.fail_under is not None,
                parse_cache=parse_cache,
            )
        except NothingToReport as exc:
            if self.plan.fail_under is None:
                self.summary.append(f"distcov: {exc}")
            else:
                self.errors.append(f"FAIL: {exc}, so --distcov-fail-under cannot be met")
                self._set_failed(session, pytest.ExitCode.TESTS_FAILED)
            return
        except ReportError as exc:
            self.errors.append(str(exc))
            self._set_failed(session, pytest.ExitCode.INTERNAL_ERROR)
            return
        self.report_text = buf.getvalue()
        if self.settings.coveralls:
            self._coveralls(session, cov)
        self.summary.extend(f"distcov: {n}" for n in outcome.notes)
        self.summary.extend(f"distcov: wrote {w}" for w in outcome.written)
        if self.plan.fail_under is not None and outcome.total is not None:
            verdict = judge_fail_under(outcome.total, self.plan.fail_under, self.plan.precision)
            if verdict.failed:
                self.errors.append(
                    f"FAIL: total coverage {verdict.shown} is below the required {verdict.wanted}"
                    " (--distcov-fail-under)"
                )
                self._set_failed(session, pytest.ExitCode.TESTS_FAILED)
            else:
                self.summary.append(
                    f"distcov: required coverage of {verdict.wanted} reached: {verdict.shown}"
                )

    def _parse_cache(self) -> ParseCache | None:
        """Parses of the reported files kept in pytest's cache directory, so that a run of
        unchanged sources reports without parsing them (none with -p no:cacheprovider)."""
        if not self._cache_made:
            self._cache_made = True
            cache = getattr(self.config, "cache", None)
            if cache is not None:
                with contextlib.suppress(OSError):
                    self._cache = ParseCache(cache.mkdir("distcov") / "parses")
        return self._cache

    def _coveralls(self, session: pytest.Session | None, cov: coverage.Coverage) -> None:
        """Upload after the data is saved: a failed upload never touches it."""
        from pytest_distcov.sinks import coveralls  # requests is imported only by runs that upload

        try:
            line = coveralls.submit(
                cov,
                env=os.environ,
                root=coveralls.repo_root(self.config.rootpath),
                log=lambda text: self.summary.append(f"distcov: {text}"),
            )
        except DistCovError as exc:
            if self.settings.coveralls_required:
                self.errors.append(f"FAIL: Coveralls upload: {exc} (distcov_coveralls_required)")
                self._set_failed(session, pytest.ExitCode.TESTS_FAILED)
            else:
                self.errors.append(f"Coveralls upload failed (the run's result stands): {exc}")
            return
        self.summary.append(f"distcov: {line}")

    def pytest_unconfigure(self) -> None:
        """A run that ends before its report (an interrupt, a usage error): no helper left."""
        self._preparse = False
        if self.preparser is not None:
            self.preparser.stop()
        self.sigterm.uninstall()
        for held in self._held:
            held.release()
        self._held.clear()

    def _cleanup_note(self) -> str | None:
        """One line for the directories of killed runs removed at the start of this one."""
        counts = [(self._swept, "here")]
        if self.remote is not None:
            counts.extend(
                (int(h.info.get("removed", 0)), f"on {h.spec.label}")
                for h in self.remote.fleet.hosts
                if h.info
            )
        total = sum(n for n, _ in counts)
        if not total:
            return None
        where = ", ".join(f"{n} {place}" for n, place in counts if n)
        detail = f" ({where})" if self.remote is not None else ""
        dirs = "directory" if total == 1 else "directories"
        return f"distcov: removed {total} temporary {dirs} left by killed runs{detail}"

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        self._finish(self.session)
        tr = terminalreporter
        notes = list(self.engine.notes)
        if self.remote is not None:
            notes.extend(self.remote.notes)
        for state in self.workers.values():
            host = self.remote.host_of(state.id) if self.remote is not None else None
            who = f"{state.id} on host {host.spec.label}" if host is not None else state.id
            notes.extend(f"[{who}] {n}" for n in state.notes)
        workers = len(self.workers)
        title = f"distcov: {workers} worker{'s' if workers != 1 else ''}" if workers else "distcov"
        tr.write_sep("-", f"{title}, {self.engine.description}, data in {self.plan.data_file}")
        if self.report_text:
            tr.write(self.report_text)
        stops = [self.sigterm.note(), self._cleanup_note()]
        for line in [*(s for s in stops if s), *self.summary]:
            tr.write_line(line)
        for note in notes:
            tr.write_line(f"distcov: {note}")
        for err in self.errors:
            tr.write_line(
                f"distcov: {err}" if not err.startswith("FAIL") else err, red=True, bold=True
            )


class SigtermStop:
    """SIGTERM (what CI sends on a timeout or a cancel) stops the run as Ctrl-C does.

    The handler raises KeyboardInterrupt in the main thread, so pytest's own interrupt handling
    runs (xdist's shuts the workers down); the controller then saves the data of every test
    that finished, reports, and pytest exits with ``ExitCode.INTERRUPTED``. It is installed only
    where SIGTERM has its default action (a handler installed by someone else is left alone),
    and the default comes back at the end. Further SIGTERMs are ignored: the run is stopping
    already, and one while the data is being saved would lose it (SIGKILL still ends it). A
    merge in progress is finished before the interrupt is raised.
    """

    MESSAGE = "SIGTERM: stopping as on Ctrl-C"

    def __init__(self, role: ControllerRole) -> None:
        self.role = role
        self.installed = False
        self.received = 0
        self.stopped = False
        self.deferred = False
        #: the session is finishing (see pytest_sessionfinish)
        self.ending = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set in the main thread
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        signal.signal(signal.SIGTERM, self._handle)
        self.installed = True

    def uninstall(self) -> None:
        if self.installed and signal.getsignal(signal.SIGTERM) == self._handle:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.installed = False

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_sessionfinish(self) -> Generator[None, object, object]:
        """From here on the session is ending: a SIGTERM now is counted, never raised (an
        interrupt in a session-finish hook would escape pytest and lose the run's data)."""
        self.ending = True
        return (yield)

    def _handle(self, signum: int, frame: object) -> None:
        self.received += 1
        if self.received > 1 or self.ending or self.role.finished:
            return  # stopping (or saving) already
        self.stopped = True
        session = self.role.session
        if session is not None:
            # if a test swallows the KeyboardInterrupt, pytest still stops after that test
            session.shouldstop = self.MESSAGE
        if self.role.merging:
            self.deferred = True
            return
        raise KeyboardInterrupt(self.MESSAGE)

    def raise_if_deferred(self) -> None:
        if self.deferred and not self.role.finished:
            self.deferred = False
            raise KeyboardInterrupt(self.MESSAGE)

    def note(self) -> str | None:
        if not self.stopped:
            return (
                "distcov: SIGTERM received while the run was finishing: ignored"
                if self.received
                else None
            )
        more = self.received - 1
        ignored = f"; {more} more SIGTERM ignored while finishing" if more else ""
        return (
            "distcov: stopped by SIGTERM (as by Ctrl-C); the coverage of the tests that"
            f" finished is kept{ignored}"
        )


class XdistControllerHooks:
    """The xdist side of the controller: a private channel per worker, and node-down recovery.

    Registered only when xdist is active, so these xdist-only hook names never reach a run
    without xdist.
    """

    def __init__(self, role: ControllerRole) -> None:
        self.role = role

    def pytest_configure_node(self, node: Any) -> None:
        worker_id = node.gateway.id
        channel = node.gateway.newchannel()

        def receive(message: Any) -> None:
            self.role.enqueue(worker_id, message)

        channel.setcallback(receive, endmarker=_CHANNEL_CLOSED)
        node.workerinput["distcov_channel"] = channel

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        self.role.node_down(node.gateway.id, error)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, object, object]:
        """Stop the controller's own tracer while xdist runs the tests.

        During the loop the controller only relays: every hook it runs then (logstart,
        logreport, logfinish, collectreport, warning_recorded, report_teststatus) also runs in
        the worker that ran the test, where it is measured. Tracing the busy controller would
        only steal a core from the workers (~4 % of wall time on 2 cores with the C tracer).
        """
        self.role.engine.pause()
        try:
            return (yield)
        finally:
            self.role.engine.resume()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not self.role.inbox.empty():
            self.role.drain()

"""The controller role: the pytest-facing coordinator of receive, finish and the sinks.

Used both for an xdist run (the controller runs no tests; workers stream to it) and for a plain
in-process run (no xdist, or ``-n 0``), which is the same thing with no workers.

* :class:`~.receive.Receiver` takes the workers' messages while the tests run and merges them
  in memory;
* a dead worker's data is recovered by its strategy (:mod:`.recovery`: a local worker's
  directory here, or a remote one's fetched from its host, :mod:`pytest_distcov.remote.recovery`);
* :class:`~.finish.Finisher` writes the combined data file from all of it (the controller's own
  engine, streamed chunks, recovered files, measured subprocesses), atomically, so neither a
  bad run nor a crash damages an existing one; or rescues it after a failed write;
* the sinks (:mod:`pytest_distcov.sinks.pipeline`) store, report, upload and judge it, in that
  order, and the terminal summary says what happened.

:class:`ControllerRole` applies their outcomes to the session: its exit status and the summary.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_distcov.data.readers import read_data_file
from pytest_distcov.engine.measure import (
    Engine,
    MeasureSpec,
    describe_core,
    free_threading_note,
    open_coverage,
)
from pytest_distcov.errors import SettingsError, printable
from pytest_distcov.remote.fleet import RemoteHooks
from pytest_distcov.remote.recovery import RemoteRecovery
from pytest_distcov.settings.options import Settings
from pytest_distcov.sinks.coveralls_sink import CoverallsSink
from pytest_distcov.sinks.fail_under_sink import FailUnderSink
from pytest_distcov.sinks.parses import ParseCache
from pytest_distcov.sinks.pipeline import Outcome, Sink, run_sinks
from pytest_distcov.sinks.preparse import PreParser
from pytest_distcov.sinks.report import configured_fail_under, precision_of
from pytest_distcov.sinks.report_sink import ReportSink
from pytest_distcov.sinks.store_sink import StoreSink
from pytest_distcov.sinks.summary import Summary
from pytest_distcov.tempdirs import sweep

from .finish import Finisher
from .receive import CHANNEL_CLOSED, Receiver, WorkerState
from .recovery import LocalRecovery, Recovery, count_data_files
from .sigterm import SigtermStop

__all__ = ["ControllerRole", "OutputPlan", "XdistControllerHooks"]

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


class ControllerRole:
    """Receives, finishes and runs the sinks; registered in the controller (or the only)
    process."""

    def __init__(
        self,
        config: pytest.Config,
        settings: Settings,
        spec: MeasureSpec,
        plan: OutputPlan,
        engine: Engine,
        *,
        workers: int,
        remote: RemoteHooks | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.plan = plan
        self.engine = engine
        self.expected_workers = workers
        self.remote = remote
        self.session: pytest.Session | None = None
        #: the summary's lines (recoveries, what the sinks did) and errors after the receiver's
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.report_text = ""
        #: True from the moment the run's data is being saved
        self.finished = False
        self._swept = 0
        self._cache: ParseCache | None = None
        self._cache_made = False
        verbose = config.get_verbosity() > 0
        self.receiver = Receiver(
            engine,
            spec,
            remote,
            arcs=plan.branch,
            preparse=bool(workers) and PreParser.possible() and self._reports_parse(),
            parse_cache=self._parse_cache,
            progress=self._progress_line if verbose else None,
        )
        self.local_recovery = LocalRecovery(self.lines.append, self.receiver.dirs)
        self.remote_recovery = (
            RemoteRecovery(
                remote, engine.data_dir, self.lines.append, count_data_files, self.receiver.dirs
            )
            if remote is not None
            else None
        )
        self.finisher = Finisher(
            engine, spec, self.receiver, plan.data_file, append=settings.append
        )
        self.sigterm = SigtermStop(self)

    @property
    def merging(self) -> bool:
        """A merge of received data is under way (a SIGTERM waits for it)."""
        return self.receiver.merging

    def pytest_configure(self) -> None:
        self._swept = sweep()
        self.sigterm.install()

    def _reports_parse(self) -> bool:
        """True if the end of the run parses sources: a report, a total, or an upload."""
        return bool(
            self.settings.reports or self.plan.fail_under is not None or self.settings.coveralls
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

    def _progress_line(self, line: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(line)

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
        threading_note = free_threading_note()
        if threading_note:
            lines.append(f"distcov: {threading_note}")
        return lines

    # -- while the tests run ----------------------------------------------------------------

    def drain(self) -> None:
        """Merge everything received so far (main thread). A SIGTERM meanwhile stops the run
        after the merge, not in the middle of it."""
        self.receiver.drain()
        self.sigterm.raise_if_deferred()

    def node_down(self, worker_id: str, error: object) -> None:
        self.drain()
        state = self.receiver.worker(worker_id)
        if state.finished or state.down_error is not None:
            return
        if state.refused and not error:  # it ended, but its final message was refused
            self._recover_refused(state)
            return
        state.down_error = str(error) if error else "went down without its final data"
        self._recover(state)

    def _recover(self, state: WorkerState) -> None:
        if state.hello is None:
            self.lines.append(f"worker {state.id} died before it reported; it had run no test")
            return
        assert state.down_error is not None
        self._recovery_for(state.id).recover(state.id, state.hello, state.down_error)

    def _recover_refused(self, state: WorkerState) -> None:
        """A worker that had a message refused: its data files hold all it measured (the
        refused part too); they are read as a dead worker's are."""
        state.down_error = "sent a message that was refused"
        if state.hello is None:
            self.lines.append(
                f"worker {state.id} {state.down_error} before its hello named its directory:"
                " what that message held is lost"
            )
            return
        self._recovery_for(state.id).recover(state.id, state.hello, state.down_error, refused=True)

    def _recovery_for(self, worker_id: str) -> Recovery:
        """A remote host's worker is fetched from there; any other is read here."""
        if self.remote_recovery is not None and self.receiver.host_of(worker_id) is not None:
            return self.remote_recovery
        return self.local_recovery

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

    def begin_finish(self) -> None:
        """Every worker finished, and sent all it measured: the workers' data is written into
        the data file's temporary file now, in a thread (see :meth:`Finisher.begin`)."""
        if self.finished:
            return
        self.receiver.drain()  # (not self.drain(): no interrupt is raised from here on)
        states = self.receiver.workers.values()
        if states and all(s.finished and not s.refused and s.down_error is None for s in states):
            self.finisher.begin()

    def _finish(self, session: pytest.Session | None) -> None:
        if self.finished:
            return
        self.finished = True
        try:
            self._finish_run(session)
        finally:
            self.receiver.stop()

    def _finish_run(self, session: pytest.Session | None) -> None:
        """Receive the rest, recover the dead, write the data file, then run the sinks."""
        self.drain()
        self.receiver.forget_blobs()
        for state in self.receiver.workers.values():
            if state.down_error is not None:
                continue  # went down: recovered already
            if state.refused:  # (its final message may be the one refused)
                self._recover_refused(state)
            elif not state.finished:
                state.down_error = "did not finish"
                self._recover(state)
        recovered = self.local_recovery.collect()
        if self.remote_recovery is not None:
            recovered.extend(self.remote_recovery.collect())
        finished = self.finisher.finish(recovered)
        self.errors.extend(finished.errors)
        if finished.combined is None:
            self._set_failed(session, pytest.ExitCode.INTERNAL_ERROR)
            return
        self._apply(session, run_sinks(self._sinks(), finished.combined))

    def _sinks(self) -> list[Sink]:
        """The sinks of this run, in their order (see :mod:`pytest_distcov.sinks.pipeline`)."""
        settings, plan = self.settings, self.plan
        sinks: list[Sink] = []
        if settings.store:
            sinks.append(StoreSink(settings.store, self.config.rootpath))
        preparser = self.receiver.preparser
        sinks.append(
            ReportSink(
                settings.reports,
                fail_under=plan.fail_under,
                parse_cache=self._parse_cache(),
                incoming=preparser.take if preparser is not None else None,
            )
        )
        if settings.coveralls:
            required = settings.coveralls_required
            sinks.append(
                CoverallsSink(env=os.environ, start=self.config.rootpath, required=required)
            )
        if plan.fail_under is not None:
            sinks.append(FailUnderSink(plan.fail_under, plan.precision))
        return sinks

    def _apply(self, session: pytest.Session | None, outcome: Outcome) -> None:
        """What the sinks did, applied to the session and its summary."""
        self.lines.extend(outcome.lines)
        self.errors.extend(outcome.errors)
        self.report_text = outcome.report_text
        if outcome.status is not None:
            self._set_failed(session, pytest.ExitCode(int(outcome.status)))

    def _set_failed(self, session: pytest.Session | None, status: pytest.ExitCode) -> None:
        if session is not None and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = status

    def pytest_unconfigure(self) -> None:
        """A run that ends before its report (an interrupt, a usage error): no helper left."""
        try:
            self.receiver.stop()
            self.sigterm.uninstall()
            self.receiver.release()
        finally:
            self.finisher.abandon()  # (never waits: see BackgroundWrite)

    def _cleanup_note(self) -> str | None:
        """One line for the directories of killed runs removed at the start of this one."""
        counts = [(self._swept, "here")]
        if self.remote is not None:
            counts.extend(
                (_count(h.info.get("removed")), f"on {h.spec.label}")
                for h in self.remote.fleet.hosts
                if h.info
            )
        total = sum(n for n, _ in counts)
        if not total:
            return None
        where = ", ".join(f"{n} {place}" for n, place in counts if n)
        detail = f" ({where})" if self.remote is not None else ""
        dirs = "directory" if total == 1 else "directories"
        return f"removed {total} temporary {dirs} left by killed runs{detail}"

    def _notes(self) -> list[str]:
        """The engine's, the hosts' and each worker's notes, the worker's named."""
        notes = list(self.engine.notes)
        if self.remote is not None:
            notes.extend(self.remote.notes)
        others: dict[tuple[str, str], list[str]] = {}
        for state in self.receiver.workers.values():
            host = self.receiver.host_of(state.id)
            who = f"{state.id} on host {host.spec.label}" if host is not None else state.id
            hello = state.hello
            if hello is not None and hello["core"] != self.engine.core:
                others.setdefault((hello["core"], hello["python"]), []).append(who)
            notes.extend(f"[{who}] {n}" for n in state.notes)
        notes.extend(self._other_cores(others))
        # a worker's notes, and a host's name, are what another process said: one line each
        return [printable(n) for n in notes]

    def _other_cores(self, others: dict[tuple[str, str], list[str]]) -> list[str]:
        """A line for each (core, Python) of workers that measured another way than the title
        says (another Python on a remote host, ``COVERAGE_CORE`` in their environment),
        naming them (the first few of many)."""
        lines = []
        for (core, python), who in others.items():
            named = ", ".join(who[:4]) + (f" and {len(who) - 4} more" if len(who) > 4 else "")
            how = describe_core(_short(core), branch=self.engine.branch)
            lines.append(
                f"[{named}] measured with {how} (Python {_short(python)}), not with"
                f" {self.engine.description} as the controller does"
            )
        return lines

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        self._finish(self.session)
        workers = len(self.receiver.workers)
        title = f"distcov: {workers} worker{'s' if workers != 1 else ''}" if workers else "distcov"
        stops = [self.sigterm.note(), self._cleanup_note()]
        Summary(
            title=f"{title}, {self.engine.description}, data in {self.plan.data_file}",
            report_text=self.report_text,
            lines=[*(s for s in stops if s), *self.lines],
            notes=self._notes(),
            errors=[*self.receiver.errors, *self.errors],
        ).run(terminalreporter)


def _short(text: str) -> str:
    """What a worker said of itself, at most 40 characters of it."""
    return text if len(text) <= 40 else text[:40] + "..."


def _count(value: object) -> int:
    """A count a host reported: a whole number from 0 up, or 0 (a host may say anything)."""
    return value if type(value) is int and value >= 0 else 0


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
            self.role.receiver.enqueue(worker_id, message)

        channel.setcallback(receive, endmarker=CHANNEL_CLOSED)
        node.workerinput["distcov_channel"] = channel
        # The run's unique id, which xdist gives every worker: their directories carry its tag.
        self.role.receiver.expect(worker_id, node.workerinput.get("testrunuid"))

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        self.role.node_down(node.gateway.id, error)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        """Before xdist stops the workers (and waits for them), the data file's writing
        begins, if every worker sent all it measured."""
        self.role.begin_finish()

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
        if not self.role.receiver.inbox.empty():
            self.role.drain()

"""The coverage.py lifecycle in one process, through coverage's documented API (one exception).

One :class:`Engine` per process (controller, xdist worker, or a plain in-process run):

* it is created and started as early as pytest lets a plugin run, so conftest and test-module
  imports are measured as under ``coverage run -m pytest``;
* it chooses the core when the user has not (sysmon where it measures everything asked for);
* :meth:`Engine.flush` makes everything measured so far durable in the engine's own data file
  (``Coverage.switch_context`` flushes the collector into the data file, and nothing else: no
  source-tree walk, no warnings), so a process killed later loses nothing already flushed;
* only what is new reaches the data file (:class:`NewOnly`), and the flush after each test
  reads the tracer's sets without emptying them (:class:`~pytest_distcov.engine.tap.TracerTap`):
  the two places the engine reaches past coverage's documented API, to the data object
  coverage writes into and to its collector, both through :mod:`pytest_distcov.covapi`, whose
  start check (:attr:`Engine.internals`) says whether they are there. Without them (another
  coverage release), flushing stays correct, only slower, and the header says so;
* its data file lives in a private directory, never where a user's ``coverage combine`` would
  pick it up, and it is never erased.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import sysconfig
import threading
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coverage import Coverage, CoverageData
from coverage.exceptions import CoverageException

from pytest_distcov.covapi.check import (
    CONTEXT_BATCH,
    JOURNAL,
    PARSES,
    PROBES,
    TAP,
    CoverageInternals,
    check,
)
from pytest_distcov.covapi.collector import ctracer_error, open_tracer_sets
from pytest_distcov.covapi.data import divert_writes, measuring_data, recorded_context
from pytest_distcov.covapi.subprocesses import measure_subprocesses
from pytest_distcov.covapi.warnings import capture_coverage_warnings
from pytest_distcov.data.journal import JOURNAL_SUFFIX, encode_record, journal_for
from pytest_distcov.errors import DistCovError, SettingsError
from pytest_distcov.remote.launch import OMIT_ENV

from .branch_probes import BRANCH_PROBES_IN_AUTO, BranchProbes
from .branches import BRANCH_PYTHONS, BranchMonitor, MarkCache, branches_obstacle
from .monitor import MONITOR_PYTHON, LineMonitor, monitor_available, monitor_obstacle
from .probes import NOT_INSTALLED, Probes, probe_obstacle, probes_available
from .tap import TracerTap

__all__ = [
    "CORE_NAMES",
    "Engine",
    "MeasureSpec",
    "NewOnly",
    "choose_core",
    "describe_core",
    "free_threading_note",
    "open_coverage",
]

#: coverage's tracer class names (``Coverage.sys_info()["core"]``) to its ``[run] core`` names.
CORE_NAMES = {"CTracer": "ctrace", "PyTracer": "pytrace", "SysMonitor": "sysmon"}


def describe_core(core: str, *, branch: bool) -> str:
    """How an engine measures that took ``core`` (:attr:`Engine.core`), in words."""
    if core == "probes":
        return "SlipCover's probes with branch markers" if branch else "SlipCover's probes"
    if core == "monitor":
        return "sys.monitoring line events"
    if core == "markers":
        return "sys.monitoring line events with branch markers"
    return f"the {core} core"


@dataclass(frozen=True)
class MeasureSpec:
    """What to measure: the settings that every measuring process must share."""

    source: tuple[str, ...] | None
    branch: bool | None
    config_file: str | bool
    #: "test": per-test contexts, switched by the plugin (see contexts.py)
    context: str | None = None
    #: "auto", "coverage" or "probes" (--distcov-engine)
    engine: str = "auto"


def _config_name(config_file: str | bool) -> str:
    return config_file if isinstance(config_file, str) else "the coverage configuration"


def open_coverage(spec: MeasureSpec, **kwargs: object) -> Coverage:
    """A ``Coverage`` object with the user's configuration and our overrides.

    A broken or unreadable coverage configuration becomes a :class:`SettingsError`.
    """
    try:
        return Coverage(
            config_file=spec.config_file,
            source=list(spec.source) if spec.source else None,
            branch=spec.branch,
            messages=False,
            **kwargs,  # type: ignore[arg-type]
        )
    except CoverageException as exc:
        reason = " ".join(str(exc).split())  # configparser's messages span lines
        raise SettingsError(f"cannot use {_config_name(spec.config_file)}: {reason}") from None


def choose_core(
    cov: Coverage, version: tuple[int, int] = sys.version_info[:2], *, contexts: bool = False
) -> tuple[str, str]:
    """The core to use when the user chose none, and why, for the header line.

    sysmon (Python 3.12+) adds little to a run where a trace function makes it take several
    times as long (benchmarks/bench_overhead.py: ``distcov`` and ``pytest-cov`` against plain
    ``pytest`` on 3.12+), but before Python 3.14 it cannot measure branches, and it never
    records dynamic contexts or follows greenlet/eventlet/gevent. Asking coverage for sysmon
    where it cannot deliver makes coverage warn (and a suite with ``filterwarnings = error``
    fail), so we only ask where it can.
    """
    if version < (3, 12):
        return "ctrace", ""
    if cov.get_option("run:branch") and version < (3, 14):
        return "ctrace", "sysmon cannot measure branches before Python 3.14"
    if contexts:
        return "ctrace", "per-test contexts need a trace function (sysmon records none)"
    if cov.get_option("run:dynamic_context"):
        return "ctrace", "sysmon cannot record dynamic contexts"
    concurrency = cov.get_option("run:concurrency") or []
    assert isinstance(concurrency, list)
    for lib in ("greenlet", "eventlet", "gevent"):
        if lib in concurrency:
            return "ctrace", f"sysmon does not support concurrency={lib}"
    return "sysmon", ""


def free_threading_note(*, free_threaded: bool | None = None, gil: bool | None = None) -> str:
    """A header line for a free-threaded CPython build ('' for any other), by default of this
    interpreter: whether the GIL is off (an extension module, ``PYTHON_GIL=1`` or ``-X gil=1``
    can turn it on), and that this plugin is not tested there. Read in the controller when the
    header is made: not in workers or on remote hosts.

    coverage.py supports free-threaded builds. What here relies on the GIL is small: the
    tap copies coverage.py's tracer sets with ``dict.copy``/``set.copy``, which a free-threaded
    build also makes under the object's own lock, and :class:`NewOnly` takes its own lock.
    No free-threaded build is packaged for the Debian this project is tested on.
    """
    if free_threaded is None:
        free_threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    if gil is None:
        is_gil_enabled: Callable[[], bool] = getattr(sys, "_is_gil_enabled", lambda: True)
        gil = bool(is_gil_enabled())
    if not free_threaded and gil:
        return ""
    state = "with the GIL enabled" if gil else "with the GIL disabled"
    return (
        f"free-threaded Python {state}: coverage.py supports it from 7.17.0, pytest-distcov is"
        " not tested on it (README: Free-threaded Python)"
    )


class NewOnly:
    """Lets through to a ``CoverageData`` only the lines or arcs not given to it before, and
    makes a flush durable by appending to a journal instead of writing SQLite.

    With a trace function every test records again every line it runs, and each flush made
    coverage read, merge and rewrite every such file's row in SQLite, again after every test.
    A data file only ever grows by union, so what it was
    already given need not be written again: a set difference in memory decides. What is new
    after a test (while :attr:`deferring`) is appended as one line to ``journal`` (one
    ``write``, far cheaper than an SQLite transaction) and written to the data file by
    :meth:`consolidate`: at the end, and before the worker reads the data file to stream it
    (only when the chunks cannot come from memory, see :meth:`take_unsent`). The journal holds
    each line once, so it grows no larger than the lines covered. A worker killed in between
    leaves the journal beside its data file, and recovery reads both
    (:func:`pytest_distcov.data.readers.update_from_file`). Only for data recorded under one
    unchanging context: the engine installs it only then.

    If the data file cannot be written (a full temporary directory, a file-size limit), one
    note goes to ``notes`` and no more writes are tried: what passes through is still kept in
    memory for streaming, and :meth:`memory_copy` gives everything given, in memory.
    """

    def __init__(
        self, data: CoverageData, journal: Path | None = None, notes: list[str] | None = None
    ) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._given: dict[str, set[Hashable]] = {}
        self._data = data
        self._journal = journal
        self._notes = notes if notes is not None else []
        #: why the data file could not be written ('' while it can)
        self.failed = ""
        self._tracers: dict[str, str] = {}
        self._touched: dict[str, set[str]] = {}
        self._fd: int | None = None
        #: in the journal, not yet in the data file: (kind, name -> items)
        self._pending: dict[str, set[Hashable]] = {}
        self._pending_kind = ""
        #: the kinds the data file has been told of (coverage records it with the first add)
        self._kinds: set[str] = set()
        #: True while the engine flushes after a test: new data goes to the journal
        self.deferring = False
        #: what passed through since :meth:`take_unsent` (kept only once a streamer asks)
        self.tracking = False
        self._unsent: dict[str, set[Hashable]] = {}
        self._unsent_kind = ""
        #: False once a coverage plugin traced a file: its tracer name does not pass through here
        self.complete = True
        # coverage.py's flush into ``data`` comes here; these still write the data file.
        own = divert_writes(data, self)
        self._add_lines, self._add_arcs = own.add_lines, own.add_arcs
        self._add_file_tracers, self._touch_files = own.add_file_tracers, own.touch_files

    def add_lines(self, line_data: Mapping[str, Collection[int]]) -> None:
        self._add("lines", line_data)

    def add_arcs(self, arc_data: Mapping[str, Collection[tuple[int, int]]]) -> None:
        self._add("arcs", arc_data)

    def add_file_tracers(self, file_tracers: Mapping[str, str]) -> None:
        if file_tracers:
            self.complete = False
            self._tracers.update(file_tracers)
        self._write(self._add_file_tracers, file_tracers)

    def touch_files(self, filenames: Collection[str], plugin_name: str | None = None) -> None:
        self._touched.setdefault(plugin_name or "", set()).update(filenames)
        self._write(lambda names: self._touch_files(names, plugin_name), filenames)

    def add_fresh(self, kind: str, fresh: Mapping[str, Collection[Any]]) -> None:
        """Take items known to be new (from a :class:`~pytest_distcov.engine.tap.TracerTap`).

        They skip the comparison with what was given before, and are not remembered for it:
        coverage's own flush at the end gives them again, and then they go to the data file.
        """
        with self._lock:
            if os.getpid() != self._pid:
                self._forked()
            self._deliver(kind, dict(fresh))

    def _real(self, kind: str) -> Callable[[dict[str, Collection[Any]]], None]:
        add = self._real_add(kind)

        def write(items: dict[str, Collection[Any]]) -> None:
            self._write(add, items)

        return write

    def _real_add(self, kind: str) -> Callable[[dict[str, Collection[Any]]], None]:
        return self._add_lines if kind == "lines" else self._add_arcs

    def _write(self, write: Callable[[Any], None], items: Any) -> bool:
        """``write(items)`` to the data file; False (with one note, and no more writes) when
        the disk refuses it. Other errors are coverage's to tell: they are raised."""
        if self.failed:
            return False
        try:
            write(items)
        except (CoverageException, sqlite3.Error, OSError) as exc:
            cause = exc.__cause__ if isinstance(exc, CoverageException) else exc
            if not isinstance(cause, (sqlite3.Error, OSError)):
                raise
            self.failed = str(cause)
            where = os.path.dirname(self._data.data_filename())
            self._notes.append(
                f"could not write to {where} ({self.failed}): measuring goes on, with this"
                " process's data in memory (should the process die, what it had not handed on"
                " is lost); free space there or set TMPDIR to a larger disk"
            )
            return False
        return True

    def _add(self, kind: str, found: Mapping[str, Collection[Any]]) -> None:
        with self._lock:
            if os.getpid() != self._pid:  # a forked child: coverage gives it a new data file
                self._forked()
            new: dict[str, Collection[Any]] = {}
            for name, items in found.items():
                given = self._given.get(name)
                if given is None:
                    new[name] = items  # even when empty: the file is recorded as measured
                elif not given.issuperset(items):
                    new[name] = [i for i in items if i not in given]
            self._deliver(kind, new)
            for name, items in new.items():
                self._given.setdefault(name, set()).update(items)

    def _deliver(self, kind: str, new: dict[str, Collection[Any]]) -> None:
        """``new`` to the journal while deferring, else to the data file; and to the unsent."""
        if new and self.deferring and self._journal is not None and self._append(kind, new):
            if kind not in self._kinds:  # coverage records the kind (lines or arcs) with an add
                self._real(kind)({})
        elif new or kind not in self._kinds:
            self._real(kind)(new)
        self._kinds.add(kind)
        if self.tracking:
            unsent = self._unsent
            for name, items in new.items():
                unsent.setdefault(name, set()).update(items)
            self._unsent_kind = kind

    def take_unsent(self) -> tuple[str, str, dict[str, set[Hashable]]]:
        """(kind, context label, name -> items): what passed through since the last call."""
        with self._lock:
            unsent, self._unsent = self._unsent, {}
            context = recorded_context(self._data)
            return self._unsent_kind, context, unsent

    def _append(self, kind: str, new: dict[str, Collection[Any]]) -> bool:
        """Journal ``new``; False (and no more journaling) if the journal cannot be written."""
        assert self._journal is not None
        line = encode_record(kind, new)
        try:
            if self._fd is None:
                self._fd = os.open(self._journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(self._fd, line)
        except OSError:
            # Write to the data file directly from now on; what the journal holds goes there
            # too (the journal is left as it is: recovering it again only repeats a union).
            fd, self._fd, self._journal = self._fd, None, None
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._consolidate()
            return False
        self._pending_kind = kind
        for name, items in new.items():
            self._pending.setdefault(name, set()).update(items)
        return True

    def consolidate(self) -> None:
        """Write what the journal holds to the data file, and empty the journal."""
        with self._lock:
            self._consolidate()

    def _consolidate(self) -> None:
        if self._pending:
            if not self._write(self._real_add(self._pending_kind), dict(self._pending)):
                return  # the journal keeps what the data file could not take
            self._pending = {}
        if self._fd is not None:
            os.ftruncate(self._fd, 0)

    def memory_copy(self) -> CoverageData | None:
        """Everything given, in an in-memory ``CoverageData``; None if the data file holds it
        (no write failed)."""
        if not self.failed:
            return None
        copy = CoverageData(no_disk=True)
        given: dict[str, set[Any]] = {n: set(i) for n, i in self._given.items()}
        for name, items in self._pending.items():
            given.setdefault(name, set()).update(items)
        if "arcs" in self._kinds:
            copy.add_arcs(given)
        else:
            copy.add_lines(given)
        if self._tracers:
            copy.add_file_tracers(self._tracers)
        for plugin, names in sorted(self._touched.items()):
            copy.touch_files(sorted(names), plugin or None)
        return copy

    def close(self) -> None:
        """At the end: everything into the data file, the journal closed and removed (it is
        empty: a directory kept after a failed write then holds data files only)."""
        with self._lock:
            self._consolidate()
            if self._fd is not None:
                os.close(self._fd)
                if self._journal is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(self._journal)
            self._fd, self._journal = None, None

    def _forked(self) -> None:
        """A forked child has a data file of its own; the journal is its parent's."""
        self._pid, self._given, self._pending = os.getpid(), {}, {}
        self._kinds, self.tracking, self._unsent = set(), False, {}
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # the child's copy of the descriptor only
        self._fd, self._journal = None, None


class Engine:
    """A measuring ``Coverage`` for this process, writing to ``data_dir``."""

    def __init__(
        self,
        spec: MeasureSpec,
        data_dir: Path,
        label: str,
        *,
        subprocesses: bool,
        partial: bool,
        marks_cache: Path | None = None,
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.data_path = data_dir / f".coverage.{label}"
        self.notes: list[str] = []
        #: how many of the probes' or the monitor's own notes :meth:`flush` took already
        self._inner_notes = 0
        self.core_note = ""
        self.core = "?"
        self._running = False
        #: the data file could not be written and nothing else held the data (see _switch)
        self.disk_full = False
        self.cov = open_coverage(spec, data_file=str(data_dir / ".coverage"), data_suffix=label)
        #: which of coverage.py's internals this engine can use (see covapi.check); a later
        #: check that finds one missing replaces it with a value naming that fallback
        self.internals: CoverageInternals = check(self.cov)
        self.branch = bool(self.cov.get_option("run:branch"))

        self.context = spec.context
        if self.context and self.cov.get_option("run:dynamic_context"):
            raise SettingsError(
                f"--distcov-context={self.context} and [run] dynamic_context ="
                f" {self.cov.get_option('run:dynamic_context')} in"
                f" {_config_name(spec.config_file)} both label contexts: use one of them"
            )
        self.wanted_core = self.cov.get_option("run:core")
        #: measuring with SlipCover's probes (see probes.py) instead of a coverage.py core
        self.use_probes = self._choose_probes(spec)
        self._probes: Probes | None = None
        #: branch coverage from line events on marked code (see branches.py), on 3.12+, with
        #: or without per-test contexts
        self.use_branches = not self.use_probes and self._choose_branches(spec)
        #: per-test contexts from sys.monitoring line events (see monitor.py), on 3.12+
        self.use_monitor = (
            not self.use_probes and not self.use_branches and self._choose_monitor(spec)
        )
        self._monitor: LineMonitor | None = None
        if self.use_probes or self.use_monitor or self.use_branches:
            self.wanted_core = "ctrace"  # a fallback only: the probes or the monitor measure
        elif not self.wanted_core:
            self.wanted_core, note = choose_core(self.cov, contexts=bool(self.context))
            self.core_note = self.core_note or note
        elif self.context and self.wanted_core == "sysmon":
            self.wanted_core, self.core_note = "ctrace", "[run] core = sysmon records no contexts"
        self.cov.set_option("run:core", self.wanted_core)
        #: where the branch engine keeps marked modules across runs (None: nowhere)
        self.marks_cache = marks_cache
        self._label = ""
        quiet = []
        if self.cov.get_option("run:core") == "sysmon":
            # Our flush uses switch_context with one unchanging label: nothing is lost, so the
            # warning about contexts under sysmon does not apply.
            quiet.append("no-sysmon-context")
        if partial:
            # A worker (or the xdist controller) sees only part of the run: "no data" or "module
            # never imported" is only true or false of the combined data.
            quiet += ["no-data-collected", "module-not-imported"]
        if quiet:
            self.cov.set_option(
                "run:disable_warnings", [*self._list_option("run:disable_warnings"), *quiet]
            )
        if not subprocesses:
            # The xdist controller runs no tests. Measuring its subprocesses would only make
            # coverage's .pth start a second tracer in every worker it spawns.
            patch = self._list_option("run:patch")
            self.cov.set_option("run:patch", [p for p in patch if p != "subprocess"])
        # Like coverage.py's own code, pytest-distcov's never belongs in the user's report (it runs
        # in every measured process, but a serial `coverage run -m pytest` never loads it).
        own_code = [str(Path(__file__).resolve().parents[1] / "*")]  # the package, every part
        if os.environ.get(OMIT_ENV):  # a remote worker's start-up module (see remote_worker)
            own_code.append(os.environ[OMIT_ENV])
        self.cov.set_option("run:omit", [*self._list_option("run:omit"), *own_code])
        # With the user's own dynamic contexts, coverage switches (and so flushes) by itself,
        # and a switch of ours would conflict with it.
        self._flush_by_switch = not self.cov.get_option("run:dynamic_context")
        self._new_only: NewOnly | None = None
        self._tap: TracerTap | None = None
        #: undoes what an engine of ours did for ``patch = subprocess`` (None: nothing)
        self._unpatch: Callable[[], None] | None = None

    def _choose_probes(self, spec: MeasureSpec) -> bool:
        """Probes where asked for or (``auto``) where they pay and measure all that is asked.

        ``auto`` falls back to coverage.py with a note naming the reason, except where probes
        are not meant to run (Python 3.12+, where sysmon is the fast path); an explicit
        ``probes`` that cannot measure this run is a usage error naming the setting.
        """
        if spec.engine == "coverage":
            return False
        if sys.version_info[:2] >= (3, 12):
            if spec.engine == "probes":
                self.core_note = (
                    "the probe engine is for Python 3.10 and 3.11; Python 3.12+ uses"
                    " coverage.py's cores (sysmon where it can)"
                )
            return False
        # branch coverage: probes in marked code (branch_probes.py)
        markers = self.branch and (spec.engine == "probes" or BRANCH_PROBES_IN_AUTO)
        reason = (
            probes_available()
            or self._fallback_reason(PROBES)
            or probe_obstacle(self.cov, contexts=bool(self.context), branch_markers=markers)
        )
        if not reason and self.wanted_core:
            reason = f"[run] core = {self.wanted_core} (or COVERAGE_CORE) chooses coverage.py"
        if not reason:
            return True
        if spec.engine == "probes":
            raise SettingsError(f"--distcov-engine=probes cannot measure this run: {reason}")
        if reason != NOT_INSTALLED:  # not having the extra installed is no news
            self.core_note = reason
        return False

    def _choose_monitor(self, spec: MeasureSpec) -> bool:
        """The monitor engine for per-test contexts on Python 3.12+, unless the user chose
        coverage.py (``--distcov-engine=coverage``, or a core other than sysmon) or the run asks
        for what it cannot record: then coverage.py's C tracer, with the reason in the header.
        """
        if not self.context or spec.engine == "coverage":
            return False
        if sys.version_info[:2] < MONITOR_PYTHON:
            return False
        if self.branch and self.core_note:  # why the branch engine could not: that says it
            return False
        reason = monitor_available() or self._fallback_reason(PROBES) or monitor_obstacle(self.cov)
        if not reason and self.wanted_core and self.wanted_core != "sysmon":
            reason = (
                f"[run] core = {self.wanted_core} (or COVERAGE_CORE) chooses coverage.py's"
                " tracer for per-test contexts"
            )
        if reason:
            self.core_note = reason
            return False
        return True

    def _choose_branches(self, spec: MeasureSpec) -> bool:
        """The branch engine for branch coverage on Python 3.12+, unless the user
        chose coverage.py (``--distcov-engine=coverage``, or a core) or the run asks for what
        it cannot measure: then coverage.py's C tracer, with the reason in the header."""
        if not self.branch or spec.engine == "coverage":
            return False
        if sys.version_info[:2] not in BRANCH_PYTHONS:
            return False
        reason = branches_obstacle(self.cov) or self._fallback_reason(PROBES)
        if not reason and self.wanted_core:
            reason = (
                f"[run] core = {self.wanted_core} (or COVERAGE_CORE) chooses coverage.py's"
                " tracer for branch coverage"
            )
        if reason:
            self.core_note = reason
            return False
        return True

    def _fallback_reason(self, name: str) -> str:
        """'' if the start check found ``name``'s internals, else a line naming what lacks."""
        return "" if self.internals[name].on else self.internals.describe(name)

    def _list_option(self, name: str) -> list[str]:
        value = self.cov.get_option(name)
        return [str(v) for v in value] if isinstance(value, list) else []

    @property
    def description(self) -> str:
        """How this engine measures, for the header and the summary."""
        return describe_core(self.core, branch=self.branch)

    def start(self) -> None:
        if self.use_probes:
            try:
                with capture_coverage_warnings(self.notes):
                    self._probes = self._make_probes()
            except CoverageException as exc:
                raise SettingsError(f"cannot start coverage: {exc}") from None
            except RuntimeError as exc:  # coverage.py's internals changed (see probes.py)
                self.use_probes = False
                self.core_note = str(exc)  # and measure with the tracer made ready above
            else:
                self._probes.start()
                self._running = True
                self.core = "probes"
                self._install_new_only()
                self._patch_subprocesses()
                return
        if self.use_monitor or self.use_branches:
            try:
                with capture_coverage_warnings(self.notes):
                    monitor = self._make_monitor()
                    monitor.start()
            except CoverageException as exc:
                raise SettingsError(f"cannot start coverage: {exc}") from None
            except RuntimeError as exc:  # a tool id taken since, coverage.py's internals
                self.use_monitor = self.use_branches = False
                self.core_note = str(exc)  # and measure with the tracer made ready above
            else:
                self._monitor = monitor
                self._running = True
                self.core = "markers" if self.use_branches else "monitor"
                self._patch_subprocesses()
                return
        with capture_coverage_warnings(self.notes):
            try:
                self.cov.start()
            except CoverageException as exc:
                raise SettingsError(f"cannot start coverage: {exc}") from None
        self._running = True
        self._install_new_only()
        info = dict(self.cov.sys_info())
        self.core = CORE_NAMES.get(str(info.get("core")), str(info.get("core")))
        if self.core == "pytrace" and self.wanted_core != "pytrace":
            self.notes.append(
                f"coverage's C extension cannot be loaded here ({ctracer_error()}): measuring"
                " with its pure-Python tracer, which is several times slower"
            )

    def _patch_subprocesses(self) -> None:
        """``patch = subprocess`` under an engine of ours: what ``Coverage.start`` would do
        (the engine's choice made sure it can be done; see ``tracer_setting``)."""
        if "subprocess" in self._list_option("run:patch"):
            try:
                self._unpatch = measure_subprocesses(self.cov)
            except Exception as exc:  # (a setting its serializer cannot write): the run goes on
                self.notes.append(
                    f"[run] patch = subprocess: coverage.py's configuration cannot be handed to"
                    f" subprocesses ({type(exc).__name__}: {exc}), so they are not measured;"
                    " --distcov-engine=coverage measures them"
                )

    def _make_probes(self) -> Probes:
        if not self.branch:
            return Probes(self.cov)
        cache = MarkCache(self.marks_cache) if self.marks_cache is not None else None
        return BranchProbes(self.cov, cache)

    def _make_monitor(self) -> LineMonitor:
        journal = journal_for(self.data_path)
        if not self.use_branches:
            return LineMonitor(self.cov, journal)
        cache = MarkCache(self.marks_cache) if self.marks_cache is not None else None
        return BranchMonitor(self.cov, journal, cache, contexts=bool(self.context))

    def _install_new_only(self) -> None:
        """A :class:`NewOnly` on the data object coverage.py flushes into, and (with a tracer)
        a :class:`TracerTap`, where this run flushes by switch and the start check found what
        they need; a check here of the live objects that finds less names the fallback."""
        if self.context or not self._flush_by_switch or not self.internals[JOURNAL].on:
            return
        data = measuring_data(self.cov)
        if data is None:
            self.internals = self.internals.fell_back(JOURNAL, "no CoverageData once started")
            self.internals = self.internals.fell_back(TAP, "the tap needs the journal")
            return
        journal = journal_for(self.data_path)
        self._new_only = NewOnly(data, journal, self.notes)
        if self._probes is None and self.internals[TAP].on:
            sets = open_tracer_sets(self.cov)
            if isinstance(sets, str):
                self.internals = self.internals.fell_back(TAP, sets)
            else:
                self._tap = TracerTap(sets)

    @property
    def fallbacks(self) -> list[str]:
        """A line for each fallback this engine takes because coverage.py lacks an internal
        (the probe engine's is the header's core note): for the controller's header."""
        names = [PARSES]
        if not self.context and self._flush_by_switch:
            names[:0] = [JOURNAL] if self.use_probes else [JOURNAL, TAP]
        if self.context:  # (thousands of contexts written at once: add_contexts)
            names.append(CONTEXT_BATCH)
        return self.internals.fallbacks(names)

    @property
    def running(self) -> bool:
        return self._running

    @property
    def tapped(self) -> bool:
        """True while the per-test flush reads the tracer's sets in place (a
        :class:`~pytest_distcov.engine.tap.TracerTap`); False where it flushes with coverage.py's
        ``switch_context`` (probes, contexts, a coverage.py release the tap does not know)."""
        return self._tap is not None

    def flush(self) -> None:
        """Make everything measured so far durable: in :attr:`data_path` or its journal."""
        new_only = self._new_only
        if new_only is not None:
            new_only.deferring = True
        try:
            if self._probes is not None:
                if self._running:
                    self._probes.flush()
            elif self._monitor is not None:
                if self._running:
                    self._guarded(self._monitor.flush)
            elif self._running and self._flush_by_switch:
                tap = self._tap
                if tap is not None and tap.usable and new_only is not None:
                    fresh = tap.take()
                    if fresh:
                        new_only.add_fresh(tap.kind, fresh)
                else:
                    # From now on coverage's flush: it gives again what the tap saw (whole
                    # sets), and the file tracers only it writes.
                    self._tap = None
                    self._switch(self._label)
        finally:
            if new_only is not None:
                new_only.deferring = False
        # (a note of the probes or the monitor goes with the worker's next chunk: a worker
        # that dies later keeps it)
        self._take_inner_notes()

    def _take_inner_notes(self) -> None:
        """The notes the probes or the monitor made since the last call, into :attr:`notes`
        (each once)."""
        inner = self._probes or self._monitor
        if inner is not None and len(inner.notes) > self._inner_notes:
            self.notes.extend(n for n in inner.notes[self._inner_notes :] if n not in self.notes)
            self._inner_notes = len(inner.notes)

    def stream_from_memory(self) -> bool:
        """Keep what each flush adds for :meth:`take_fresh` (per-test contexts of the monitor
        engine: :meth:`take_fresh_contexts`); False where it cannot be kept."""
        if self._monitor is not None:
            return self._guarded(self._monitor.start_tracking)
        if self._new_only is None:
            return False
        self._new_only.tracking = True
        return True

    def take_fresh(self) -> tuple[str, dict[str, set[Any]]] | None:
        """(context label, name -> items): what flushes added since the last call, or None when
        only the data file holds everything (then read that, after :meth:`consolidate`)."""
        new_only = self._new_only
        if new_only is None or not new_only.tracking or not new_only.complete:
            return None
        kind, context, fresh = new_only.take_unsent()
        if fresh and kind != ("arcs" if self.branch else "lines"):
            return None  # not expected: the data file decides
        return context, fresh

    def take_fresh_contexts(self) -> dict[str, dict[str, Any]] | None:
        """label -> file -> lines: the test phases measured since the last call (the monitor
        engine, streaming from memory), or None where the data file holds them."""
        monitor = self._monitor
        if monitor is None or not monitor.tracking:
            return None
        return monitor.take_unsent()

    def consolidate(self) -> None:
        """Move what the journal holds into :attr:`data_path` (before reading that file)."""
        if self._new_only is not None:
            self._new_only.consolidate()
        if self._monitor is not None and self._running:
            self._guarded(self._monitor.consolidate)

    def switch(self, label: str) -> None:
        """Record what runs from now on under ``label`` (per-test contexts); flushes too."""
        if self._running and self._switch(label):
            self._label = label

    def _switch(self, label: str) -> bool:
        """``cov.switch_context`` (it flushes into the data file), or the monitor's switch."""
        monitor = self._monitor
        if monitor is not None:
            return self._guarded(lambda: monitor.switch(label))
        return self._guarded(lambda: self.cov.switch_context(label))

    def _guarded(self, write: Callable[[], object]) -> bool:
        """``write()``, a write of the data file. Where only that file holds the data (per-test
        contexts: elsewhere NewOnly keeps it in memory), a write the disk refuses stops
        measuring in this process, with one note; then False."""
        try:
            write()
        except (CoverageException, sqlite3.Error, OSError) as exc:
            # coverage.py wraps most SQLite errors in DataError, but passes some on as they are
            # (its executescript): a full disk can surface as either.
            self._refused(exc)
            with contextlib.suppress(Exception):  # stopping only; nothing more is written
                if self._monitor is not None:
                    self._monitor.stop()
                else:
                    self.cov.stop()
            self._running = False
            return False
        return True

    def _refused(self, exc: Exception) -> None:
        """A write of the data file failed: one note if the disk refused it, else raise."""
        cause = exc if isinstance(exc, (sqlite3.Error, OSError)) else exc.__cause__
        if not isinstance(cause, (sqlite3.Error, OSError)):
            raise exc
        self.disk_full = True
        self.notes.append(
            f"could not write to {self.data_dir} ({cause}): this run's contexts are kept only in"
            " the data file, so this process stopped measuring there (what it ran after that"
            " is not in the data); free space there or set TMPDIR to a larger disk"
        )

    def _salvage(self) -> CoverageData:
        """After a refused write (see _switch): what the data file holds, if it is readable."""
        from pytest_distcov.data.readers import read_data_file

        try:
            return read_data_file(self.data_path)
        except DistCovError:
            return CoverageData(no_disk=True)

    def pause(self) -> None:
        if self._probes is not None:
            self._probes.pause()
            self._running = False
        elif self._monitor is not None:
            if self._running:
                self._monitor.pause()
                self._running = False
        elif self._running:
            with capture_coverage_warnings(self.notes):
                self.cov.stop()
            self._running = False

    def resume(self) -> None:
        if self._probes is not None:
            self._probes.resume()
            self._running = True
        elif self._monitor is not None:
            if not self._running and not self.disk_full:
                self._monitor.resume()
                self._running = True
        elif not self._running and not self.disk_full:
            with capture_coverage_warnings(self.notes):
                self.cov.start()
            self._running = True

    def finish(self) -> CoverageData:
        """Stop measuring; return the complete data (also on disk at :attr:`data_path`)."""
        unpatch, self._unpatch = self._unpatch, None
        if unpatch is not None:
            unpatch()  # (processes started from here on are not this run's)
        if self._probes is not None:
            self._running = False
            with capture_coverage_warnings(self.notes):
                data = self._probes.finish()
            self._take_inner_notes()
        elif self._monitor is not None and not self.disk_full:
            self._running = False
            with capture_coverage_warnings(self.notes):
                try:
                    data = self._monitor.finish()
                except (CoverageException, sqlite3.Error, OSError) as exc:
                    self._refused(exc)
                    data = self._salvage()
            self._take_inner_notes()
        elif self.disk_full:
            data = self._salvage()
        else:
            with capture_coverage_warnings(self.notes):
                self.cov.stop()
                self._running = False
                try:
                    data = self.cov.get_data()
                except CoverageException as exc:  # (with NewOnly, a disk error never gets here)
                    self._refused(exc)
                    data = self._salvage()
        if self._new_only is not None:
            self._new_only.close()
            data = self._new_only.memory_copy() or data  # the file lacks what it refused
        return data

    def subprocess_files(self) -> list[str]:
        """Data files written by measured subprocesses of this process (``patch = subprocess``)."""
        own = self.data_path.name
        return sorted(
            str(p)
            for p in self.data_dir.glob(".coverage.*")
            if p.name != own and not p.name.endswith(JOURNAL_SUFFIX) and p.is_file()
        )

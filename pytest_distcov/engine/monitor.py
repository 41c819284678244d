"""The monitor engine (Python 3.12+): per-test contexts from ``sys.monitoring`` line events.

coverage.py records per-test contexts only with a trace function (its sysmon core records each
line once per process, so it refuses dynamic contexts), and a trace function is called for
every line the whole process runs: several times the time of the suite on Python 3.12 and 3.13.
This engine records the same thing with ``sys.monitoring``:

* only the measured code has line events: ``LINE`` is turned on as a *local* event of each code
  object of the modules coverage.py would measure (found as they are imported, see
  :mod:`.imports`), never as a global event, so pytest's own code and every library's run at
  full speed, without even a ``PY_START`` callback to decide about them;
* the callback adds the line to the current phase's set and returns ``DISABLE``: the line is
  not seen again in this phase. At every test phase (:meth:`LineMonitor.switch`) the code
  objects whose lines fired in the ending phase get their events again (their local events set
  to none and back), so each of their lines fires once more. A test costs one callback per
  distinct line it runs, however often it runs it, and the code objects it ran are
  re-instrumented once; nothing else in the process is touched (``sys.monitoring``'s own
  ``restart_events`` would also make every other code object the process runs, pytest's
  included, be re-instrumented after each phase, and re-enable other tools' events);
* from Python 3.13 a code object's first line fires no ``LINE`` event where it is the line the
  code starts on (a lambda, ``def f(): return 1``, an empty module's line 0) unless ``PY_START``
  is on too, as it is for a trace function: measured code has a local ``PY_START`` event there
  as well, whose callback only returns ``DISABLE``;
* at a switch, what the ending phase ran is kept under that phase's label (joined to ``[run]
  context`` as coverage.py joins them). After each test (:meth:`LineMonitor.flush`) the phases
  not yet durable are appended to a journal beside the data file, one line each (one
  ``write``: an SQLite transaction per phase cost more than the measuring), which crash
  recovery reads as it reads the data file. A worker streams the phases from memory
  (:meth:`LineMonitor.take_unsent`), so its data file is not written during the run at all;
  elsewhere (in-process, the xdist controller) the phases go into coverage.py's data file in
  batches, through an in-memory ``CoverageData`` and one ``CoverageData.update`` (one
  transaction), and the journal is emptied.

What coverage.py's tracer would record under each label is recorded under it: the lines each
phase runs, in the files coverage.py measures (its own decision, see
:class:`pytest_distcov.covapi.probes.CoverageSide`), as it names them. Lines only: branch
coverage with contexts uses coverage.py's tracer, as do the settings listed in
:func:`monitor_obstacle`.

Other ``sys.monitoring`` tools (a debugger, a profiler, coverage.py's own sysmon core) are left
alone: the engine uses its own tool id, sets events only on the measured code objects, for
itself, and never calls ``restart_events``, so no other tool's disabled events come back.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coverage import Coverage, CoverageData

from pytest_distcov.covapi.probes import missing as missing_internals
from pytest_distcov.data.journal import RecordEncoder
from pytest_distcov.data.merge import add_contexts

from .imports import ImportedCode, tracer_setting

__all__ = [
    "MONITOR_PYTHON",
    "TOOL_IDS",
    "LineMonitor",
    "free_tool_id",
    "monitor_available",
    "monitor_obstacle",
]

#: The first Python with sys.monitoring.
MONITOR_PYTHON = (3, 12)
#: The sys.monitoring tool ids the engine may take: the two PEP 669 leaves unassigned (0 is the
#: debugger's, 1 coverage.py's, 2 the profiler's, 5 the optimizer's), never another tool's.
TOOL_IDS = (3, 4)
TOOL_NAME = "pytest-distcov"
#: Phases kept before they are written to the data file in one batch (where nothing streams
#: them from memory): bounds the memory they take, and each batch's cost is one transaction.
BATCH = 500

#: (context label, coverage.py's file name -> lines): what one test phase ran
Phase = tuple[str | None, dict[str, Any]]


def _monitoring() -> Any:
    """``sys.monitoring`` (Python 3.12+; the type check is made for 3.10, which lacks it)."""
    return sys.monitoring  # type: ignore[attr-defined]


def free_tool_id() -> int | None:
    """A tool id of :data:`TOOL_IDS` that no tool uses now, or None."""
    if not hasattr(sys, "monitoring"):
        return None
    monitoring = _monitoring()
    for tool in TOOL_IDS:
        if monitoring.get_tool(tool) is None:
            return tool
    return None


def monitor_available(version: tuple[int, int] = sys.version_info[:2]) -> str:
    """'' if the monitor engine can run here, else why not (for the header's note)."""
    if version < MONITOR_PYTHON or not hasattr(sys, "monitoring"):
        return "per-test contexts need a trace function before Python 3.12"
    if sys.implementation.name != "cpython":  # pragma: no cover - CPython only is tested
        return "the monitor engine needs CPython"
    gone = missing_internals(Coverage)
    if gone:
        return (
            f"the monitor engine needs coverage.py internals that this release lacks"
            f" ({', '.join(gone)})"
        )
    if free_tool_id() is None:
        return (
            f"sys.monitoring tool ids {' and '.join(map(str, TOOL_IDS))} are both in use"
            f" ({', '.join(str(_monitoring().get_tool(t)) for t in TOOL_IDS)})"
        )
    return ""


def monitor_obstacle(cov: Coverage) -> str:
    """'' if the monitor engine can record everything this run asks for, else the setting that
    makes per-test contexts need coverage.py's tracer (named for the header's note)."""
    setting = tracer_setting(cov)
    return f"per-test contexts with {setting} need coverage.py's tracer" if setting else ""


class LineMonitor(ImportedCode):
    """Line events on the measured code; each test phase's lines under the phase's label."""

    stopping = "line events"
    #: what a phase records of each file: its lines (a subclass may record arcs)
    kind = "lines"

    def __init__(self, cov: Coverage, journal: Path | None = None) -> None:
        tool = free_tool_id()
        if tool is None:
            raise RuntimeError(monitor_available() or "no sys.monitoring tool id is free")
        super().__init__(cov)
        self.tool = tool
        static = cov.get_option("run:context")
        #: ``[run] context``: coverage.py joins it to every label (``static|label``)
        self._static = str(static) if static else None
        #: the label what runs now is recorded under (coverage.py's form)
        self._context = self._static
        #: id(code) -> lines run since the phase began (filled by the callbacks)
        self._current: dict[int, set[int]] = {}
        self._on_line = _line_callback(self._current)
        self._on_start = _start_callback(self._current)
        #: ids of the code objects whose events fired (and were disabled) in this phase
        self._fired: set[int] = set()
        #: the last phase's sets, by code id, and what was read of each: a callback of another
        #: thread that looked its set up before the phase ended may add to it afterwards
        self._read: dict[int, tuple[set[int], frozenset[int]]] = {}
        #: ids of the code objects whose lines were disabled while paused (no recording)
        self._paused_fired: set[int] = set()
        self._on_paused_line = _paused_callback(self._paused_fired)
        events = _monitoring().events
        #: the local events of measured code (see the module's docstring for PY_START)
        self._events = events.LINE | (events.PY_START if sys.version_info >= (3, 13) else 0)
        #: every code object with line events on, by id (they are kept alive here)
        self._codes: dict[int, types.CodeType] = {}
        self._started = False
        self._paused = False
        self._journal = journal
        self._encoder = RecordEncoder(self.kind)
        self._fd: int | None = None
        #: phases not yet in the journal, and not yet in the data file
        self._unjournaled: list[Phase] = []
        self._unwritten: list[Phase] = []
        #: True while a worker streams from memory (:meth:`take_unsent`): the data file is then
        #: not written, and the journal keeps everything
        self.tracking = False
        #: label -> file -> lines, since the last take_unsent (sets not to be changed)
        self._unsent: dict[str, dict[str, Any]] = {}

    def start(self) -> None:
        if self._started:
            return
        monitoring = _monitoring()
        try:
            monitoring.use_tool_id(self.tool, TOOL_NAME)
        except ValueError as exc:  # taken since the engine was chosen
            raise RuntimeError(f"sys.monitoring tool id {self.tool}: {exc}") from None
        self._started = True
        monitoring.register_callback(self.tool, monitoring.events.LINE, self._on_line)
        monitoring.register_callback(self.tool, monitoring.events.PY_START, self._on_start)
        # line (or arc) data from the start, as coverage.py's tracer makes it
        (self.data.add_arcs if self.kind == "arcs" else self.data.add_lines)({})
        self.hook()

    def prepare(self, code: types.CodeType, module_globals: dict[str, Any]) -> types.CodeType:
        """Line events for a module about to run (it is recorded as measured, as coverage.py's
        tracer records a file when its code starts, even if it has no line to run)."""
        self._enable(code)
        if not self._paused:
            self._current.setdefault(id(code), set())
        return code

    def adopt_loaded(self) -> None:
        for func in self.loaded_functions():
            self._enable(func.__code__)

    def _enable(self, code: types.CodeType) -> None:
        """Line events for ``code`` and all the code nested in it (functions, classes,
        comprehensions made when it runs share these code objects)."""
        if not self._started:
            return
        codes = self._codes
        pending = [code]
        monitoring = _monitoring()
        set_local_events = monitoring.set_local_events
        events = self._events
        while pending:
            item = pending.pop()
            if id(item) in codes:
                continue
            codes[id(item)] = item
            set_local_events(self.tool, item, events)
            pending.extend(c for c in item.co_consts if type(c) is types.CodeType)

    def label(self, name: str) -> str | None:
        """The context ``name`` is recorded under: joined to ``[run] context`` if there is one,
        as ``Coverage.switch_context`` joins them."""
        if self._static:
            return f"{self._static}|{name}" if name else self._static
        return name

    def switch(self, name: str) -> None:
        """Keep what the ending phase ran under its label; then ``name``'s phase, with every
        line able to fire once more."""
        self._end_phase()
        self._context = self.label(name)
        self._rearm(self._fired)

    def _rearm(self, fired: set[int]) -> None:
        """Events again for the code objects in ``fired`` (their disabled lines fire once
        more): their local events set to none and back, which re-instruments them now."""
        if not fired:
            return
        monitoring = _monitoring()
        set_local_events = monitoring.set_local_events
        tool, events, codes = self.tool, self._events, self._codes
        ids = list(fired)  # (another thread may add to it meanwhile: those wait for the next)
        fired.difference_update(ids)
        for code_id in ids:
            code = codes.get(code_id)
            if code is not None:
                set_local_events(tool, code, 0)
                set_local_events(tool, code, events)

    def _end_phase(self) -> None:
        """What ran since the phase began (or the last flush), under the current label.

        Each code object's lines are taken as a frozenset, and what a phase records of a file
        is never changed in place (a file's items are joined into a new set): the engine may
        hand out the same set for many phases (:meth:`recorded`)."""
        current = self._current
        taken = dict(current)
        if taken:
            # (not clear(): a set another thread's callback made since the copy stays)
            for code_id in taken:
                current.pop(code_id, None)
            self._fired.update(taken)
        read: dict[int, tuple[set[int], frozenset[int]]] = {}
        for code_id, found in taken.items():
            read[code_id] = (found, frozenset(found))  # (a copy in one step)
        late, self._read = self._read, read
        ran = {code_id: seen for code_id, (_, seen) in read.items()}
        for code_id, (found, seen) in late.items():
            if len(found) != len(seen):  # added to after it was read: kept now
                ran[code_id] = ran.get(code_id, frozenset()) | found.difference(seen)
                self._fired.add(code_id)  # (its event was disabled after it was re-armed)
        codes = self._codes
        name_for = self.side.name_for  # (a lookup in its own table, once a file is known)
        parts: dict[str, list[frozenset[Any]]] = {}
        for code_id, lines in ran.items():
            code = codes.get(code_id)
            if code is None:  # pragma: no cover - only measured code has events
                continue
            name = name_for(code.co_filename)
            if name is None:  # pragma: no cover - only measured code has events
                continue
            parts.setdefault(name, []).append(self.recorded(code, lines))
        # (one code object's set as it is, the shared one; several joined in one step)
        named: dict[str, Any] = {
            name: found[0] if len(found) == 1 else frozenset().union(*found)
            for name, found in parts.items()
        }
        self.add_more(named)
        if not named:
            return
        phase = (self._context, named)
        self._unjournaled.append(phase)
        if self.tracking:
            unsent = self._unsent.setdefault(self._context or "", {})
            for name, lines in named.items():
                # (the phase's own set, never changed: a new one where a label comes again)
                unsent[name] = unsent[name] | lines if name in unsent else lines
        else:
            self._unwritten.append(phase)
            if len(self._unwritten) >= BATCH:
                self.consolidate()

    def recorded(self, code: types.CodeType, lines: frozenset[int]) -> frozenset[Any]:
        """What a phase records of ``code`` having run ``lines``: the lines themselves (not
        to be changed by the caller)."""
        return lines

    def add_more(self, named: dict[str, Any]) -> None:
        """Add to a phase's items by file what was measured besides the line events (a
        file's items joined into a new set, never changed in place)."""

    def flush(self) -> None:
        """Make what ran so far durable (after each test): the phases not yet in the journal
        are appended to it in one ``write``; without a journal, written to the data file.

        A write the disk refuses raises (``OSError``; coverage.py's ``DataError`` or SQLite's
        error from the data file): the engine then stops measuring here, with a note.
        """
        self._end_phase()
        if not self._unjournaled:
            return
        if self._journal is None:
            self.consolidate()
            return
        phases, self._unjournaled = self._unjournaled, []
        if self._fd is None:
            self._fd = os.open(self._journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        encode = self._encoder.encode
        os.write(self._fd, b"".join(encode(n, c) for c, n in phases))

    def consolidate(self) -> None:
        """Write the phases kept in memory to the data file, one transaction in all, and empty
        the journal (what it holds is then in the data file). Streaming from memory, nothing
        is kept for the data file: the journal keeps everything."""
        if self.tracking:
            return
        phases, self._unwritten = self._unwritten, []
        self._unjournaled = []
        if phases:
            by_context: dict[str | None, dict[str, set[Any]]] = {}
            for context, named in phases:
                files = by_context.setdefault(context, {})
                for name, lines in named.items():
                    files.setdefault(name, set()).update(lines)
            add_contexts(self.data, by_context, arcs=self.kind == "arcs")
        if self._fd is not None:
            os.ftruncate(self._fd, 0)

    def start_tracking(self) -> None:
        """From now on a worker streams the phases from memory (:meth:`take_unsent`); what was
        kept for the data file until now is written there first."""
        self.consolidate()
        self.tracking = True

    def take_unsent(self) -> dict[str, dict[str, Any]]:
        """label ('' for none) -> file -> lines: what ran since the last call (while
        :attr:`tracking`), each test phase once."""
        self._end_phase()
        unsent, self._unsent = self._unsent, {}
        return unsent

    def pause(self) -> None:
        """Record nothing until :meth:`resume` (what ran before is kept for the next write)."""
        if self._started and not self._paused:
            self._paused = True
            monitoring = _monitoring()
            monitoring.register_callback(self.tool, monitoring.events.LINE, self._on_paused_line)

    def resume(self) -> None:
        """Record again; a line run while paused fires again when it runs next."""
        if self._started and self._paused:
            self._paused = False
            monitoring = _monitoring()
            monitoring.register_callback(self.tool, monitoring.events.LINE, self._on_line)
            self._rearm(self._paused_fired)

    def finish(self) -> CoverageData:
        """Keep the last phase, stop, and add coverage.py's after-run work (the never-imported
        files of ``[run] source``). The data file then holds everything, except while
        streaming from memory: then the journal does (for recovery, until the worker's last
        chunk is sent), and :meth:`take_unsent` the rest."""
        try:
            if self.tracking:
                self.flush()
            else:
                self._end_phase()
                self.consolidate()
        finally:
            self.stop()
            self._close_journal(remove=not self.tracking)
        self.side.finish()
        return self.data

    def _close_journal(self, *, remove: bool) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if remove and self._journal is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._journal)

    def stop(self) -> None:
        """No more events, for our code objects or new ones; the tool id is free again."""
        if not self._started:
            return
        self._started = False
        self.unhook()
        monitoring = _monitoring()
        monitoring.register_callback(self.tool, monitoring.events.LINE, None)
        monitoring.register_callback(self.tool, monitoring.events.PY_START, None)
        clear: Callable[[int], None] | None = getattr(monitoring, "clear_tool_id", None)
        if clear is not None:  # 3.14+
            clear(self.tool)
        else:
            for code in self._codes.values():
                monitoring.set_local_events(self.tool, code, 0)
        self._codes.clear()
        monitoring.free_tool_id(self.tool)


def _line_callback(current: dict[int, set[int]]) -> Callable[[types.CodeType, int], Any]:
    """The LINE callback: the line into ``current`` (by the code object's id), and no more
    events for it in this phase. As little as can be: it runs once per line per test phase."""
    disable = _monitoring().DISABLE

    def on_line(code: types.CodeType, line: int) -> Any:
        try:
            current[id(code)].add(line)
        except KeyError:
            current[id(code)] = {line}
        return disable

    return on_line


def _start_callback(current: dict[int, set[int]]) -> Callable[[types.CodeType, int], Any]:
    """The PY_START callback (3.13+, see the module's docstring): the code object counts as run
    in this phase (as coverage.py's tracer records a file at a call), no more for this phase."""
    disable = _monitoring().DISABLE

    def on_start(code: types.CodeType, offset: int) -> Any:
        if id(code) not in current:
            current[id(code)] = set()
        return disable

    return on_start


def _paused_callback(fired: set[int]) -> Callable[[types.CodeType, int], Any]:
    """The LINE callback while paused: nothing recorded; the line is disabled, and its code
    object gets its events again when measuring resumes."""
    disable = _monitoring().DISABLE

    def on_paused_line(code: types.CodeType, line: int) -> Any:
        fired.add(id(code))
        return disable

    return on_paused_line

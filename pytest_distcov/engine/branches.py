"""The branch engine (Python 3.12+): branch coverage from line events on marked code.

Before Python 3.14, ``sys.monitoring`` cannot say which way a branch went and then stop
asking (its ``BRANCH`` event, once disabled, is off for both ways), so coverage.py measures
branches there with a trace function, called for every line the process runs. From 3.14
coverage.py's sysmon core measures them with ``BRANCH_LEFT``/``BRANCH_RIGHT`` events, whose
answers differ from its C tracer's in places (a ``break`` out of an ``if`` counts as the
``if``'s other way too). This engine measures them with line events alone, at the cost of
line coverage, with the C tracer's answers:

* each measured module is compiled from its source with branch markers
  (:mod:`.marks`): a ``pass`` with a line number of its own (past the file's end, or with
  per-test contexts on 3.12 and 3.13 a blank or comment line near its code:
  :mod:`.nearlines`), at the
  start of each way out of every line coverage.py's parser gives more than one exit; the
  marker's line event means the arc coverage.py's parser names for that way was taken;
* the marked code gets the monitor engine's local ``LINE`` (and ``PY_START``) events, each
  disabled after it fires (:class:`~pytest_distcov.engine.monitor.LineMonitor`): a line
  costs one callback per process (per test phase with per-test contexts), however often it
  runs;
* what a phase ran is recorded as arcs: a marker as its arcs, a real line ``L`` as
  ``(-1, L)`` where none of those starts or ends on it (coverage.py's reports take the
  executed lines from both ends of the arcs: :meth:`MarkedModules.arcs_of`). The reports
  then give what coverage.py's C tracer gives: the same executed and missing lines, the same
  executed and missing branches (tests/test_branches.py compares the JSON reports).

Modules pytest's assertion rewriter runs (test modules, conftests) are marked before their
asserts are rewritten, as pytest rewrites them. Functions of modules imported before the
engine started get the marked code of their module (``__code__`` replaced, when every one of
them has its marked twin). A file that cannot be marked exactly (a construct :mod:`.marks`
does not know, a source that does not match the code that runs, source that cannot be read)
is measured by coverage.py's own tracer, for that file alone
(:class:`~pytest_distcov.covapi.collector.OwnTracer`), with one ``distcov:`` note for the
run saying how many files and why the first. So is code that is not what its source compiles
to (from a loader other than Python's own, or a function pytest rewrote), which marking would
replace. Where an exception raised on a branch line takes one of that line's branches for
the C tracer (it leaves the code there, or a ``with`` or ``finally`` around it runs next),
handlers in the marked code record that arc (:mod:`.catchers`, as on 3.10/3.11): nothing runs
for an exception elsewhere. With per-test contexts the line an exception leaves a frame on
counts as run in the phase, whatever the line (``PY_UNWIND``), and a generator resumed in a
later phase counts its line as run there, as the tracer's next arc does (``PY_RESUME``).
"""

from __future__ import annotations

import abc
import ast
import contextlib
import functools
import hashlib
import importlib.util
import marshal
import os
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Collection, Hashable, Iterator
from pathlib import Path
from typing import Any, cast

import coverage
from coverage import Coverage

from pytest_distcov.covapi.collector import OwnTracer, missing_own_tracer
from pytest_distcov.covapi.parser import exits_of

from .catchers import ExceptionArcs, add_catchers, bind
from .imports import ImportedCode, plain_source, rewriter_missing, tracer_setting
from .marks import MarkPlan, Unmarkable, plan
from .monitor import LineMonitor, monitor_available
from .nearlines import codes_of, relocate
from .tap import TracerTap

__all__ = ["BRANCH_PYTHONS", "BranchMonitor", "MarkCache", "MarkedModules", "branches_obstacle"]

#: The Pythons this engine measures branches on (the tests compare its reports with the C
#: tracer's on each of them; a newer one uses coverage.py until it has been).
BRANCH_PYTHONS = ((3, 12), (3, 13), (3, 14), (3, 15))

Arc = tuple[int, int]
#: A marked file's markers: each marker's line -> the arcs it stands for
Table = dict[int, tuple[Arc, ...]]
#: Ways through a code object whose arcs :meth:`BranchMonitor.recorded` keeps (all forgotten
#: when there are this many: a bound on its memory, some megabytes with large functions).
RECORDED_KEPT = 4096


def branches_obstacle(cov: Coverage, version: tuple[int, int] = sys.version_info[:2]) -> str:
    """'' if the branch engine can measure this run exactly, else why not (for the header)."""
    if version not in BRANCH_PYTHONS:
        return "branch markers are used on Python 3.12 to 3.15"
    reason = monitor_available(version)
    if reason:
        return reason
    setting = tracer_setting(
        cov, (cov.get_option("run:dynamic_context"), "[run] dynamic_context"), branch=False
    )
    if setting:
        return f"branch coverage with {setting} needs coverage.py's tracer"
    gone = rewriter_missing()
    if gone:
        return f"branch markers need pytest's assertion rewriter ({', '.join(gone)})"
    return ""


def _lines_of(code: types.CodeType) -> set[int]:
    """Every line number ``code`` and the code nested in it can run."""
    return {line for item in codes_of(code) for _, _, line in item.co_lines() if line is not None}


#: Bump when what the mark cache stores changes meaning.
_CACHE_FORMAT = 4
#: The ending of a cache file being written.
_TMP = ".tmp"
#: Marked modules the cache keeps (pruned to this when it holds twice as many).
_CACHE_KEEP = 5000
#: A cached marked module: (its markers, the marked code)
Marked = tuple[Table, types.CodeType]


class MarkCache:
    """Marked modules kept across runs, one file each, as Python keeps ``.pyc`` files.

    Marking a module costs a parse by coverage.py's parser (several times its compile): a
    later run of the same source, on the same Python and coverage.py, loads the marked code
    and its markers' arcs instead. A file is named by a digest of everything the result
    depends on, written whole under a temporary name and renamed (workers share the
    directory), and read with ``marshal`` as the interpreter reads ``__pycache__``: it is
    trusted as much as the checkout's ``.pyc`` files. Anything unexpected in it (another
    format, a file that does not load) means the module is marked afresh; a cache never
    fails an import.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        #: entries this process loaded or stored: :meth:`prune` never keeps fewer
        self.used = 0
        #: when this process began using the cache: an entry used since (by it or by another
        #: process of the run, whose workers start after the controller) is never pruned
        self.started = time.time()

    @staticmethod
    def key(filename: str, source: bytes, engine: str = "") -> str:
        h = hashlib.sha256()
        parts = (
            str(_CACHE_FORMAT),
            _marking_code(),
            coverage.__version__,
            sys.version,
            engine,  # (the marked code of an engine with catchers differs: see .catchers)
            filename,
        )
        for part in parts:
            h.update(part.encode("utf-8", "surrogatepass") + b"\0")
        h.update(str(sys.flags.optimize).encode() + b"\0")
        h.update(source)
        return h.hexdigest()[:40]

    def load(self, key: str, filename: str) -> Marked | None:
        """The marked module stored under ``key`` for ``filename``, or None."""
        path = self.directory / f"{key}.marks"
        try:
            found = marshal.loads(path.read_bytes())
        except Exception:  # whatever a damaged file makes marshal raise (MemoryError too):
            return None  # a miss, so the module is marked again and its entry replaced
        if not (isinstance(found, tuple) and len(found) == 3 and found[0] == _CACHE_FORMAT):
            return None
        _, table, code = found
        if not (
            type(table) is dict
            and all(
                type(line) is int and type(a) is tuple and all(_is_arc(x) for x in a)
                for line, a in table.items()
            )
            and type(code) is types.CodeType
            and code.co_filename == filename
        ):
            return None
        with contextlib.suppress(OSError):  # used now: pruned last
            os.utime(path)
        self.used += 1
        return table, code

    def store(self, key: str, marked: Marked) -> None:
        table, code = marked
        target = self.directory / f"{key}.marks"
        # (as ParseCache.save writes: a name of this process's and thread's own, renamed)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}{_TMP}")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(marshal.dumps((_CACHE_FORMAT, table, code)))
            os.replace(tmp, target)
            self.used += 1
        except (OSError, ValueError):  # a cache only: the next run marks the module again
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    def prune(self, keep: int = _CACHE_KEEP) -> None:
        """Keep the ``keep`` files used last (a module marked again for every edit of its
        source leaves one file per edit), and never fewer than this run used (this process,
        or another that used them since it started: the xdist controller prunes too): a code
        base of more modules (each test module takes two entries) would otherwise mark part
        of itself again at every run. A temporary file a killed run left is removed once it
        is an hour old."""
        try:
            found = list(os.scandir(self.directory))
            stale = time.time() - 3600
            for entry in found:
                if entry.name.endswith(_TMP) and entry.stat().st_mtime < stale:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
            entries = [e for e in found if e.name.endswith(".marks")]
            keep = max(keep, self.used)
            if len(entries) <= 2 * keep:
                return  # (before any stat of them: a code base's thousands of entries)
            keep = max(keep, sum(1 for e in entries if e.stat().st_mtime >= self.started - 1))
            if len(entries) <= 2 * keep:
                return
            entries.sort(key=lambda e: e.stat().st_mtime, reverse=True)
        except OSError:
            return
        for entry in entries[keep:]:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


@functools.cache
def _marking_code() -> str:
    """A digest of the code that marks modules (this module, :mod:`.marks` and the parser's
    door): a change to it, released or not, is never served an older one's marks from the
    cache."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    catchers = here / "catchers.py"  # (what engines add: .catchers)
    imports = here / "imports.py"  # (how pytest's rewriter is run)
    near = here / "nearlines.py"  # (where markers go on 3.12 and 3.13)
    parser = exits_of.__code__.co_filename
    ours = (catchers, imports, near)
    for module in (__file__, plan.__code__.co_filename, parser, *map(str, ours)):
        try:
            h.update(Path(module).read_bytes())
        except OSError:
            h.update(module.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _is_arc(arc: object) -> bool:
    return isinstance(arc, tuple) and len(arc) == 2 and type(arc[0]) is int and type(arc[1]) is int


class MarkedModules(ImportedCode):
    """What the engines that measure branches with markers share (a mixin, before the engine's
    class among the bases): each measured module marked (:mod:`.marks`) and kept in the mark
    cache, the plain-source checks, pytest's rewriter door, the marked twins of functions
    imported before the start, and coverage.py's own tracer for each file that cannot be
    marked. The engine says how marked code is observed; :meth:`arcs_of` turns the lines it
    saw into coverage.py's arcs."""

    #: set by the engine's own ``__init__`` (see :meth:`_init_marking`)
    _started: bool
    _paused: bool

    def _init_marking(self, cov: Coverage, cache: MarkCache | None) -> None:
        self.cache = cache
        gone = missing_own_tracer(cov)  # once CoverageSide made the collector ready
        if gone:
            raise RuntimeError(f"branch markers need coverage.py internals ({', '.join(gone)})")
        #: a code object's file name -> its markers
        self._marks: dict[str, Table] = {}
        #: a marked file's name -> the digest of the source it was marked from
        self._digests: dict[str, bytes] = {}
        #: files measured by coverage.py's tracer -> why they are not marked
        self.unmarked: dict[str, str] = {}
        self._own: OwnTracer | None = None
        self._tap: TracerTap | None = None

    def _recording(self) -> bool:
        """Whether an exception's arc counts now (the catchers' hook asks)."""
        return self._started and not self._paused

    def arcs_of(self, filename: str, lines: Collection[int]) -> set[Arc] | None:
        """The arcs ``lines`` of marked ``filename`` stand for: a marker as its arcs, a line
        ``L`` as ``(-1, L)`` unless one of those arcs starts or ends on it already
        (coverage.py's reports, and its lines' contexts, take the executed lines from both
        ends of the arcs: that arc says it too, and a context's arcs are only ever added to,
        so it keeps saying it; about two arcs in five fewer rows for a data file with per-test
        contexts to write); None if the file is not marked."""
        table = self._marks.get(filename)
        if table is None:
            return None
        arcs: set[Arc] = set()
        plain: list[int] = []
        for line in lines:
            marker = table.get(line)
            if marker is not None:
                arcs.update(marker)
            elif line > 0:
                plain.append(line)
        ends = {n for arc in arcs for n in arc}
        arcs.update((-1, line) for line in plain if line not in ends)
        return arcs

    def add_more(self, named: dict[str, set[Any]]) -> None:
        """What coverage.py's tracer recorded of the unmarked files since the last phase."""
        tap = self._tap
        if tap is None:
            return
        fresh: dict[str, Collection[Hashable]] = tap.take()
        for name, arcs in fresh.items():
            if name in named:
                named[name] = named[name] | set(arcs)  # (a new set: see LineMonitor.add_more)
            else:
                named[name] = set(arcs)

    # -- marking ---------------------------------------------------------------------------

    def prepare(self, code: types.CodeType, module_globals: dict[str, Any]) -> types.CodeType:
        return self._prepare(code, module_globals, rewritten=False)

    def execute(self, code: types.CodeType, module_globals: dict[str, Any]) -> None:
        """A module pytest's assertion rewriter runs: marked, then rewritten as pytest does."""
        exec(self._prepare(code, module_globals, rewritten=True), module_globals)

    def _prepare(
        self, code: types.CodeType, module_globals: dict[str, Any], *, rewritten: bool
    ) -> types.CodeType:
        filename = code.co_filename
        if filename in self.unmarked:
            return code  # coverage.py's tracer measures it
        try:
            if not plain_source(module_globals):
                # Code from a loader that is not Python's own may not be its source's (an
                # import hook that rewrites it): marked, it would lose what the hook did.
                self._check_plain(code, rewritten=rewritten)
            marked = self._marked(code, rewritten=rewritten)
        except Exception as exc:  # whatever it was, the user's import must go on
            self._fall_back(filename, _why(exc))
            return code
        # (the engine's own prepare, next in the method resolution order)
        return super().prepare(self.bound(marked), module_globals)  # type: ignore[safe-super]

    def bound(self, code: types.CodeType) -> types.CodeType:
        """Marked code as it runs under this engine (see the probe engine's)."""
        return code

    def extend(self, marks: MarkPlan, source: str, filename: str) -> None:
        """What this engine adds to a marked module's tree before it is compiled (nothing)."""

    def mark_variant(self) -> str:
        """What the mark cache's key says of the marked code this engine compiles (the
        engine's name; one that adds to the tree says so: :meth:`extend`)."""
        return type(self).__name__

    def near_lines(self) -> bool:
        """Whether markers go on lines near their code (:mod:`.nearlines`) in a file marked
        for the first time (the cache's key says which way it was marked)."""
        return False

    def _check_plain(self, code: types.CodeType, *, rewritten: bool) -> None:
        """Raise :class:`Unmarkable` unless ``code`` is what its source compiles to (as pytest
        rewrites it, for ``rewritten``)."""
        filename = code.co_filename
        source = _read(filename)
        cache = self.cache
        key = self._cache_key(filename, source, "plain", rewritten=rewritten) if cache else ""
        found = cache.load(key, filename) if cache is not None else None
        if found is not None:
            plain = found[1]
        else:
            with _quiet():
                if rewritten:
                    plain = self.pytest_rewritten(ast.parse(source, filename), source, filename)
                else:
                    plain = compile(source, filename, "exec", dont_inherit=True)
            if cache is not None:
                cache.store(key, ({}, plain))
        if plain != code:
            raise Unmarkable("its code is not what its source compiles to (an import hook?)")

    def _cache_key(self, filename: str, source: bytes, what: str, *, rewritten: bool) -> str:
        """The mark cache's key of ``what`` is made of ``source`` (its marked code, or the
        code it compiles to unmarked): by this engine, and for a module pytest's assertion
        rewriter runs, as it rewrites it (:meth:`rewriter_settings`)."""
        assert self.cache is not None
        variant = f"{self.mark_variant()}, {what}"
        if rewritten:
            variant += f", rewritten by {self.rewriter_settings()}"
        return self.cache.key(filename, source, variant)

    def _marked(self, code: types.CodeType, *, rewritten: bool) -> types.CodeType:
        """``code``'s module compiled from its source with branch markers, or raise saying
        why it cannot be (:class:`Unmarkable`, or whatever reading or compiling raised)."""
        marked, table, digest = self._marked_unregistered(code, rewritten=rewritten)
        self._register(code.co_filename, table, digest)
        return marked

    def _register(self, filename: str, table: Table, digest: bytes) -> None:
        """``filename``'s marks are those its code runs with, from now on (with those of its
        code marked before, of the same source: see :meth:`_marked_unregistered`)."""
        self._marks[filename] = table
        self._digests[filename] = digest

    def _marked_unregistered(
        self, code: types.CodeType, *, rewritten: bool
    ) -> tuple[types.CodeType, Table, bytes]:
        """:meth:`_marked`, with its markers (joined to those of the file's code marked
        before) and its source's digest, not yet recorded as the file's (another thread's
        import may mark another file meanwhile).

        A file marked again (imported under another name) must have the same source. Its
        markers stay past the end of the file (:meth:`near_lines`: where they move depends
        on the code, which pytest's assertion rewriter changes), never on a line where the
        first marking's stand for other arcs; one table, the two joined, serves both."""
        filename = code.co_filename
        source = _read(filename)
        cache = self.cache
        near = self.near_lines() and filename not in self._marks
        what = "marked near" if near else "marked"
        key = self._cache_key(filename, source, what, rewritten=rewritten) if cache else ""
        found = cache.load(key, filename) if cache is not None else None
        if found is not None:
            table, marked = found
        else:
            with _quiet():  # a .pyc import shows no SyntaxWarning: neither does marking
                text = importlib.util.decode_source(source)
                marks = plan(text, filename)
                self.extend(marks, text, filename)
                if rewritten:
                    marked = self.pytest_rewritten(marks.tree, source, filename)
                else:
                    marked = compile(marks.tree, filename, "exec", dont_inherit=True)
                moves: dict[int, int] = {}
                if near:
                    marked, moves = relocate(marks, marked, text, filename)
            table = {
                moves.get(line, line): arcs
                for line, arcs in enumerate(marks.arcs, start=marks.base)
            }
        if _lines_of(marked) - table.keys() != _lines_of(code):
            raise Unmarkable("its source does not match the code that runs")
        if cache is not None and found is None:
            cache.store(key, (table, marked))
        digest = hashlib.sha256(source).digest()
        known = self._marks.get(filename)
        if known is not None:
            if self._digests.get(filename) != digest:
                raise Unmarkable("its source changed since it was first imported")
            if any(known.get(line, arcs) != arcs for line, arcs in table.items()):
                raise Unmarkable("it was marked another way when it was first imported")
            table = {**known, **table}
        return marked, table, digest

    def adopt_loaded(self) -> None:
        """The functions of measured modules imported before the engine started run their
        module's marked code from now on; a module where that cannot be done for every one
        of them is measured by coverage.py's tracer."""
        by_file: dict[str, list[types.FunctionType]] = {}
        for func in self.loaded_functions():
            by_file.setdefault(func.__code__.co_filename, []).append(func)
        for filename, funcs in by_file.items():
            if filename in self.unmarked:
                continue
            try:
                twins = self._twins(filename, funcs)
            except Exception as exc:
                self._fall_back(filename, _why(exc))
                continue
            for func, twin in twins:
                self.adopt(func, self.bound(twin))

    @abc.abstractmethod
    def adopt(self, func: types.FunctionType, twin: types.CodeType) -> None:
        """``func`` runs ``twin``, its marked code, from now on (each engine its way)."""

    def _twins(
        self, filename: str, funcs: list[types.FunctionType]
    ) -> list[tuple[types.FunctionType, types.CodeType]]:
        """Each function's code in its module's marked code, or raise if one has none: its
        code must be exactly what its source compiles to (not rewritten by pytest or a hook),
        found by a name and first line that no other code of the module shares."""
        with _quiet():
            module = compile(_read(filename), filename, "exec", dont_inherit=True)
        # (registered only once every function has its twin: else coverage.py's tracer
        # measures the file, and must never see a marker)
        marked, table, digest = self._marked_unregistered(module, rewritten=False)
        plain, twin_of = _index(module), _index(marked)
        twins = []
        for func in funcs:
            code = func.__code__
            key = (_qualname(code), code.co_firstlineno)
            found, twin = plain.get(key), twin_of.get(key)
            if found is None or twin is None:
                raise Unmarkable(f"{key[0]} (line {key[1]}) is not alone on its line")
            if found != code:
                raise Unmarkable(f"{key[0]} is not what its source compiles to (rewritten?)")
            twins.append((func, twin))
        self._register(filename, table, digest)
        return twins

    def _fall_back(self, filename: str, why: str) -> None:
        """``filename`` is measured by coverage.py's tracer, from now on."""
        if filename in self._marks:
            # Marked code of it already runs: its tracer would see the markers' lines too.
            self.notes.append(
                f"{filename} could not be marked again ({why}): what runs of it from the"
                " code imported now is not measured"
            )
            return
        self.unmarked[filename] = why
        if self._own is not None or not self._started:
            return
        try:
            own = OwnTracer(self.cov, self.unmarked.__contains__)
            tap = TracerTap(own.sets)
            own.start()
        except Exception as exc:  # coverage.py's internals, in the middle of a user's import
            self.notes.append(
                f"branch markers: {filename} cannot be marked ({why}) and coverage.py's tracer"
                f" cannot start for it ({type(exc).__name__}: {exc}): it is not measured"
            )
            return
        self._own, self._tap = own, tap
        if self._paused:
            own.pause()

    @property
    def cov(self) -> Coverage:
        return self.side.cov

    def fallback_note(self) -> str:
        """One line on the files coverage.py's tracer measured, '' if none."""
        if not self.unmarked:
            return ""
        first, why = next(iter(self.unmarked.items()))
        count = len(self.unmarked)
        files = "1 file" if count == 1 else f"{count} files"
        return (
            f"branch markers: {files} measured with coverage.py's tracer instead (the first:"
            f" {first}: {why})"
        )

    # -- coverage.py's tracer for the unmarked files follows the engine ----------------------
    # (each calls the engine's own method, next in the method resolution order)

    def pause(self) -> None:
        cast(Any, super()).pause()
        if self._own is not None:
            self._own.pause()

    def resume(self) -> None:
        cast(Any, super()).resume()
        if self._own is not None:
            self._own.resume()

    def stop(self) -> None:
        own, self._own = self._own, None
        try:
            if own is not None:
                own.stop()
        finally:
            cast(Any, super()).stop()

    def finish(self) -> Any:
        data = cast(Any, super()).finish()
        if self.cache is not None:
            self.cache.prune()
        note = self.fallback_note()
        if note and note not in self.notes:
            self.notes.append(note)
        return data


class BranchMonitor(MarkedModules, LineMonitor):
    """Line events on marked code; each phase's lines and markers as coverage.py's arcs."""

    stopping = "branch markers"
    kind = "arcs"

    def __init__(
        self,
        cov: Coverage,
        journal: Path | None = None,
        cache: MarkCache | None = None,
        *,
        contexts: bool = False,
    ) -> None:
        super().__init__(cov, journal)
        self._init_marking(cov, cache)
        self._contexts = contexts
        #: (code id, lines run) -> the arcs they stand for (see :meth:`recorded`)
        self._recorded: dict[tuple[int, frozenset[int]], frozenset[Any]] = {}
        #: Without contexts, an exception raised on a branch line is recorded by handlers in
        #: the marked code (catchers, as on 3.10/3.11: :mod:`.catchers`), not by a global
        #: PY_UNWIND callback that every exception leaving any frame would call.
        self._caught = None if contexts else ExceptionArcs(self._recording)
        #: this engine's own callbacks, by event (with contexts only)
        self._extra: dict[int, Callable[..., Any]] = {}
        #: code id -> its lines by instruction, for the frame events (see _lines_by_lasti)
        self._lines_at: dict[int, list[int | None]] = {}
        if contexts:
            events = sys.monitoring.events  # type: ignore[attr-defined]
            # Per phase, the line an exception leaves a frame on counts as run in that phase
            # (the C tracer's arc to the code's exit starts there, and where that line is a
            # branch line whose other way leaves the code too, the reports count that way as
            # taken): every line is recorded. PY_UNWIND can only be a global event: its
            # callback looks at measured code only.
            self._extra[events.PY_UNWIND] = _frame_line_callback(
                self._codes, self._marks, self._current, self._lines_at, exit_arc=True
            )
            # A generator resumed in a later phase (a fixture's teardown), or thrown into
            # (``throw()``, ``close()``): the C tracer's next arc starts at the line it was
            # suspended on, which so counts as run in that phase.
            self._events |= events.PY_RESUME
            self._extra[events.PY_RESUME] = _resume_callback(self._marks, self._current)
            self._extra[events.PY_THROW] = _frame_line_callback(
                self._codes, self._marks, self._current, self._lines_at, exit_arc=False
            )

    # -- what a phase records --------------------------------------------------------------

    def extend(self, marks: MarkPlan, source: str, filename: str) -> None:
        if self._caught is not None:
            add_catchers(marks)

    def mark_variant(self) -> str:
        return type(self).__name__ + ("" if self._caught is None else "+catchers")

    def near_lines(self) -> bool:
        # With per-test contexts only (a marker fires once a run without them, and moving
        # markers costs a second compile when a module is marked), before 3.14 (which keeps
        # every line's whole delta).
        return self._contexts and sys.version_info < (3, 14)

    def bound(self, code: types.CodeType) -> types.CodeType:
        return code if self._caught is None else bind(code, self._caught.hook)

    def add_more(self, named: dict[str, set[Any]]) -> None:
        caught = self._caught
        if caught is not None:
            caught.take(named, self.side.name_for)
            caught.note_into(self.notes)
        super().add_more(named)

    def start(self) -> None:
        super().start()
        if self._started and self._extra:
            monitoring = sys.monitoring  # type: ignore[attr-defined]
            events = monitoring.events
            self._callbacks(live=True)
            monitoring.set_events(self.tool, events.PY_UNWIND | events.PY_THROW)

    def _callbacks(self, *, live: bool) -> None:
        """This engine's own callbacks (besides the line monitor's) registered, or not."""
        for event, callback in self._extra.items():
            sys.monitoring.register_callback(  # type: ignore[attr-defined]
                self.tool, event, callback if live else None
            )

    def recorded(self, code: types.CodeType, lines: frozenset[int]) -> frozenset[Any]:
        """The arcs ``lines`` of ``code`` stand for. Kept for the next phase that runs the
        same lines of it (with per-test contexts, most tests of a suite run one of a few
        ways through each function): a lookup then, not a computation."""
        cache = self._recorded
        key = (id(code), lines)
        found = cache.get(key)
        if found is not None:
            return found
        arcs: set[Any] | None = self.arcs_of(code.co_filename, lines)
        if arcs is None:  # pragma: no cover - only marked code has events
            return frozenset()
        if self._extra:  # (only the contexts' unwind callback records a line left, negated)
            for line in lines:
                if line < 0:
                    arcs.add((-line, -code.co_firstlineno))
        if len(cache) >= RECORDED_KEPT:
            cache.clear()
        found = cache[key] = frozenset(arcs)
        return found

    def adopt(self, func: types.FunctionType, twin: types.CodeType) -> None:
        func.__code__ = twin
        self._enable(twin)

    # -- this engine's own callbacks follow the engine -------------------------------------

    def pause(self) -> None:
        if self._started and not self._paused:
            self._callbacks(live=False)
        super().pause()

    def resume(self) -> None:
        if self._started and self._paused:
            self._callbacks(live=True)
        super().resume()

    def stop(self) -> None:
        try:
            if self._started:
                monitoring = sys.monitoring  # type: ignore[attr-defined]
                monitoring.set_events(self.tool, 0)
                self._callbacks(live=False)
        finally:
            self._recorded.clear()
            self._lines_at.clear()
            super().stop()


def _frame_line_callback(
    codes: dict[int, types.CodeType],
    marks: dict[str, Table],
    current: dict[int, set[int]],
    tables: dict[int, list[int | None]],
    *,
    exit_arc: bool,
) -> Callable[[types.CodeType, int, BaseException], None]:
    """A callback of a global event (``PY_UNWIND``, ``PY_THROW``) that records the current
    line of a measured frame: as an exit arc's start (``exit_arc``, kept negated: see
    :meth:`BranchMonitor.recorded`) or as a line run. With per-test contexts: every line.

    Every exception leaving any frame calls it (1.7 million times in a worker of pyparsing's
    suite, which parses by raising), so the frame's line is not asked for (``f_lineno`` decodes
    the code's line table from its start on Python 3.12, each time): it is looked up by the
    frame's last instruction in a table made once for each code object (:func:`_lines_by_lasti`),
    which gives ``f_lineno`` (a frame's own line is only ever set while a trace function is
    being called, which no frame leaves by an exception). The instruction offset the event
    passes is not the frame's: in a generator it is the implicit handler's, past the line that
    raised. An instruction outside every range of the table (none is known) is asked for."""
    getframe = sys._getframe
    sign = -1 if exit_arc else 1

    def on_frame_event(code: types.CodeType, offset: int, exception: BaseException) -> None:
        code_id = id(code)
        if code_id not in codes:
            return
        frame = getframe(1)
        if frame.f_code is not code:
            return
        table = tables.get(code_id)
        if table is None:
            table = tables[code_id] = _lines_by_lasti(code, marks.get(code.co_filename))
        index = frame.f_lasti >> 1
        line = table[index] if 0 <= index < len(table) else None
        if line is None:
            line = _kept_line(frame.f_lineno, marks.get(code.co_filename))
        if not line:
            return  # no line, or a marker's line (never the tracer's)
        try:
            current[code_id].add(sign * line)
        except KeyError:
            current[code_id] = {sign * line}

    return on_frame_event


def _lines_by_lasti(code: types.CodeType, markers: Collection[int] | None) -> list[int | None]:
    """What :func:`_frame_line_callback` records for a frame of ``code``, by its ``f_lasti``
    halved (a code unit is two bytes): the instruction's line (:func:`_kept_line`: 0 for
    none), None outside every range (then the frame is asked). One table serves both events
    (each signs the line its way), and the engine empties the tables when it stops."""
    ranges = list(code.co_lines())
    table: list[int | None] = [None] * (max((end for _, end, _ in ranges), default=0) // 2)
    for start, end, line in ranges:
        table[start // 2 : end // 2] = [_kept_line(line, markers)] * (end // 2 - start // 2)
    return table


def _kept_line(line: int | None, markers: Collection[int] | None) -> int:
    """``line`` if a frame event records it, else 0: no line, or a marker's (never the C
    tracer's)."""
    if line is None or line <= 0 or (markers is not None and line in markers):
        return 0
    return line


def _resume_callback(
    marks: dict[str, Table], current: dict[int, set[int]]
) -> Callable[[types.CodeType, int], Any]:
    """The PY_RESUME callback (with per-test contexts): the line a generator or coroutine
    resumes on counts as run in this phase, as in the C tracer's arcs; once per phase."""
    getframe = sys._getframe
    disable = sys.monitoring.DISABLE  # type: ignore[attr-defined]

    def on_resume(code: types.CodeType, offset: int) -> Any:
        frame = getframe(1)
        line = frame.f_lineno if frame.f_code is code else None
        found = marks.get(code.co_filename)
        if line is not None and line > 0 and (found is None or line not in found):
            try:
                current[id(code)].add(line)
            except KeyError:
                current[id(code)] = {line}
        return disable

    return on_resume


def _index(module: types.CodeType) -> dict[tuple[str, int], types.CodeType | None]:
    """Each code object of ``module`` by its name and first line (None where two share them:
    lambdas on one line)."""
    index: dict[tuple[str, int], types.CodeType | None] = {}
    for code in codes_of(module):
        key = (_qualname(code), code.co_firstlineno)
        index[key] = None if key in index else code
    return index


def _read(filename: str) -> bytes:
    try:
        return Path(filename).read_bytes()
    except OSError as exc:
        raise Unmarkable(f"its source cannot be read ({exc.strerror})") from None


#: What compiling a module again can warn of where an import from ``.pyc`` shows nothing:
#: before Python 3.12 an invalid escape sequence is a DeprecationWarning.
_COMPILE_WARNINGS: tuple[type[Warning], ...] = (
    (SyntaxWarning,) if sys.version_info >= (3, 12) else (SyntaxWarning, DeprecationWarning)
)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No SyntaxWarning from compiling a module again (an import from ``.pyc`` shows none;
    nor, before 3.12, a DeprecationWarning)."""
    with contextlib.ExitStack() as stack:
        for category in _COMPILE_WARNINGS:
            stack.enter_context(_ignoring(category))
        yield


@contextlib.contextmanager
def _ignoring(category: type[Warning]) -> Iterator[None]:
    """One filter is put in front and that one taken out again: ``warnings.catch_warnings``
    would restore the whole list as it found it, undoing what another thread (pytest
    recording a test's warnings) did meanwhile. An ignored warning leaves no trace in the
    warning registries, so taking the filter out needs no more."""
    entry = ("ignore", None, category, None, 0)
    if warnings.filters[:1] == [entry]:  # the user's own (-W ignore::SyntaxWarning) stays
        yield  # (one further back, Python's own for DeprecationWarning, may not be the one
        return  # that applies)
    warnings.filterwarnings("ignore", category=category)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            filters: list[Any] = warnings.filters  # type: ignore[assignment]
            filters.remove(entry)


def _qualname(code: types.CodeType) -> str:
    name: str = getattr(code, "co_qualname", code.co_name)  # (3.11+; this engine is 3.12+)
    return name


def _why(exc: BaseException) -> str:
    if isinstance(exc, Unmarkable):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"

"""The probe engine (Python 3.10 and 3.11): SlipCover's bytecode probes, coverage.py's data.

On Python 3.10 and 3.11 every coverage.py core is a trace function, called for every line the
measured code runs. SlipCover (``pip install pytest-distcov[fast]``) instead inserts a probe
at the start of every line of the measured code objects; a probe records its line once, and
probes that keep firing are taken out again, so code that runs a million times costs almost
nothing after its first runs.

Everything around the probes is coverage.py's own, so the data means what coverage.py's means:

* *which files* are measured is decided by coverage.py's own rules (``source``, ``include``,
  ``omit``, the stdlib and third-party rules), through the same object its tracer asks;
* the lines go into coverage.py's data file through :class:`coverage.CoverageData`, under the
  file names coverage.py would use (``relative_files`` included), so streaming, crash recovery,
  combining and every report work unchanged;
* modules imported before measuring starts are measured as under coverage.py: their code that
  runs later counts (their functions get probes), their import-time code does not.

Probes see line *starts*, where coverage.py's tracer also sees the continuation lines of a
statement that spans several lines; coverage.py's reports fold those into the statement's
first line, so the reports agree (the tests compare coverage's JSON reports file by file).

What probes cannot do makes the run use coverage.py instead (see :func:`probe_obstacle`):
branch coverage, contexts, coverage plugins, ``concurrency`` other than threads, ``patch``.

coverage.py has no public API for "should this file be measured" or for adding lines to a
running measurement's data: :class:`pytest_distcov.covapi.probes.CoverageSide` reaches into
``Coverage``'s internals for that, checked before probes are chosen and again when they start:
if a coverage.py release changes them, the run measures with coverage.py's own tracer and says
why.
"""

from __future__ import annotations

import datetime
import gc
import inspect
import sys
import types
import weakref
from collections import defaultdict
from typing import Any

from coverage import Coverage, CoverageData

from pytest_distcov.covapi.probes import missing as missing_internals

from .imports import ImportedCode, tracer_setting

__all__ = ["NOT_INSTALLED", "PROBE_PYTHONS", "Probes", "probe_obstacle", "probes_available"]

#: the Pythons where probes pay: 3.12+ has coverage.py's sysmon core.
PROBE_PYTHONS = ((3, 10), (3, 11))
#: SlipCover releases whose (partly private) interface this module was written against.
SLIPCOVER_SERIES = "1.1."
#: why not, when the ``fast`` extra is simply not installed (``auto`` then says nothing)
NOT_INSTALLED = "the probe engine needs SlipCover: pip install pytest-distcov[fast]"


def probes_available() -> str:
    """'' if SlipCover can be used here, else why not (for the header's fallback note)."""
    if sys.version_info[:2] not in PROBE_PYTHONS:
        return (
            f"the probe engine is for Python 3.10 and 3.11 (this is"
            f" {sys.version_info[0]}.{sys.version_info[1]})"
        )
    if sys.implementation.name != "cpython":
        return "the probe engine needs CPython"
    try:
        import slipcover
    except ImportError:
        return NOT_INSTALLED
    gone = missing_internals(Coverage)
    if gone:
        return (
            f"the probe engine needs coverage.py internals that this release lacks"
            f" ({', '.join(gone)})"
        )
    if not slipcover.__version__.startswith(SLIPCOVER_SERIES):
        return (
            f"the probe engine needs SlipCover {SLIPCOVER_SERIES}x, not {slipcover.__version__}:"
            " pip install pytest-distcov[fast]"
        )
    return ""


def probe_obstacle(cov: Coverage, *, contexts: bool, branch_markers: bool = False) -> str:
    """'' if probes can measure everything this run asks for, else the setting that stops them.

    With ``branch_markers``, branch coverage is measured by probes in marked code
    (:mod:`.branch_probes`) rather than being a setting that stops them. The message names
    the setting, for the fallback note and for the usage error when the user asked for
    ``--distcov-engine=probes``.
    """
    setting = tracer_setting(
        cov,
        (contexts, "per-test contexts (--distcov-context)"),
        (cov.get_option("run:dynamic_context"), "[run] dynamic_context"),
        branch=not branch_markers,
    )
    if setting:
        return f"{setting} needs coverage.py's tracer"
    if branch_markers and cov.get_option("run:branch"):
        from .branch_probes import branch_probes_obstacle

        return branch_probes_obstacle()
    return ""


class _Code:
    """What the probe engine knows about one version of a code object with probes.

    Kept in a dict keyed by ``id(code)``: a code object's own hash is computed afresh on every
    lookup, over its bytecode and, recursively, over all the code nested in it (a module's
    hash covers every function in it), which made dict lookups keyed by code the largest cost
    of removing probes. ``code`` keeps the object alive, so its id is not reused.
    """

    __slots__ = ("code", "first", "lines", "origin", "run_once", "successor", "version")

    def __init__(
        self,
        code: types.CodeType,
        origin: types.CodeType,
        lines: frozenset[int],
        *,
        run_once: bool,
        version: int = 0,
        first: types.CodeType | None = None,
    ) -> None:
        self.code = code
        #: the code without probes it was made from
        self.origin = origin
        #: the version with every probe in place (this one, for version 0)
        self.first = first or code
        #: every line this code and the code nested in it have probes for
        self.lines = lines
        #: a module's code, or a class body that runs with it: runs once (see deinstrument)
        self.run_once = run_once
        #: how many times probes were removed to make this version
        self.version = version
        #: the next version (with fewer probes), once there is one
        self.successor: types.CodeType | None = None


#: the type of SlipCover's probes (a stdlib module's capsule has the same type)
_CAPSULE = type(datetime.datetime_CAPI)


def _slipcover_class() -> type:
    import slipcover
    import slipcover.probe

    class _Recorder(slipcover.Slipcover):  # type: ignore[misc]
        """SlipCover that hands every newly seen line to us once, and still removes probes.

        SlipCover's probes put a line in ``newly_seen`` on its first hit; after some more hits,
        ``deinstrument_seen`` takes ``newly_seen`` (through ``_get_newly_seen``) and removes
        those lines' probes. We take lines out of ``newly_seen`` after every test, so they are
        kept in ``_to_remove`` until that happens; and lines SlipCover takes are kept in
        ``_unreported`` until we take them.
        """

        def __init__(self, **kwargs: Any) -> None:
            self._unreported: dict[str, set[int]] = defaultdict(set)
            self._to_remove: dict[str, set[int]] = defaultdict(set)
            #: id(code) -> every version of every code object with probes (see _Code)
            self.codes: dict[int, _Code] = {}
            #: file name -> id(code) -> its outermost code with probes (newest versions):
            #: where removing probes starts
            self.roots: dict[str, dict[int, types.CodeType]] = defaultdict(dict)
            #: ids of the code objects being instrumented that run once
            self._run_once_src: set[int] = set()
            #: file name -> its module code last instrumented (version 0; .origin: the code)
            self._modules: dict[str, _Code] = {}
            #: code versions made by removing probes (functions need updating when it grows)
            self._replaced = 0
            #: the functions whose code gets its probes removed (see deinstrument_seen); weak,
            #: so that closures found on the stack do not outlive their users
            self.functions: weakref.WeakSet[types.FunctionType] = weakref.WeakSet()
            #: namespaces of probed modules that may still be executing: their functions are
            #: collected whenever probes are removed, and a last time at the next take()
            self._executing: list[dict[str, Any]] = []
            super().__init__(**kwargs)

        def probed(self, code: types.CodeType) -> _Code | None:
            """What we know about ``code``, if it has (or had) probes."""
            info = self.codes.get(id(code))
            return info if info is not None and info.code is code else None

        def newest(self, info: _Code) -> _Code:
            while info.successor is not None:
                info = self.codes[id(info.successor)]
            return info

        def reprobe(self, info: _Code, *, root: bool = True) -> types.CodeType:
            """``info``'s code with every probe in place again, and fresh (unseen) probes.

            The version with every probe in place holds its probes as constants, in the order
            of its lines: a copy with new probes there (and in its nested code) is that code
            instrumented afresh, without SlipCover rewriting the bytecode again.
            """
            first = info.first
            lines = [line for _, line in self.code2index[first]]
            consts = list(first.co_consts)
            slots = [i for i, const in enumerate(consts) if type(const) is _CAPSULE]
            if self.branch or len(slots) != len(lines):  # not what this was written against
                fallback: types.CodeType = self.instrument(
                    info.origin, None if root else info.origin
                )
                return fallback
            for i, line in zip(slots, lines, strict=True):
                consts[i] = slipcover.probe.new(
                    self, first.co_filename, line, self.d_miss_threshold
                )
            for i, const in enumerate(consts):
                nested = self.probed(const) if isinstance(const, types.CodeType) else None
                if nested is not None:
                    consts[i] = self.reprobe(nested, root=False)
            new = first.replace(co_consts=tuple(consts))
            with self.lock:
                self.code2index[new] = self.code2index[first]
                self.codes[id(new)] = _Code(new, info.origin, info.lines, run_once=info.run_once)
                if root:
                    self.roots[new.co_filename][id(new)] = new
            return new

        def instrument(self, co: Any, parent: Any = None) -> Any:
            if not isinstance(co, types.CodeType):
                return super().instrument(co, parent)
            run_once = not co.co_flags & inspect.CO_OPTIMIZED and (
                parent is None or id(parent) in self._run_once_src
            )
            if run_once and parent is None:
                # A module imported again (a test that reloads it, or drops it from
                # sys.modules): its code equals the last one's, so fresh probes in the
                # instrumented copy make the same code as instrumenting it again.
                known = self._modules.get(co.co_filename)
                if known is not None and known.origin == co:
                    return self.reprobe(known)
            if run_once:
                self._run_once_src.add(id(co))
            # SlipCover computes what its own reports need for every module it instruments
            # (about a third of the instrumenting time); we report through coverage.py, so we
            # instrument every code object as nested code and register the outermost ourselves.
            try:
                new = super().instrument(co, parent if parent is not None else co)
            finally:
                self._run_once_src.discard(id(co))
            with self.lock:
                lines = {line for _, line in self.code2index[new]}
                for const in new.co_consts:
                    if isinstance(const, types.CodeType):
                        nested = self.probed(const)
                        if nested is not None:
                            lines |= nested.lines
                before = self.probed(co)
                origin = before.origin if before is not None else co
                info = self.codes[id(new)] = _Code(new, origin, frozenset(lines), run_once=run_once)
                if parent is None:
                    self.roots[co.co_filename][id(new)] = new
                    if run_once:
                        self._modules[co.co_filename] = info
            return new

        def deinstrument(self, co: Any, lines: set[int]) -> Any:
            info = self.probed(co) if isinstance(co, types.CodeType) else None
            if info is None:
                return super().deinstrument(co, lines)
            if lines.isdisjoint(info.lines):
                return co  # no probe to remove here (SlipCover would rebuild it to find out)
            if info.run_once:
                new = self._with_new_nested(co, lines)
            else:
                new = super().deinstrument(co, lines)
            if new is not co:
                self.codes[id(new)] = _Code(
                    new,
                    info.origin,
                    info.lines,
                    run_once=info.run_once,
                    version=info.version + 1,
                    first=info.first,
                )
                info.successor = new
                self._replaced += 1
                roots = self.roots[co.co_filename]
                if roots.get(id(co)) is co:
                    del roots[id(co)]
                    roots[id(new)] = new
            return new

        def _with_new_nested(self, co: types.CodeType, lines: set[int]) -> types.CodeType:
            """Code that runs once, holding its nested code without those lines' probes.

            A module's code and its class bodies have run by the time their probes fire often
            enough to be removed (or are running, in a frame that keeps its code), so removing
            their own probes gains nothing. What matters is the code nested in them (functions
            made from it later get it, and the next removal starts from it), so only their
            constants are replaced, without SlipCover rebuilding the whole code object.
            """
            consts: list[Any] | None = None
            for i, const in enumerate(co.co_consts):
                if isinstance(const, types.CodeType):
                    new_const = self.deinstrument(const, lines)
                    if new_const is not const:
                        if consts is None:
                            consts = list(co.co_consts)
                        consts[i] = new_const
            return co if consts is None else co.replace(co_consts=tuple(consts))

        def deinstrument_seen(self) -> None:
            """Remove the probes of the lines seen (called by a probe that keeps firing).

            SlipCover then finds the functions to give the new code by walking every module
            and every frame's globals, recursively through classes, on every call; we keep the
            functions made from probed code as modules are executed, add the functions that
            the running frames hold (closures and lambdas made at run time, which no module
            holds: the probe that called us is in one of them), and walk only those.
            """
            with self.lock:
                for namespace in self._executing:
                    self.add_functions(namespace)
                replaced = self._replaced
                for name, lines in self._get_newly_seen().items():
                    for code in list(self.roots[name].values()):
                        self.deinstrument(code, lines)
                self.replace_map.clear()  # (SlipCover's; we follow _Code.successor)
                if self._replaced != replaced:
                    # A function can hold any earlier version (one made while its module was
                    # still executing, or one found on the stack only now): follow the chain.
                    self._adopt_from_stack()
                    for func in list(self.functions):
                        info = self.probed(func.__code__)
                        if info is not None and info.successor is not None:
                            func.__code__ = self.newest(info).code

        def _adopt_from_stack(self) -> None:
            """Register the probed functions that running frames hold in their locals."""
            for top in list(sys._current_frames().values()):
                frame: types.FrameType | None = top
                while frame is not None:
                    names = frame.f_locals
                    if names is not frame.f_globals:  # a module's namespace: registered
                        for value in list(names.values()):
                            func = value.__func__ if type(value) is types.MethodType else value
                            if type(func) is types.FunctionType and self.probed(func.__code__):
                                self.functions.add(func)
                    frame = frame.f_back

        def add_functions(self, namespace: dict[str, Any]) -> None:
            """Keep the functions (and methods) defined in a module we probe."""
            found = slipcover.Slipcover.find_functions(list(namespace.values()), set())
            with self.lock:
                self.functions.update(f for f in found if self.probed(f.__code__))

        def executing(self, namespace: dict[str, Any]) -> None:
            """A probed module is about to run in ``namespace``: its functions are collected
            while it may still run (see :attr:`_executing`)."""
            with self.lock:
                self._executing.append(namespace)

        def _collect_executed(self) -> None:
            """The modules of the pending namespaces have run (take() comes between tests):
            collect their functions a last time."""
            with self.lock:
                executing, self._executing = self._executing, []
                for namespace in executing:
                    self.add_functions(namespace)

        def _get_newly_seen(self) -> dict[str, set[int]]:  # called by deinstrument_seen
            with self.lock:
                fresh: dict[str, set[int]] = super()._get_newly_seen()
                for name, lines in fresh.items():
                    self._unreported[name] |= lines
                for name, lines in self._to_remove.items():
                    fresh[name] |= lines
                self._to_remove = defaultdict(set)
                return fresh

        def keep_probes(self, lines: dict[str, set[int]]) -> None:
            """Leave these lines' probes in place at the next removal (they get fresh ones)."""
            with self.lock:
                for name, found in lines.items():
                    pending = self._to_remove.get(name)
                    if pending:
                        pending -= found

        def take(self) -> dict[str, set[int]]:
            """The lines seen since the last call (none twice)."""
            if self._executing:
                self._collect_executed()
            with self.lock:
                fresh: dict[str, set[int]] = super()._get_newly_seen()
                if self._unreported:
                    for name, lines in self._unreported.items():
                        fresh[name] |= lines
                    self._unreported = defaultdict(set)
                for name, lines in fresh.items():
                    self._to_remove[name] |= lines
                return fresh

    return _Recorder


class Probes(ImportedCode):
    """Probes in this process's measured code, and the lines they saw, as coverage.py names them."""

    stopping = "probes"
    #: what the data records of each file: its lines (a subclass may record arcs)
    kind = "lines"

    def __init__(self, cov: Coverage) -> None:
        super().__init__(cov)
        self.sci: Any = _slipcover_class()(d_miss_threshold=50)
        self._started = False
        self._paused = False
        #: the lines recorded so far, by code file name (what a paused test ran is not)
        self._recorded: defaultdict[str, set[int]] = defaultdict(set)

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._add({})  # line (or arc) data from the start, as coverage.py's tracer makes it
        self.hook()

    def _add(self, items: dict[str, set[Any]]) -> None:
        (self.data.add_arcs if self.kind == "arcs" else self.data.add_lines)(items)

    def execute(self, code: types.CodeType, module_globals: dict[str, Any]) -> None:
        """Run a measured module's code with probes, and keep the functions it defines."""
        try:
            exec(self._probed(code), module_globals)
        finally:
            self.sci.add_functions(module_globals)

    def prepare(self, code: types.CodeType, module_globals: dict[str, Any]) -> types.CodeType:
        """A measured module's code with probes, for its loader to run in ``module_globals``;
        the functions it defines are kept as it runs."""
        probed = self._probed(code)
        if probed is not code:
            self.sci.executing(module_globals)
        return probed

    def _probed(self, code: types.CodeType) -> types.CodeType:
        """``code`` with probes; if SlipCover cannot rewrite it, unchanged, with a note (the
        user's run must not break, and the gap must not be silent)."""
        try:
            probed: types.CodeType = self.sci.instrument(code)
        except Exception as exc:  # any failure of the bytecode editor
            note = f"could not put probes into {code.co_filename} ({exc!r}): not measured"
            if note not in self.notes:
                self.notes.append(note)
            return code
        return probed

    def adopt_loaded(self) -> None:
        """Probes for the functions of measured modules imported before we started."""
        replaced: dict[types.CodeType, types.CodeType] = {}
        for func in self.loaded_functions():
            code = func.__code__
            if code not in replaced:
                replaced[code] = self._probed(code)
            func.__code__ = replaced[code]
            self.sci.functions.add(func)

    def take(self) -> dict[str, set[Any]]:
        """Lines (or what :meth:`recorded` makes of them) seen since the last call, by the
        file names coverage.py records."""
        fresh = self.sci.take()
        out: dict[str, set[Any]] = {}
        for filename, lines in fresh.items():
            if not lines:
                continue
            self._recorded[filename] |= lines
            name = self.side.name_for(filename)
            if name is not None:
                out.setdefault(name, set()).update(self.recorded(filename, lines))
        self.add_more(out)
        return out

    def recorded(self, filename: str, lines: set[int]) -> set[Any]:
        """What the data records of ``filename`` having run ``lines``: the lines themselves."""
        return lines

    def add_more(self, named: dict[str, set[Any]]) -> None:
        """Add to what :meth:`take` found, by file, what was measured besides the probes."""

    def flush(self) -> bool:
        """Add the newly seen lines to the data file; True if there were any."""
        lines = self.take()
        if lines:
            self._add(lines)
        return bool(lines)

    def pause(self) -> None:
        """Stop recording: what ran so far counts (flushed), what runs from now on does not."""
        if not self._paused:
            self.flush()
            self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            # Ran while paused: not recorded. Lines recorded before need no probe again (they
            # are in the data); the others get fresh probes.
            recorded = self._recorded
            seen = self.sci.take()
            unrecorded = {name: lines - recorded[name] for name, lines in seen.items()}
            # (take() left their probes to be removed at the next removal: that would take
            # the fresh ones out too, before they ever fire)
            self.sci.keep_probes(unrecorded)
            self.rearm(unrecorded)

    def finish(self) -> CoverageData:
        """Record the last lines, stop probing new modules, add coverage.py's after-run work."""
        if self._paused:
            self.sci.take()  # ran while paused: not recorded
        else:
            self.flush()
        self.stop()
        self.side.finish()
        return self.data

    def rearm(self, seen: dict[str, set[int]]) -> None:
        """Fresh probes for the functions whose lines ``seen`` (which is not recorded) holds.

        While measuring is paused (pytest-cov's ``no_cover``; the xdist controller during the
        test loop) coverage.py records nothing. Probes cannot be paused: a line first run then
        has used up its probe. So that a later, measured run of that line is recorded as
        coverage.py would, every function holding such a line gets its code with fresh probes
        (nested code included, for closures made later).
        """
        seen = {name: lines for name, lines in seen.items() if lines}
        if not seen:
            return
        sci = self.sci
        with sci.lock:
            touched = [
                info.code
                for info in sci.codes.values()
                if info.code.co_filename in seen
                and not info.lines.isdisjoint(seen[info.code.co_filename])
            ]
        if not touched:
            return
        fresh: dict[int, types.CodeType] = {}  # id(code): its codes stay in sci.codes
        for obj in gc.get_referrers(*touched):  # one pass over the heap, in C
            if type(obj) is not types.FunctionType:
                continue
            info = sci.probed(obj.__code__)
            if info is None:
                continue
            if id(info.code) not in fresh:
                fresh[id(info.code)] = sci.reprobe(info)
            obj.__code__ = fresh[id(info.code)]
            sci.functions.add(obj)

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self.unhook()

"""The coverage.py side of the probe engine: which files to measure, under which names.

coverage.py has no public API for "should this file be measured" or for adding lines to a
running measurement's data. The probe engine (:mod:`pytest_distcov.engine.probes`) measures
instead of coverage.py's tracer, so it does what ``Coverage.start`` does short of starting a
tracer (``Coverage._init``, ``_inited_for_start``, ``_init_for_start``), asks the object
coverage.py's tracers ask (``Coverage._inorout.should_trace``, with a stand-in frame holding a
module's globals), names files with ``Coverage._file_mapper``, adds lines to
``Coverage._data``, and at the end runs ``Coverage._post_save_work`` (the never-imported
files of ``[run] source``), as ``Coverage.get_data`` does.

:func:`missing` is checked before probes are chosen, and :class:`CoverageSide` checks again
when they start: where anything is not there, the run measures with coverage.py's tracer and
the header says why.
"""

from __future__ import annotations

import threading
from typing import Any

from coverage import Coverage, CoverageData

__all__ = ["COVERAGE_METHODS", "PROBES_NEEDS", "CoverageSide", "missing"]

#: the methods of ``Coverage`` that :class:`CoverageSide` calls.
COVERAGE_METHODS = ("_init", "_init_for_start", "_post_save_work")
#: the attributes of a ``Coverage`` it reads or sets (``Coverage.__init__`` sets them all).
COVERAGE_ATTRIBUTES = ("_inited_for_start", "_inorout", "_file_mapper", "_data")
#: What the probe engine relies on, as the start check names it.
PROBES_NEEDS = tuple(f"Coverage.{name}" for name in (*COVERAGE_METHODS, *COVERAGE_ATTRIBUTES))


def missing(cov: Coverage | type[Coverage]) -> list[str]:
    """The probe engine's internals that ``cov`` (or, given the class, every Coverage) lacks."""
    found = [f"Coverage.{n}" for n in COVERAGE_METHODS if not callable(getattr(cov, n, None))]
    if isinstance(cov, Coverage):
        found += [f"Coverage.{n}" for n in COVERAGE_ATTRIBUTES if n not in vars(cov)]
    return found


class CoverageSide:
    """The coverage.py internals the probe engine needs, in one place.

    ``Coverage`` decides which files to trace in ``_inorout.should_trace`` (what its tracers
    call), names them with ``_file_mapper``, and keeps its data in ``_data``; after the run,
    ``_post_save_work`` adds the never-imported files of ``[run] source``. Raises
    RuntimeError where these are not what it expects.
    """

    def __init__(self, cov: Coverage) -> None:
        self.cov = cov
        gone = missing(cov)
        if gone:
            raise RuntimeError(
                f"the probe engine needs coverage.py internals that this release lacks"
                f" ({', '.join(gone)})"
            )
        cov._init()
        cov._inited_for_start = True
        cov._init_for_start()
        inorout = getattr(cov, "_inorout", None)
        data = getattr(cov, "_data", None)
        mapper = getattr(cov, "_file_mapper", None)
        if inorout is None or not isinstance(data, CoverageData) or mapper is None:
            raise RuntimeError("coverage.py's internals are not what the probe engine expects")
        self._inorout = inorout
        self.data: CoverageData = data
        self._mapper = mapper
        #: a code object's file name -> the file name coverage.py records, or None
        self._names: dict[str, str | None] = {}
        self._deciding = threading.local()

    @property
    def deciding(self) -> bool:
        """True while coverage.py decides about a file in this thread (see name_for)."""
        return getattr(self._deciding, "active", False)

    def name_for(self, filename: str, module_globals: dict[str, Any] | None = None) -> str | None:
        """What coverage.py would record ``filename`` as, or None if it would not measure it."""
        try:
            return self._names[filename]
        except KeyError:
            pass
        frame = _Frame(module_globals) if module_globals is not None else None
        # When sys.path has changed, coverage.py first looks up the source packages with
        # importlib, which asks our finder, which would ask coverage.py again before it has
        # noted the new sys.path: a recursion down to RecursionError, every level recomputing
        # the third-party paths (over and over in a worker, where a few times suffice). The
        # finder stays out of coverage.py's own lookups.
        outer, self._deciding.active = self.deciding, True
        try:
            disp = self._inorout.should_trace(filename, frame)
        finally:
            self._deciding.active = outer
        name = self._mapper(disp.source_filename) if disp.trace else None
        self._names[filename] = name
        return name

    def finish(self) -> None:
        """What ``Coverage.get_data`` does after a run: never-imported source files at 0 %."""
        self.cov._post_save_work()


class _Frame:
    """What coverage.py's file rules read from a frame: its globals (module name, __file__)."""

    __slots__ = ("f_globals",)

    def __init__(self, module_globals: dict[str, Any]) -> None:
        self.f_globals = module_globals

"""The data object a measuring ``Coverage`` writes into, and the hooks on its writes.

``Coverage`` flushes what its tracer recorded into a :class:`coverage.CoverageData` it keeps
in ``Coverage._data`` (made by ``Coverage.start``), calling its public ``add_lines``,
``add_arcs``, ``add_file_tracers`` and ``touch_files``. The object itself is not public, nor is
the context label it records under (``CoverageData._current_context``, set by
``Coverage.switch_context``). The engine's
:class:`~pytest_distcov.engine.measure.NewOnly` needs both: it takes those writes in place of
the data object (:func:`divert_writes`) and labels what it streams with that context.
Without them the engine installs no ``NewOnly``: every flush writes the data file through
coverage.py, and streaming reads the data file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Mapping
from typing import NamedTuple, Protocol

from coverage import Coverage, CoverageData

__all__ = [
    "JOURNAL_NEEDS",
    "DataWriters",
    "WriteTaker",
    "close_all",
    "divert_writes",
    "measuring_data",
    "missing",
    "recorded_context",
]

#: What the journal relies on, as the start check names it (see :func:`missing`).
JOURNAL_NEEDS = ("Coverage._data", "CoverageData._current_context")


def missing(cov: Coverage) -> list[str]:
    """The journal's internals this Coverage lacks, before or after it started."""
    out = []
    if "_data" not in vars(cov):  # set (to None) by Coverage.__init__, made by start()
        out.append("Coverage._data")
    data = vars(cov).get("_data")
    probe = data if isinstance(data, CoverageData) else CoverageData(no_disk=True)
    if "_current_context" not in vars(probe):
        out.append("CoverageData._current_context")
    return out


def measuring_data(cov: Coverage) -> CoverageData | None:
    """The data object started ``cov`` flushes into, or None if it is not a CoverageData."""
    data = getattr(cov, "_data", None)
    return data if isinstance(data, CoverageData) else None


def recorded_context(data: CoverageData) -> str:
    """The context label ``data`` records new data under ('' for none)."""
    context = getattr(data, "_current_context", None)
    return context if isinstance(context, str) else ""


class WriteTaker(Protocol):
    """What takes coverage.py's writes in place of its data object (see :func:`divert_writes`)."""

    def add_lines(self, line_data: Mapping[str, Collection[int]]) -> None: ...

    def add_arcs(self, arc_data: Mapping[str, Collection[tuple[int, int]]]) -> None: ...

    def add_file_tracers(self, file_tracers: Mapping[str, str]) -> None: ...

    def touch_files(self, filenames: Collection[str], plugin_name: str | None = None) -> None: ...


class DataWriters(NamedTuple):
    """A data object's own writing methods, as they were before :func:`divert_writes`."""

    add_lines: Callable[[Mapping[str, Collection[int]]], None]
    add_arcs: Callable[[Mapping[str, Collection[tuple[int, int]]]], None]
    add_file_tracers: Callable[[Mapping[str, str]], None]
    touch_files: Callable[[Collection[str], str | None], None]


def divert_writes(data: CoverageData, taker: WriteTaker) -> DataWriters:
    """Have every write into ``data`` (coverage.py's flush) go to ``taker`` instead; return
    ``data``'s own methods, which still write it.

    Instance attributes shadow the class's methods for this one object only.
    """
    own = DataWriters(data.add_lines, data.add_arcs, data.add_file_tracers, data.touch_files)
    data.add_lines = taker.add_lines  # type: ignore[method-assign]
    data.add_arcs = taker.add_arcs  # type: ignore[method-assign]
    data.add_file_tracers = taker.add_file_tracers  # type: ignore[method-assign]
    data.touch_files = taker.touch_files  # type: ignore[method-assign]
    return own


def close_all(cov: Coverage) -> None:
    """Close every data object ``cov`` made: its own, and the in-memory copy each report
    makes where ``[paths]`` remaps the data (``Coverage._data_to_close``, closed by coverage.py
    only at the exit of a ``Coverage`` that measured). An in-memory database keeps its
    connection on a plain close, and on 3.13+ its ResourceWarning, once collected, would fail
    the user's run."""
    found = getattr(cov, "_data_to_close", None)
    datas: list[object] = list(found) if isinstance(found, list) else []
    datas.append(getattr(cov, "_data", None))
    for data in datas:
        if isinstance(data, CoverageData):
            try:
                data.close(force=True)
            except Exception:  # (closing only: nothing is lost by one that will not close)
                continue


#: every slash, either way, in a file's name (see :func:`renamed_by_update`)
_SLASHES = re.compile(r"[/\\]")


def renamed_by_update(name: str) -> bool:
    """True if ``CoverageData.update`` stores the file ``name`` under another name: coverage.py
    7.18 makes every slash in a name the system's separator there (7.13 keeps names as they
    are). Data whose names it may change cannot be told from the names it was given."""
    return _SLASHES.sub(re.escape(os.sep), name) != name

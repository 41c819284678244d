"""What coverage.py's tracer recorded, read without coverage.py's flush: a cheap per-test flush.

coverage.py's flush (what ``Coverage.switch_context`` does) copies every set its tracer filled
since the previous flush, empties them, unpacks the C tracer's packed arcs in Python, and hands
the result to the data object behind a lock, with a context hash. A trace function records
again every line a test runs, so after every test that costs in proportion to what the test
ran, though most tests add no new line (benchmarks/bench_overhead.py's ``distcov-ctrace`` mode,
Python 3.10 and 3.11, times whole suites flushed this way).

A :class:`TracerTap` leaves those sets alone, so they keep growing as they do in a run that is
never flushed. It looks only at the sets whose size changed since it last looked (a set that
only grows and kept its size holds nothing new), and hands the new items to the engine's
:class:`~pytest_distcov.engine.measure.NewOnly` journal. coverage.py's own flush at the end of
the run still writes every set, whole, to the data file.

The sets are coverage.py's collector's, which is not public API: the tap reads them through
:class:`pytest_distcov.covapi.collector.TracerSets`, which knows their shape, and learns
from it when coverage's own flush (``get_data`` at the end, or any mid-run) emptied them. A
tap is only made where that view can be opened (every part there, and arcs packed as it
unpacks them). Otherwise, and as soon as a coverage plugin traces a file (its file tracer
is written by coverage's flush), the engine flushes with ``switch_context`` as before.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable

from pytest_distcov.covapi.collector import TracerSets

__all__ = ["TracerTap"]


class TracerTap:
    """What the tracer recorded since the last :meth:`take`, read from coverage's collector."""

    def __init__(self, sets: TracerSets) -> None:
        self._sets = sets
        self.kind = sets.kind
        self._decode = sets.decode
        self._map: Callable[[str], str] = sets.mapped
        #: the collector's dict of sets when last read; another one means coverage reset it
        self._data: object = None
        #: by the collector's file name: what was taken before, and that set's size then
        self._seen: dict[str, set[Hashable]] = {}
        self._sizes: dict[str, int] = {}
        #: set when coverage's own flush emptied the sets: then sizes say nothing
        self._emptied = False
        sets.before_flush(self._flushing)

    def _flushing(self) -> None:
        self._emptied = True

    @property
    def usable(self) -> bool:
        """False once a coverage plugin traces a file: its tracer's name needs coverage's flush."""
        return not self._sets.plugin_files

    def take(self) -> dict[str, Collection[Hashable]]:
        """The items recorded since the last call, by mapped file name (none: left out)."""
        data = self._sets.sets()
        everything = data is not self._data or self._emptied
        self._emptied = False
        self._data = data
        fresh: dict[str, Collection[Hashable]] = {}
        sizes, seen_by_name = self._sizes, self._seen
        for name, items in data.copy().items():  # dict and set copies are atomic in CPython
            if not items or (not everything and sizes.get(name) == len(items)):
                continue
            now = items.copy()
            sizes[name] = len(now)
            seen = seen_by_name.get(name)
            if seen is None:
                new, seen_by_name[name] = now, set(now)
            else:
                new = now - seen
                seen |= new
            if not new:
                continue
            items_new = self._decode(new)
            mapped = self._map(name)
            if mapped in fresh:  # two names coverage maps to one file
                items_new = {*fresh[mapped], *items_new}
            fresh[mapped] = items_new
        return fresh

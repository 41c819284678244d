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

This reads coverage.py's collector (``Coverage._collector``: ``data``, ``file_tracers``,
``branch``, ``core.packed_arcs``, ``cached_mapped_file``), which is not public API, and wraps
its ``flush_data`` on the instance, to know when coverage's own flush (``get_data`` at the end,
or any mid-run) emptied the sets: 7.16 clears them, 7.17 removes what it took. A tap is
only made when all of it is there and, for packed arcs, when coverage.py's own flush code
unpacks sample values the way :func:`unpack_arc` does (:func:`packing_matches`). Otherwise, and
as soon as a coverage plugin traces a file (its file tracer is written by coverage's flush),
the engine flushes with ``switch_context`` as before.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Collection, Hashable
from typing import Any

__all__ = ["TracerTap", "packing_matches", "unpack_arc"]

_MASK = 0xFFFFFFF  # 28 bits a line number


def unpack_arc(packed: int) -> tuple[int, int]:
    """An arc as the C tracer packs it: two 28-bit line numbers and their two sign bits."""
    first = packed & _MASK
    second = (packed >> 28) & _MASK
    if packed & (1 << 56):
        first = -first
    if packed & (1 << 57):
        second = -second
    return first, second


def _pack_arc(first: int, second: int) -> int:
    packed = (abs(first) & _MASK) | ((abs(second) & _MASK) << 28)
    if first < 0:
        packed |= 1 << 56
    if second < 0:
        packed |= 1 << 57
    return packed


#: arcs that exercise every part of the packing: signs, large line numbers, entries and exits
_SAMPLE_ARCS = [(-1, 1), (1, 2), (7, -1), (-3, -9), (0, 0), (123456, 654321), (_MASK, -_MASK)]


def packing_matches(collector_class: Any) -> bool:
    """True if coverage.py's own flush unpacks sample packed arcs as :func:`unpack_arc` does.

    Runs the collector class's ``flush_data`` on a stand-in collector holding packed samples,
    so a coverage.py release that packs arcs differently (or flushes differently) is detected
    before any arc is read with the wrong layout.
    """
    got: dict[str, Any] = {}
    stand_in = types.SimpleNamespace(
        branch=True,
        core=types.SimpleNamespace(packed_arcs=True),
        data={"f.py": {_pack_arc(a, b) for a, b in _SAMPLE_ARCS}},
        file_tracers={},
        disabled_plugins=set(),
        tracers=[],
        data_lock=None,
        threading=None,
        lock_data=lambda: None,
        unlock_data=lambda: None,
        covdata=types.SimpleNamespace(
            add_arcs=got.update, add_lines=got.update, add_file_tracers=lambda _: None
        ),
        _activity=lambda: True,
        _clear_data=lambda: None,
        mapped_file_dict=dict,
        cached_mapped_file=lambda name: name,
    )
    try:
        collector_class.flush_data(stand_in)
    except Exception:  # any change in coverage.py's internals: no tap
        return False
    expected = {unpack_arc(_pack_arc(a, b)) for a, b in _SAMPLE_ARCS}
    return set(got.get("f.py", ())) == expected == set(_SAMPLE_ARCS)


class TracerTap:
    """What the tracer recorded since the last :meth:`take`, read from coverage's collector."""

    def __init__(self, collector: Any) -> None:
        self._collector = collector
        self.kind = "arcs" if collector.branch else "lines"
        self._unpack = bool(collector.branch and collector.core.packed_arcs)
        self._map: Callable[[str], str] = collector.cached_mapped_file
        #: the collector's dict of sets when last read; another one means coverage reset it
        self._data: Any = None
        #: by the collector's file name: what was taken before, and that set's size then
        self._seen: dict[str, set[Hashable]] = {}
        self._sizes: dict[str, int] = {}
        #: set when coverage's own flush emptied the sets: then sizes say nothing
        self._emptied = False
        flush: Callable[[], bool] = collector.flush_data

        def flush_and_tell() -> bool:
            self._emptied = True  # before: the sets may be emptied even if it fails later
            return flush()

        # An instance attribute: shadows the method for this one collector only.
        collector.flush_data = flush_and_tell

    @classmethod
    def make(cls, cov: Any) -> TracerTap | None:
        """A tap on ``cov``'s collector, or None where one cannot be read safely."""
        collector: Any = getattr(cov, "_collector", None)
        try:
            packed = collector.core.packed_arcs
            checks = (
                isinstance(collector.data, dict),
                isinstance(collector.file_tracers, dict),
                callable(collector.cached_mapped_file),
                callable(collector.flush_data),
                isinstance(collector.branch, bool),
                isinstance(packed, bool),
            )
        except AttributeError:
            return None
        if not all(checks):
            return None
        if collector.branch and packed and not packing_matches(type(collector)):
            return None
        return cls(collector)

    @property
    def usable(self) -> bool:
        """False once a coverage plugin traces a file: its tracer's name needs coverage's flush."""
        return not self._collector.file_tracers

    def take(self) -> dict[str, Collection[Hashable]]:
        """The items recorded since the last call, by mapped file name (none: left out)."""
        data = self._collector.data
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
            items_new: Collection[Hashable] = [unpack_arc(p) for p in new] if self._unpack else new
            mapped = self._map(name)
            if mapped in fresh:  # two names coverage maps to one file
                items_new = {*fresh[mapped], *items_new}
            fresh[mapped] = items_new
        return fresh

"""coverage.py's collector as the per-test tap reads it: the tracer's sets, in place.

coverage.py keeps what its tracer recorded in its collector (``Coverage._collector``, made by
``Coverage.start``): ``data``, a dict of sets by the traced file's name (line numbers, arcs as
tuples, or, from the C tracer with branch coverage, arcs packed into ints), ``file_tracers``
(the files a coverage plugin traces), ``branch``, ``core.packed_arcs``, ``cached_mapped_file``
(the file name the data file records) and ``flush_data``, which hands the sets to the data
object and empties them (7.16 clears them, 7.17 removes what it took). None of it is public.

:class:`TracerSets` is the one view of it: :mod:`pytest_distcov.engine.tap` diffs the sets it
shows without knowing their shape. :func:`open_tracer_sets` checks every part first and, for
packed arcs, that coverage.py's own flush unpacks sample values as :func:`unpack_arc` does
(:func:`packing_matches`); where anything differs it says why, and the engine flushes with
``Coverage.switch_context`` instead.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Collection, Hashable
from typing import Any

from coverage import Coverage

__all__ = [
    "TAP_NEEDS",
    "TracerSets",
    "ctracer_error",
    "missing",
    "open_tracer_sets",
    "packing_matches",
    "unpack_arc",
]

#: What the tap relies on, as the start check names it (see :func:`missing`).
TAP_NEEDS = (
    "Coverage._collector",
    "Collector.data, .file_tracers, .branch, .core.packed_arcs, .cached_mapped_file, .flush_data",
    "the C tracer's packing of arcs",
)

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


class TracerSets:
    """The tracer's sets of one collector, their file names, and a word when coverage.py's own
    flush empties them."""

    def __init__(self, collector: Any) -> None:
        self._collector = collector
        #: what the sets hold: "lines" or "arcs"
        self.kind = "arcs" if collector.branch else "lines"
        self._packed = bool(collector.branch and collector.core.packed_arcs)
        #: the file name the data file records for a traced file's name
        self.mapped: Callable[[str], str] = collector.cached_mapped_file

    def sets(self) -> dict[str, set[Hashable]]:
        """The collector's dict of sets, live: coverage.py makes a new one when it resets."""
        data: dict[str, set[Hashable]] = self._collector.data
        return data

    @property
    def plugin_files(self) -> bool:
        """True once a coverage plugin traces a file (its tracer's name needs coverage's flush)."""
        return bool(self._collector.file_tracers)

    def decode(self, items: set[Hashable]) -> Collection[Hashable]:
        """Items of a set as the data file records them (packed arcs unpacked)."""
        return [unpack_arc(p) for p in items] if self._packed else items  # type: ignore[arg-type]

    def before_flush(self, tell: Callable[[], None]) -> None:
        """Call ``tell`` whenever coverage.py's own flush runs (before it empties the sets).

        Wraps the collector's ``flush_data`` on the instance: it shadows the method for this
        one collector only.
        """
        flush: Callable[[], bool] = self._collector.flush_data

        def flush_and_tell() -> bool:
            tell()  # before: the sets may be emptied even if the flush fails later
            return flush()

        self._collector.flush_data = flush_and_tell


def missing(cov: Coverage) -> list[str]:
    """The tap's internals this Coverage lacks, before or after it started."""
    if "_collector" not in vars(cov):  # set (to None) by Coverage.__init__, made by start()
        return ["Coverage._collector"]
    collector: Any = vars(cov)["_collector"]
    collector_class: Any = type(collector)
    if collector is None:  # not started yet: the class it will be
        from coverage.collector import Collector

        collector_class = Collector
    return (
        [] if callable(getattr(collector_class, "flush_data", None)) else ["Collector.flush_data"]
    )


def open_tracer_sets(cov: Coverage) -> TracerSets | str:
    """A view of started ``cov``'s tracer sets, or why one cannot be read safely."""
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
    except AttributeError as exc:
        return f"its collector lacks {exc.name or exc}"
    if not all(checks):
        return "its collector's parts are not of the types the tap reads"
    if collector.branch and packed and not packing_matches(type(collector)):
        return "it packs arcs otherwise than the tap unpacks them"
    return TracerSets(collector)


def ctracer_error() -> str:
    """Why coverage.py's C tracer (its ``coverage.tracer`` extension) does not load here."""
    try:
        import coverage.tracer  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return "unknown reason"

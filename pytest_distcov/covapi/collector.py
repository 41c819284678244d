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
    "OWN_TRACER_NEEDS",
    "TAP_NEEDS",
    "OwnTracer",
    "TracerSets",
    "ctracer_error",
    "missing",
    "missing_own_tracer",
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


#: What the branch engine's own tracer for some files relies on (see :class:`OwnTracer`).
OWN_TRACER_NEEDS = (
    "Coverage._collector (made ready by the probe engine's CoverageSide)",
    "Collector.should_trace, .start, .stop, .pause, .resume",
)


def missing_own_tracer(cov: Coverage) -> list[str]:
    """What :class:`OwnTracer` needs that ``cov`` (made ready to start) lacks."""
    collector: Any = getattr(cov, "_collector", None)
    if collector is None:
        return ["Coverage._collector"]
    return [
        f"Collector.{name}"
        for name in ("should_trace", "start", "stop", "pause", "resume")
        if not callable(getattr(collector, name, None))
    ]


class OwnTracer:
    """coverage.py's own tracer, for the files ``wanted`` says yes to, and no other.

    The branch engine measures a file it cannot mark (:mod:`pytest_distcov.engine.marks`) this
    way, exactly as coverage.py would: ``cov``'s collector (made by ``Coverage._init_for_start``,
    which :class:`~pytest_distcov.covapi.probes.CoverageSide` calls) is started with its
    ``should_trace`` wrapped on the instance, so that every other file is not traced. It is a
    trace function all the same: while it runs, every line the process runs costs a little
    (the interpreter's line events are on), and it traces the thread that started it and the
    threads started later, as coverage.py's own start does. What it records is read
    in place (:attr:`sets`); coverage.py's own flush never runs, so nothing reaches ``cov``'s
    data from here but what the engine reads.
    """

    def __init__(self, cov: Coverage, wanted: Callable[[str], bool]) -> None:
        gone = missing_own_tracer(cov)
        if gone:
            raise RuntimeError(f"coverage.py's tracer for single files needs {', '.join(gone)}")
        collector: Any = cov._collector
        view = open_tracer_sets(cov)
        if isinstance(view, str):
            raise RuntimeError(f"coverage.py's tracer for single files: {view}")
        self.sets: TracerSets = view
        self._collector = collector
        should_trace: Callable[[str, Any], Any] = collector.should_trace

        def only_wanted(filename: str, frame: Any) -> Any:
            disposition = should_trace(filename, frame)
            if disposition.trace and not wanted(filename):
                return _not_traced(disposition)  # (coverage.py caches its own)
            return disposition

        # The C tracer's dispositions are of its own type: made here once, so that a
        # surprise fails the start (a note), never the user's code the tracer is called in.
        _not_traced(should_trace(__file__, None))

        collector.should_trace = only_wanted
        self._running = False

    def start(self) -> None:
        """Trace this thread from now on, and the threads started later."""
        self._collector.start()
        self._running = True

    def pause(self) -> None:
        if self._running:
            self._collector.pause()

    def resume(self) -> None:
        if self._running:
            self._collector.resume()

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._collector.stop()


def _not_traced(disposition: Any) -> Any:
    """A disposition of ``disposition``'s type and file that does not trace it (fields as
    coverage.py's ``disposition_init`` sets them)."""
    off = type(disposition)()
    off.original_filename = disposition.original_filename
    off.canonical_filename = disposition.canonical_filename
    off.source_filename = None
    off.trace = False
    off.reason = "measured with branch markers"
    off.file_tracer = None
    off.has_dynamic_filename = False
    return off


def ctracer_error() -> str:
    """Why coverage.py's C tracer (its ``coverage.tracer`` extension) does not load here."""
    try:
        import coverage.tracer  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return "unknown reason"

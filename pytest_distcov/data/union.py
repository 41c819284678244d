"""``pytest-distcov combine``'s union of many whole data files (the shards of a store).

:class:`ShardUnion` reads coverage.py data files straight from their SQLite tables (coverage.py
documents the schema), several processes at once, and writes the union through coverage.py's
public ``CoverageData``. This module imports neither coverage.py nor multiprocessing until it
needs them, so that the readers start before the command has loaded anything else.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_distcov.errors import DataFileError

if TYPE_CHECKING:
    from coverage import CoverageData

__all__ = [
    "KNOWN_SCHEMAS",
    "PathMapper",
    "ShardUnion",
    "identity",
    "read_live_file",
    "read_only_uri",
]

PathMapper = Callable[[str], str]


def identity(path: str) -> str:
    """The path mapper that leaves paths as they are."""
    return path


#: The data-file schemas read straight from SQLite here and in contexts.py (coverage.py documents
#: its schema; a file of another schema gets the same refusal coverage itself gives it).
KNOWN_SCHEMAS = frozenset({7})


def read_only_uri(path: str | os.PathLike[str], *, immutable: bool = False) -> str:
    """An SQLite URI that opens ``path`` read-only (it is never changed or journaled).

    ``immutable`` also tells SQLite that nobody changes the file while it is open, so it takes
    no locks: right for a finished shard, wrong for a file a live process writes.
    """
    uri = f"file:{Path(path).resolve().as_uri()[len('file://') :]}?mode=ro"
    return uri + "&immutable=1" if immutable else uri


def _bits(number: int) -> bytes:
    return number.to_bytes((number.bit_length() + 7) // 8, "little")


# How ShardUnion carries arcs out of SQLite (see _ARC_QUERY): an arc (fromno, tono) with both
# numbers in [-2**25, 2**25) is packed into one integer, offset to exactly 16 decimal digits.
_ARC_OFFSET = 1 << 25
_ARC_SHIFT = 26
_ARC_DIGITS = 10**15
_ARC_BASE = _ARC_OFFSET * (1 << _ARC_SHIFT) + _ARC_OFFSET + _ARC_DIGITS
# Per file and context, one string of all its packed arcs, 16 digits each, in one pass over the
# covering index; an arc out of range writes "x" (not a hex digit) and that group is read row by
# row instead. A decimal digit string is also a hex digit string, so ``bytes.fromhex`` turns the
# text into 8 bytes an arc, and ``memoryview.cast("d")`` reads those as distinct floats: no
# Python code runs per arc. (Floats because Python makes and hashes them faster than integers of
# this size; the bytes are never a NaN or a zero, so equal floats are equal bytes. The exponent
# of a NaN needs a byte 0x7F or 0xFF, and a hex digit above 9, neither of which decimal digits
# make; a zero needs eight zero bytes, and the first byte is 0x10 or more.)
_ARC_QUERY = f"""
SELECT file_id, context_id, group_concat(
    CASE WHEN fromno BETWEEN -{_ARC_OFFSET} AND {_ARC_OFFSET - 1}
          AND tono BETWEEN -{_ARC_OFFSET} AND {_ARC_OFFSET - 1}
    THEN fromno * {1 << _ARC_SHIFT} + tono + {_ARC_BASE}
    ELSE 'x' END, '')
FROM shard.arc GROUP BY file_id, context_id
"""


def _unpack_arc(key: float) -> tuple[int, int]:
    packed = int(struct.pack("d", key).hex()) - _ARC_DIGITS
    return (packed >> _ARC_SHIFT) - _ARC_OFFSET, (packed & ((1 << _ARC_SHIFT) - 1)) - _ARC_OFFSET


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _ShardRead:
    """What one shard holds (file and context names resolved)."""

    __slots__ = ("arcs", "files", "lines", "packed", "tracers", "wide")

    def __init__(self, arcs: bool | None, files: list[str], tracers: dict[str, str]) -> None:
        self.arcs = arcs
        self.files = files
        self.tracers = tracers
        self.lines: list[tuple[str, str, bytes]] = []
        self.packed: list[tuple[str, str, bytes]] = []
        self.wide: list[tuple[str, str, list[tuple[int, int]]]] = []


class _Part:
    """The union of some shards of one kind (line data, arc data, or no data)."""

    def __init__(self) -> None:
        self.files: set[str] = set()
        self.tracers: dict[str, str] = {}
        # (context, path) -> numbits as one integer / packed arcs / arcs out of the packed range
        self.lines: dict[tuple[str, str], int] = {}
        self.arcs: dict[tuple[str, str], set[float]] = {}
        self.wide: dict[tuple[str, str], set[tuple[int, int]]] = {}
        # (context, path) -> the last packed arcs added: shards often repeat a file's arcs
        # exactly (code only run at import), and comparing bytes is far cheaper than a set update
        self._last: dict[tuple[str, str], bytes] = {}

    def add(self, read: _ShardRead) -> None:
        last = self._last
        for path, context, blob in read.packed:
            key = (context, path)
            if last.get(key) != blob:
                last[key] = blob
                self.arcs.setdefault(key, set()).update(memoryview(blob).cast("d"))
        for path, context, rows in read.wide:
            self.wide.setdefault((context, path), set()).update(rows)
        lines = self.lines
        for path, context, numbits in read.lines:
            key = (context, path)
            lines[key] = lines.get(key, 0) | int.from_bytes(numbits, "little")
        self.files.update(read.files)
        self.tracers.update(read.tracers)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_last"] = {}  # only a shortcut; not worth sending between processes
        return state


#: What reading a shard gave: its kind (True: arc data, False: line data, None: no data) or why
#: it could not be read.
_Outcome = bool | DataFileError | None


class _Reader:
    """Reads shards into parts of the union, one part for each kind of data."""

    def __init__(self) -> None:
        self.hub = sqlite3.connect(":memory:", isolation_level=None)
        self.parts: dict[bool | None, _Part] = {}

    def read(self, name: str, path: str) -> _Outcome:
        read = _read_shard(self.hub, name, path)
        if isinstance(read, DataFileError):
            return read
        part = self.parts.get(read.arcs)
        if part is None:
            part = self.parts[read.arcs] = _Part()
        part.add(read)
        return read.arcs


def _read_chunk(items: list[tuple[str, str]]) -> tuple[list[_Outcome], dict[bool | None, _Part]]:
    """A child process's work: read some shards and send back their outcomes and union."""
    reader = _Reader()
    try:
        return [reader.read(name, path) for name, path in items], reader.parts
    finally:
        reader.hub.close()


class ShardUnion:
    """The union of many whole data files, read straight from their SQLite tables.

    This is ``coverage combine`` without its per-file and per-row Python overhead. Each file is
    attached read-only (never changed) to an in-memory SQLite database. Lines are kept as
    integers whose set bits are the line numbers (a numbits blob read as one little-endian
    integer, so a union is one ``|``); arcs as sets of integers packed by SQLite itself (see
    ``_ARC_QUERY``). Contexts, file tracers and measured-but-empty files are kept. Paths go
    through ``map_path`` (a shard's relative paths become the combiner's own) when the union is
    written out.

    Many files are read by several processes at once (forked, one a CPU, at most eight), each
    reading a run of the files into its own part of the union; the parts are joined when the
    union is written. Line data and arc data cannot be combined: the first file with data, in
    the order given, decides, and a file of the other kind is refused.
    """

    #: Fewer files than this are read in this process (starting processes would cost more).
    PARALLEL_FROM = 64

    def __init__(self, map_path: PathMapper | None = None, *, processes: int | None = None) -> None:
        self.map_path = map_path or identity
        self.processes = max(1, min(8, processes or _usable_cpus()))
        self.has_arcs: bool | None = None
        self.first: str = ""
        #: How many processes read the files of the last :meth:`add_files` (1: this one alone).
        self.readers = 1
        self._reader = _Reader()
        self._parts: list[dict[bool | None, _Part]] = [self._reader.parts]

    def add_files(
        self, items: Iterable[tuple[str, str]], *, meanwhile: Callable[[], object] | None = None
    ) -> list[tuple[str, DataFileError | None]]:
        """Add ``(name, path)`` data files and say how each went, in the order given.

        Each name comes with ``None`` or the :class:`DataFileError` that names what is wrong
        with it; an unusable file adds nothing, and the others are still added. ``meanwhile``
        is called exactly once, in this process: while reader processes read, or before the
        files are read here (the caller's own start-up work then costs no wall time).
        """
        pending = [meanwhile] if meanwhile else []

        def meanwhile_once() -> None:
            while pending:
                pending.pop()()

        todo = list(items)
        self.readers = 1
        outcomes = (
            self._read_in_processes(todo, meanwhile_once) if self._parallel(len(todo)) else None
        )
        meanwhile_once()  # no processes, or they could not start
        if outcomes is None:
            outcomes = [self._reader.read(name, path) for name, path in todo]
        pairs = zip(todo, outcomes, strict=True)
        return [(name, self._check_kind(outcome, name)) for (name, _), outcome in pairs]

    def _parallel(self, count: int) -> bool:
        # Fork only on Linux (elsewhere it is not the platform's way) and only when no other
        # thread could hold a lock the children would inherit (S3 downloads have finished).
        return (
            count >= self.PARALLEL_FROM
            and self.processes > 1
            and sys.platform.startswith("linux")
            and threading.active_count() == 1
        )

    def _read_in_processes(
        self, todo: list[tuple[str, str]], meanwhile: Callable[[], object]
    ) -> list[_Outcome] | None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        count = min(self.processes, len(todo))
        runs = [todo[i * len(todo) // count : (i + 1) * len(todo) // count] for i in range(count)]
        context = multiprocessing.get_context("fork")
        try:
            with ProcessPoolExecutor(max_workers=count, mp_context=context) as pool:
                futures = [pool.submit(_read_chunk, run) for run in runs]
                meanwhile()
                results = [future.result() for future in futures]
        except (BrokenProcessPool, OSError):
            return None  # a child died (out of memory?): read them here instead
        self.readers = count
        outcomes: list[_Outcome] = []
        for run_outcomes, parts in results:
            outcomes += run_outcomes
            self._parts.append(parts)
        return outcomes

    def _check_kind(self, kind: _Outcome, name: str) -> DataFileError | None:
        if isinstance(kind, DataFileError) or kind is None:
            return kind
        if self.has_arcs is None:
            self.has_arcs, self.first = kind, name
        elif kind != self.has_arcs:
            # its data went to a part of the other kind, which is never written
            what = "branch (arc)" if kind else "line"
            return DataFileError(
                f"cannot combine coverage data file {name}: it holds {what} data, but"
                f" {self.first} does not; combine shards measured the same way"
            )
        return None

    def close(self) -> None:
        """Close the SQLite database files are read through (the union itself stays)."""
        self._reader.hub.close()

    def __enter__(self) -> ShardUnion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kept_parts(self) -> list[_Part]:
        kinds = {None, self.has_arcs}
        return [part for parts in self._parts for k, part in parts.items() if k in kinds]

    def write_into(self, data: CoverageData) -> None:
        from coverage.numbits import numbits_to_nums

        parts = self._kept_parts()
        mapped = {p: self.map_path(p) for part in parts for p in part.files}
        by_context: dict[str, dict[str, Any]] = {}
        if self.has_arcs:
            data.add_arcs({})
            sets: dict[tuple[str, str], set[tuple[int, int]]] = {}
            for part in parts:
                for (context, path), keys in part.arcs.items():
                    sets.setdefault((context, mapped[path]), set()).update(map(_unpack_arc, keys))
                for (context, path), rows in part.wide.items():
                    sets.setdefault((context, mapped[path]), set()).update(rows)
            for (context, path), arc_set in sets.items():
                by_context.setdefault(context, {})[path] = sorted(arc_set)
        elif self.has_arcs is not None:
            data.add_lines({})
            numbers: dict[tuple[str, str], int] = {}
            for part in parts:
                for (context, path), number in part.lines.items():
                    key = (context, mapped[path])
                    numbers[key] = numbers.get(key, 0) | number
            for (context, path), number in numbers.items():
                by_context.setdefault(context, {})[path] = numbits_to_nums(_bits(number))
        for context, files in sorted(by_context.items()):
            data.set_context(context or None)
            if self.has_arcs:
                data.add_arcs(files)
            else:
                data.add_lines(files)
        data.set_context(None)
        tracers = {mapped[p]: t for part in parts for p, t in part.tracers.items()}
        if tracers:
            data.add_file_tracers(tracers)
        measured = {p for files in by_context.values() for p in files}
        by_plugin: dict[str, list[str]] = {}
        for path in sorted(set(mapped.values()) - measured):
            by_plugin.setdefault(tracers.get(path, ""), []).append(path)
        for plugin, paths in sorted(by_plugin.items()):
            data.touch_files(paths, plugin or None)


def _read_shard(
    hub: sqlite3.Connection, name: str, path: str, *, immutable: bool = True
) -> _ShardRead | DataFileError:
    """Read one data file through ``hub`` (in any thread); errors are returned, naming ``name``."""
    try:
        hub.execute("ATTACH DATABASE ? AS shard", (read_only_uri(path, immutable=immutable),))
    except sqlite3.Error as exc:
        try:  # SQLite names no reason: the file system does
            with open(path, "rb"):
                pass
        except OSError as os_exc:
            return DataFileError(f"cannot read coverage data file {name}: {os_exc.strerror}")
        return DataFileError(f"cannot read coverage data file {name}: {exc}")
    try:
        return _read_tables(hub, name)
    except sqlite3.Error as exc:
        return DataFileError(
            f"cannot read coverage data file {name}: {exc} (is it a coverage.py data file?)"
        )
    finally:
        hub.execute("DETACH DATABASE shard")


def read_live_file(
    path: str, *, arcs: bool
) -> tuple[dict[str, dict[str, set[Any]]], list[str], dict[str, str]]:
    """A data file's lines (or arcs), by context and file; its files; its file tracers.

    For a worker's own data file, streamed while it runs: one SQLite connection and a few
    queries, where ``CoverageData`` (coverage.py 7.17) opens and closes a connection for every
    query (two a measured file). Not immutable: its own process writes it between reads. Only
    the kind asked for is read, as ``CoverageData.lines``/``arcs`` give nothing of the other.
    """
    from coverage.numbits import numbits_to_nums  # (the command line loads coverage.py late)

    hub = sqlite3.connect(":memory:")
    try:
        read = _read_shard(hub, path, path, immutable=False)
    finally:
        hub.close()
    if isinstance(read, DataFileError):
        raise read
    by_context: dict[str, dict[str, set[Any]]] = {}
    if arcs:
        for name, context, blob in read.packed:
            by_context.setdefault(context, {}).setdefault(name, set()).update(
                _unpack_arc(key) for key in memoryview(blob).cast("d")
            )
        for name, context, rows in read.wide:
            by_context.setdefault(context, {}).setdefault(name, set()).update(map(tuple, rows))
    else:
        for name, context, numbits in read.lines:
            by_context.setdefault(context, {}).setdefault(name, set()).update(
                numbits_to_nums(numbits)
            )
    return by_context, read.files, read.tracers


#: Everything but the measured data, in one query: a row per schema version, meta key, file,
#: context and tracer, tagged with its table.
_META_QUERY = """
SELECT 0, version, NULL FROM shard.coverage_schema
UNION ALL SELECT 1, key, value FROM shard.meta
UNION ALL SELECT 2, id, path FROM shard.file
UNION ALL SELECT 3, id, context FROM shard.context
UNION ALL SELECT 4, file_id, tracer FROM shard.tracer
"""


def _read_tables(hub: sqlite3.Connection, name: str) -> _ShardRead | DataFileError:
    try:
        rows = hub.execute(_META_QUERY).fetchall()
    except sqlite3.Error:
        # a table is missing: a file of another schema is told so, anything else is re-raised
        (version,) = hub.execute("SELECT version FROM shard.coverage_schema").fetchone() or (None,)
        if version in KNOWN_SCHEMAS:
            raise
    else:
        version = next((key for table, key, _ in rows if table == 0), None)
    if version not in KNOWN_SCHEMAS:
        return DataFileError(
            f"cannot read coverage data file {name}: it has data schema {version}, this"
            f" coverage.py reads {max(KNOWN_SCHEMAS)} (was it written by another version?)"
        )
    tables: list[dict[Any, Any]] = [{}, {}, {}, {}, {}]
    for table, key, value in rows:
        tables[table][key] = value
    _, meta, files, contexts, tracers = tables
    arcs = None if "has_arcs" not in meta else meta["has_arcs"] not in ("0", "False", "")
    read = _ShardRead(arcs, list(files.values()), {files[f]: t for f, t in tracers.items() if t})
    if arcs:
        for fid, cid, text in hub.execute(_ARC_QUERY).fetchall():
            try:
                read.packed.append((files[fid], contexts[cid], bytes.fromhex(text)))
            except ValueError:  # a line number out of the packed range: read it row by row
                rows = hub.execute(
                    "SELECT fromno, tono FROM shard.arc WHERE file_id = ? AND context_id = ?",
                    (fid, cid),
                ).fetchall()
                read.wide.append((files[fid], contexts[cid], rows))
    elif arcs is not None:
        bits = hub.execute("SELECT file_id, context_id, numbits FROM shard.line_bits")
        for fid, cid, numbits in bits.fetchall():
            read.lines.append((files[fid], contexts[cid], numbits))
    return read

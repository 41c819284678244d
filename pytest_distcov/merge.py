"""Combining coverage data: worker deltas, recovered data files, the final data file.

Everything here speaks coverage.py's public data API (``CoverageData``) and never pytest.

* :class:`Accumulator` is the controller's in-memory union: sets of lines (or arcs) per context
  and file. Its size grows with the number of covered lines, never with the number of tests,
  chunks or workers, because a union stores each line once.
* :class:`DeltaReader` is the worker's side: it reads the worker's own data file and returns only
  what the controller has not been sent yet.
* :func:`read_data_file` and :func:`write_data_file` open and atomically save data files, with
  errors that name the file.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from coverage import CoverageData
from coverage.exceptions import CoverageException

from .errors import DataFileError
from .protocol import ContextData, Payload, empty_payload

__all__ = ["Accumulator", "DeltaReader", "ShardUnion", "read_data_file", "write_data_file"]

PathMapper = Callable[[str], str]
#: Line numbers, or (from, to) arcs when branch coverage is on: one run never mixes the two.
Measured = set[Any]

# What sqlite and coverage raise on a damaged or foreign file.
_READ_ERRORS = (CoverageException, sqlite3.Error, OSError, ValueError)


def _identity(path: str) -> str:
    return path


class Accumulator:
    """The union of coverage data from many sources, kept in memory."""

    def __init__(self, *, branch: bool) -> None:
        self.branch = branch
        # context label -> file -> line numbers (or arcs when branch is on)
        self._data: dict[str, dict[str, Measured]] = {}
        self._tracers: dict[str, str] = {}
        self._touched: dict[str, set[str]] = {}

    def __bool__(self) -> bool:
        return bool(self._data or self._touched)

    # -- adding -----------------------------------------------------------------------------

    def _bucket(self, context: str, path: str) -> Measured:
        files = self._data.setdefault(context, {})
        bucket = files.get(path)
        if bucket is None:
            bucket = files[path] = set()
        return bucket

    def add_payload(self, payload: Payload, map_path: PathMapper | None = None) -> int:
        """Merge a worker's payload; return how many lines or arcs were new here."""
        map_path = map_path or _identity
        new = 0
        for context, ctx in payload["contexts"].items():
            lines, arcs = ctx["lines"], ctx["arcs"]
            if (arcs and not self.branch) or (lines and self.branch):
                raise DataFileError(
                    "a worker sent "
                    + ("branch (arc)" if arcs else "line")
                    + " data into a run measuring "
                    + ("branches" if self.branch else "lines only")
                    + ": every worker must use the same branch setting"
                )
            for path, items in (arcs or lines).items():
                bucket = self._bucket(context, map_path(path))
                before = len(bucket)
                bucket.update(tuple(i) if isinstance(i, list) else i for i in items)
                new += len(bucket) - before
        for path, plugin in payload["tracers"].items():
            self._tracers[map_path(path)] = plugin
        for plugin, paths in payload["touched"].items():
            self._touched.setdefault(plugin, set()).update(map_path(p) for p in paths)
        return new

    # -- reading out ------------------------------------------------------------------------

    def covered_lines(self) -> dict[str, set[int]]:
        """Executed line numbers per file, all contexts together."""
        out: dict[str, set[int]] = {}
        for files in self._data.values():
            for path, items in files.items():
                lines = out.setdefault(path, set())
                if self.branch:
                    lines.update(a for arc in items for a in arc if a > 0)
                else:
                    lines.update(items)
        return out

    def size(self) -> int:
        return sum(len(items) for files in self._data.values() for items in files.values())

    def write_into(self, data: CoverageData) -> None:
        """Add everything accumulated to ``data`` (which may hold data already)."""
        if self.branch:
            data.add_arcs({})
        else:
            data.add_lines({})
        for context, files in sorted(self._data.items()):
            data.set_context(context or None)
            if self.branch:
                data.add_arcs({p: sorted(a) for p, a in files.items()})
            else:
                data.add_lines({p: sorted(ls) for p, ls in files.items()})
        data.set_context(None)
        if self._tracers:
            data.add_file_tracers(self._tracers)
        for plugin, paths in sorted(self._touched.items()):
            data.touch_files(sorted(paths), plugin or None)


def read_data_file(path: str | os.PathLike[str]) -> CoverageData:
    """Open a coverage data file for reading, with an error that names it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataFileError(f"coverage data file {path} does not exist")
    data = CoverageData(basename=path)
    try:
        data.read()
        data.measured_files()
    except _READ_ERRORS as exc:
        data.close(force=True)  # a failed open can leave a connection behind (3.13 warns)
        # coverage wraps the sqlite error in a message that repeats the file name: the cause
        # alone says it best.
        reason = str(exc.__cause__ or exc).rstrip(".")
        raise DataFileError(
            f"cannot read coverage data file {path}: {reason}"
            " (is it a coverage.py data file of this coverage version?)"
        ) from None
    return data


def update_from_file(
    target: CoverageData, path: str | os.PathLike[str], map_path: PathMapper | None = None
) -> None:
    """Union the data file at ``path`` into ``target``; the file itself is not changed."""
    source = read_data_file(path)
    try:
        target.update(source, map_path=map_path)
    except _READ_ERRORS as exc:
        raise DataFileError(f"cannot combine coverage data file {os.fspath(path)}: {exc}") from None
    finally:
        source.close()


def write_data_file(
    target: str | os.PathLike[str],
    fill: Callable[[CoverageData], None],
) -> None:
    """Write a complete data file to ``target`` atomically.

    ``fill`` adds the data to a fresh ``CoverageData`` written beside ``target``; only when it
    has finished is the new file renamed over ``target``, so a failure never leaves a partial or
    damaged data file behind (and never touches an existing one).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not ".coverage.*": coverage's own combine would pick that name up.
    tmp = target.with_name(f"{target.name}-distcov-{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    data = CoverageData(basename=str(tmp))
    try:
        fill(data)
        data.close(force=True)
        os.replace(tmp, target)
    except BaseException:
        data.close(force=True)
        tmp.unlink(missing_ok=True)
        raise


def _context_pattern(label: str) -> str:
    return f"^{re.escape(label)}$"


class DeltaReader:
    """Computes what is new in a data file since the last call (the worker's side of streaming).

    Each call opens the file afresh (a long-lived reader would not see files added later), reads
    every file's lines or arcs, and keeps a shadow of what was returned before.
    """

    def __init__(self, *, branch: bool) -> None:
        self.branch = branch
        self._sent: dict[str, dict[str, Measured]] = {}
        self._sent_tracers: dict[str, str] = {}
        self._sent_files: set[str] = set()

    def delta_from_file(self, path: str) -> Payload:
        data = CoverageData(basename=path)
        try:
            data.read()
            return self.delta(data)
        finally:
            data.close()

    def delta(self, data: CoverageData) -> Payload:
        payload = empty_payload()
        files = sorted(data.measured_files())
        contexts = sorted(data.measured_contexts()) or [""]
        for label in contexts:
            if len(contexts) > 1:
                data.set_query_contexts([_context_pattern(label)])
            sent = self._sent.setdefault(label, {})
            ctx: ContextData = {"lines": {}, "arcs": {}}
            for path in files:
                items: Iterable[Any] | None = data.arcs(path) if self.branch else data.lines(path)
                if not items:
                    continue
                shadow = sent.setdefault(path, set())
                fresh = set(items) - shadow
                if fresh:
                    shadow.update(fresh)
                    if self.branch:
                        ctx["arcs"][path] = sorted(fresh)
                    else:
                        ctx["lines"][path] = sorted(fresh)
            if ctx["lines"] or ctx["arcs"]:
                payload["contexts"][label] = ctx
        if len(contexts) > 1:
            data.set_query_contexts(None)
        for path in files:
            tracer = data.file_tracer(path) or ""
            if tracer and self._sent_tracers.get(path) != tracer:
                payload["tracers"][path] = self._sent_tracers[path] = tracer
            if path not in self._sent_files:
                self._sent_files.add(path)
                payload["touched"].setdefault(tracer, []).append(path)
        return payload


#: The data-file schemas read straight from SQLite here and in contexts.py (coverage.py documents
#: its schema; a file of another schema gets the same refusal coverage itself gives it).
KNOWN_SCHEMAS = frozenset({7})


def read_only_uri(path: str | os.PathLike[str]) -> str:
    """An SQLite URI that opens ``path`` read-only (it is never changed or journaled)."""
    return f"file:{Path(path).resolve().as_uri()[len('file://') :]}?mode=ro"


def _bits(number: int) -> bytes:
    return number.to_bytes((number.bit_length() + 7) // 8, "little")


class ShardUnion:
    """The union of many whole data files, read straight from their SQLite tables.

    This is ``coverage combine`` without its per-file overhead. Each file is attached read-only
    (never changed) to one in-memory SQLite database. Its lines are kept as integers whose set
    bits are the line numbers (a numbits blob read as one little-endian integer, so a union is
    one ``|``); its arcs are copied by SQLite itself into a table that keeps each arc once.
    Contexts, file tracers and measured-but-empty files are kept. Paths go through ``map_path``
    (a shard's relative paths become the combiner's own) when the union is written out.
    """

    def __init__(self, map_path: PathMapper | None = None) -> None:
        self.map_path = map_path or _identity
        self.has_arcs: bool | None = None
        self.first: str = ""
        self._lines: dict[tuple[str, str], int] = {}
        self._files: set[str] = set()
        self._tracers: dict[str, str] = {}
        self._hub = sqlite3.connect(":memory:", uri=True, isolation_level=None)
        self._hub.execute(
            "CREATE TABLE arc (path TEXT, context TEXT, fromno INTEGER, tono INTEGER,"
            " UNIQUE (path, context, fromno, tono))"
        )

    def add_file(self, path: str, name: str | None = None) -> None:
        """Add one data file; a :class:`DataFileError` names it (as ``name``) if it is unusable."""
        name = name or path
        try:
            self._hub.execute("ATTACH DATABASE ? AS shard", (read_only_uri(path),))
        except sqlite3.Error as exc:
            raise DataFileError(f"cannot read coverage data file {name}: {exc}") from None
        try:
            self._read(name)
        except sqlite3.Error as exc:
            raise DataFileError(
                f"cannot read coverage data file {name}: {exc} (is it a coverage.py data file?)"
            ) from None
        finally:
            self._hub.execute("DETACH DATABASE shard")

    def _read(self, path: str) -> None:
        hub = self._hub
        (version,) = hub.execute("SELECT version FROM shard.coverage_schema").fetchone() or (None,)
        if version not in KNOWN_SCHEMAS:
            raise DataFileError(
                f"cannot read coverage data file {path}: it has data schema {version}, this"
                f" coverage.py reads {max(KNOWN_SCHEMAS)} (was it written by another version?)"
            )
        meta = dict(hub.execute("SELECT key, value FROM shard.meta").fetchall())
        arcs = None if "has_arcs" not in meta else meta["has_arcs"] not in ("0", "False", "")
        if arcs is not None and self.has_arcs is not None and arcs != self.has_arcs:
            kind = "branch (arc)" if arcs else "line"
            raise DataFileError(
                f"cannot combine coverage data file {path}: it holds {kind} data, but"
                f" {self.first} does not; combine shards measured the same way"
            )
        files = dict(hub.execute("SELECT id, path FROM shard.file").fetchall())
        contexts = dict(hub.execute("SELECT id, context FROM shard.context").fetchall())
        tracers = hub.execute("SELECT file_id, tracer FROM shard.tracer").fetchall()
        if arcs:
            # one statement: all of the file's arcs or (on an error) none of them
            hub.execute(
                "INSERT OR IGNORE INTO main.arc SELECT f.path, c.context, a.fromno, a.tono"
                " FROM shard.arc a JOIN shard.file f ON f.id = a.file_id"
                " JOIN shard.context c ON c.id = a.context_id"
            )
        elif arcs is not None:
            bits = hub.execute("SELECT file_id, context_id, numbits FROM shard.line_bits")
            lines = self._lines
            for fid, cid, numbits in bits.fetchall():
                key = (contexts[cid], files[fid])
                lines[key] = lines.get(key, 0) | int.from_bytes(numbits, "little")
        if arcs is not None and self.has_arcs is None:
            self.has_arcs, self.first = arcs, path
        self._files.update(files.values())
        for fid, tracer in tracers:
            if tracer:
                self._tracers[files[fid]] = tracer

    def write_into(self, data: CoverageData) -> None:
        from coverage.numbits import numbits_to_nums

        mapped = {p: self.map_path(p) for p in self._files}
        by_context: dict[str, dict[str, Any]] = {}
        if self.has_arcs:
            data.add_arcs({})
            sets: dict[tuple[str, str], set[tuple[int, int]]] = {}
            rows = self._hub.execute("SELECT path, context, fromno, tono FROM arc")
            for path, context, fromno, tono in rows:
                sets.setdefault((context, mapped[path]), set()).add((fromno, tono))
            for (context, path), arc_set in sets.items():
                by_context.setdefault(context, {})[path] = sorted(arc_set)
        elif self.has_arcs is not None:
            data.add_lines({})
            numbers: dict[tuple[str, str], int] = {}
            for (context, path), number in self._lines.items():
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
        tracers = {mapped[p]: t for p, t in self._tracers.items()}
        if tracers:
            data.add_file_tracers(tracers)
        measured = {p for files in by_context.values() for p in files}
        by_plugin: dict[str, list[str]] = {}
        for path in sorted(set(mapped.values()) - measured):
            by_plugin.setdefault(tracers.get(path, ""), []).append(path)
        for plugin, paths in sorted(by_plugin.items()):
            data.touch_files(paths, plugin or None)

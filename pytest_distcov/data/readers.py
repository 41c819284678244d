"""Every reader of coverage data files and journals, and what they share.

* :func:`read_data_file` opens a data file through coverage.py's ``CoverageData``, with errors
  that name the file; :func:`update_from_file` unions a data file or a worker's journal (see
  :mod:`.journal`) into another, as the controller's recovery and ``combine`` do.
* :class:`DeltaReader` is the worker's side of streaming: what is new in its own data file
  since the last call. It reads the file with :func:`read_live_file`.
* :class:`ContextDeltaReader` does the same for per-test contexts, whatever their number.
* :func:`read_shard` reads one whole data file for :class:`~.union.ShardUnion`.

What they share: read-only SQLite URIs (:func:`read_only_uri`: a reader never changes or locks
what it reads unless it must), the data-file schemas read straight from SQLite
(:data:`KNOWN_SCHEMAS`), coverage.py's numbits decoding, and the path mappers that turn a
worker's or a shard's paths into the controller's.

coverage.py is loaded only when a reader needs it: ``pytest-distcov combine`` starts its reader
processes (which read SQLite alone) before it loads coverage.py. Nothing here imports pytest.
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import stat
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_distcov.errors import DataFileError
from pytest_distcov.protocol import ContextData, Payload, empty_payload

from .journal import JOURNAL_SUFFIX, read_journal

if TYPE_CHECKING:
    from coverage import CoverageData

__all__ = [
    "KNOWN_SCHEMAS",
    "ContextDeltaReader",
    "DeltaReader",
    "PathMapper",
    "ShardRead",
    "identity",
    "numbits_decoder",
    "read_data_file",
    "read_live_file",
    "read_only_uri",
    "read_shard",
    "unpack_shard_arc",
    "update_from_file",
    "update_from_journal",
]

#: Line numbers, or (from, to) arcs when branch coverage is on: one run never mixes the two.
Measured = set[Any]

PathMapper = Callable[[str], str]


def identity(path: str) -> str:
    """The path mapper that leaves paths as they are."""
    return path


#: The data-file schemas read straight from SQLite here (coverage.py documents its schema; a
#: file of another schema gets the same refusal coverage itself gives it).
KNOWN_SCHEMAS = frozenset({7})


def read_only_uri(path: str | os.PathLike[str], *, immutable: bool = False) -> str:
    """An SQLite URI that opens ``path`` read-only (it is never changed or journaled).

    ``immutable`` also tells SQLite that nobody changes the file while it is open, so it takes
    no locks: right for a finished shard, wrong for a file a live process writes.
    """
    uri = f"file:{Path(path).resolve().as_uri()[len('file://') :]}?mode=ro"
    return uri + "&immutable=1" if immutable else uri


def numbits_decoder() -> Callable[[bytes], list[int]]:
    """coverage.py's decoder of a numbits blob (a set of line numbers), loaded when asked for."""
    from coverage.numbits import numbits_to_nums

    return numbits_to_nums


def _read_errors(*more: type[Exception]) -> tuple[type[Exception], ...]:
    """What sqlite and coverage raise on a damaged or foreign file (and ``more``)."""
    from coverage.exceptions import CoverageException

    return (CoverageException, sqlite3.Error, OSError, ValueError, *more)


# -- through coverage.py's CoverageData ----------------------------------------------------------


def read_data_file(path: str | os.PathLike[str]) -> CoverageData:
    """Open a coverage data file for reading, with an error that names it."""
    from coverage import CoverageData

    path = os.fspath(path)
    try:  # SQLite would only say "unable to open database file"; a FIFO must not block
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            kind = os.fstat(fd).st_mode
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise DataFileError(f"coverage data file {path} does not exist") from None
    except OSError as exc:
        raise DataFileError(f"cannot read coverage data file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(kind):
        what = "a directory" if stat.S_ISDIR(kind) else "not a regular file"
        raise DataFileError(f"coverage data file {path} is {what}")
    data = CoverageData(basename=path)
    try:
        data.read()
        data.measured_files()
    except _read_errors() as exc:
        data.close(force=True)  # a failed open can leave a connection behind (3.13 warns)
        # coverage wraps the sqlite error in a message that repeats the file name: the cause
        # alone says it best.
        reason = str(exc.__cause__ or exc).rstrip(".")
        raise DataFileError(
            f"cannot read coverage data file {path}: {reason}"
            " (is it a coverage.py data file of this coverage version?)"
        ) from None
    return data


def update_from_journal(
    target: CoverageData, path: str | os.PathLike[str], map_path: PathMapper | None = None
) -> None:
    """Union a worker's journal of flushed lines or arcs (see :mod:`.journal`) into ``target``.
    A last line cut short (the worker was killed while writing it) is skipped: it belonged to a
    test that had not finished."""
    mapped = map_path or identity
    for kind, record in read_journal(path):
        try:
            if kind == "arcs":
                target.add_arcs({mapped(f): arcs for f, arcs in record.items()})
            else:
                target.add_lines({mapped(f): lines for f, lines in record.items()})
        except _read_errors(TypeError, AttributeError) as exc:  # e.g. arcs into line data
            if _writing_failed(target, exc):
                raise
            raise DataFileError(f"cannot combine journal {os.fspath(path)}: {exc}") from None


def update_from_file(
    target: CoverageData, path: str | os.PathLike[str], map_path: PathMapper | None = None
) -> None:
    """Union the data file (or a worker's journal) at ``path`` into ``target``; the file itself
    is not changed."""
    if os.fspath(path).endswith(JOURNAL_SUFFIX):
        update_from_journal(target, path, map_path)
        return
    source = read_data_file(path)
    try:
        target.update(source, map_path=map_path)
    except _read_errors() as exc:
        if _writing_failed(target, exc):
            raise
        raise DataFileError(f"cannot combine coverage data file {os.fspath(path)}: {exc}") from None
    finally:
        source.close()


def _writing_failed(target: CoverageData, exc: BaseException) -> bool:
    """True if ``exc`` is a failure to write ``target`` (a full disk), not to read a source.

    Such a failure is no fault of the file being read and must not be passed off as one (the
    caller would skip that file and write the rest as if it were complete). coverage names the
    data file it was using in its errors (``Couldn't use data file '...'``), but some of its
    SQLite calls (``executescript``) raise SQLite's own error: its code then tells.
    """
    name = target.data_filename()
    cause: BaseException | None = exc
    while cause is not None:
        if name and name in str(cause):
            return True
        code = getattr(cause, "sqlite_errorcode", None)  # Python 3.11+
        if isinstance(code, int) and (code & 0xFF in _SQLITE_WRITE_CODES or code in _IOERR_WRITE):
            return True
        if isinstance(cause, sqlite3.Error) and str(cause) in _SQLITE_WRITE_MESSAGES:
            return True
        if isinstance(cause, OSError) and cause.errno in _WRITE_ERRNOS:
            return True
        cause = cause.__cause__
    return False


#: SQLite result codes only a write can cause: SQLITE_READONLY, SQLITE_FULL (8, 13; the low
#: byte of an extended code is its primary code) and, of SQLITE_IOERR's extended codes, those
#: of writing: _WRITE, _FSYNC, _DIR_FSYNC, _TRUNCATE (a failed read is another SQLITE_IOERR).
_SQLITE_WRITE_CODES = (8, 13)
_IOERR_WRITE = (778, 1034, 1290, 1546)
#: Their messages, for Python 3.10 (no ``sqlite_errorcode``).
_SQLITE_WRITE_MESSAGES = ("database or disk is full", "attempt to write a readonly database")
_WRITE_ERRNOS = (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS)


# -- the worker's side of streaming --------------------------------------------------------------


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
        if not os.path.exists(path):
            return empty_payload()  # nothing flushed yet
        by_context, files, tracers = read_live_file(path, arcs=self.branch)
        return self._delta(by_context, files, tracers)

    def delta_of(self, context: str, found: Mapping[str, Iterable[Any]]) -> Payload:
        """The part of ``found`` (one context's lines or arcs, by file) not returned before."""
        return self._delta({context: found}, found.keys(), {})

    def delta(self, data: CoverageData) -> Payload:
        files = sorted(data.measured_files())
        contexts = sorted(data.measured_contexts()) or [""]
        by_context: dict[str, dict[str, Iterable[Any]]] = {}
        for label in contexts:
            if len(contexts) > 1:
                data.set_query_contexts([_context_pattern(label)])
            by_context[label] = {
                path: (data.arcs(path) if self.branch else data.lines(path)) or () for path in files
            }
        if len(contexts) > 1:
            data.set_query_contexts(None)
        tracers = {path: tracer for path in files if (tracer := data.file_tracer(path))}
        return self._delta(by_context, files, tracers)

    def _delta(
        self,
        by_context: Mapping[str, Mapping[str, Iterable[Any]]],
        files: Iterable[str],
        tracers: Mapping[str, str],
    ) -> Payload:
        payload = empty_payload()
        for label in sorted(by_context):
            sent = self._sent.setdefault(label, {})
            ctx: ContextData = {"lines": {}, "arcs": {}}
            for path, items in sorted(by_context[label].items()):
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
        for path in sorted(files):
            tracer = tracers.get(path, "")
            if tracer and self._sent_tracers.get(path) != tracer:
                payload["tracers"][path] = self._sent_tracers[path] = tracer
            if path not in self._sent_files:
                self._sent_files.add(path)
                payload["touched"].setdefault(tracer, []).append(path)
        return payload


class ContextDeltaReader:
    """What is new in a worker's data file since the last read, all contexts at once.

    A worker with thousands of per-test contexts cannot ask coverage's data API for each
    context's lines at every chunk (one query per context and file). This reader instead reads
    the rows that changed since its last read straight from the data file's tables (coverage
    documents its schema): arcs are only ever inserted, so new ones have higher rowids; a
    ``line_bits`` row that grows is replaced, which gives it a rowid at least as high as the
    highest one before. One query per table and chunk, whatever the number of contexts.
    """

    def __init__(self, *, branch: bool) -> None:
        self.branch = branch
        # highest rowid (or id) read so far, per table
        self._line_mark = 0
        self._arc_mark = 0
        self._file_mark = 0
        self._context_mark = 0
        self._files: dict[int, str] = {}
        self._contexts: dict[int, str] = {}
        self._tracers: dict[str, str] = {}

    def delta_from_file(self, path: str | Path) -> Payload:
        if not Path(path).exists():
            return empty_payload()  # nothing flushed yet
        con = None
        try:
            con = sqlite3.connect(read_only_uri(path), uri=True)
            return self._delta(con, str(path))
        except sqlite3.Error as exc:
            raise DataFileError(f"cannot read coverage data file {path}: {exc}") from None
        finally:
            if con is not None:
                con.close()

    def _new(self, con: sqlite3.Connection, table: str, mark: int) -> list[tuple[int, str]]:
        query = f"SELECT id, {'path' if table == 'file' else 'context'} FROM {table} WHERE id > ?"
        return con.execute(query, (mark,)).fetchall()

    def _delta(self, con: sqlite3.Connection, path: str) -> Payload:
        payload = empty_payload()
        found = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'coverage_schema'")
        if found.fetchone() is None:
            return payload  # nothing written yet
        (version,) = con.execute("SELECT version FROM coverage_schema").fetchone()
        if version not in KNOWN_SCHEMAS:
            raise DataFileError(f"{path} has data schema {version}, which this reader cannot read")
        new_files = self._new(con, "file", self._file_mark)
        self._files.update(new_files)
        self._file_mark = max((fid for fid, _ in new_files), default=self._file_mark)
        new_contexts = self._new(con, "context", self._context_mark)
        self._contexts.update(new_contexts)
        self._context_mark = max((cid for cid, _ in new_contexts), default=self._context_mark)

        by_context: dict[str, ContextData] = {}
        if self.branch:
            rows = con.execute(
                "SELECT rowid, file_id, context_id, fromno, tono FROM arc WHERE rowid > ?",
                (self._arc_mark,),
            ).fetchall()
            for _, fid, cid, fromno, tono in rows:
                ctx = by_context.setdefault(self._contexts[cid], {"lines": {}, "arcs": {}})
                ctx["arcs"].setdefault(self._files[fid], []).append((fromno, tono))
            self._arc_mark = max((r[0] for r in rows), default=self._arc_mark)
        else:
            numbits_to_nums = numbits_decoder()
            rows = con.execute(
                "SELECT rowid, file_id, context_id, numbits FROM line_bits WHERE rowid >= ?",
                (self._line_mark,),
            ).fetchall()
            for _, fid, cid, numbits in rows:
                ctx = by_context.setdefault(self._contexts[cid], {"lines": {}, "arcs": {}})
                ctx["lines"][self._files[fid]] = numbits_to_nums(numbits)
            self._line_mark = max((r[0] for r in rows), default=self._line_mark)
        payload["contexts"] = by_context
        for fid, tracer in con.execute("SELECT file_id, tracer FROM tracer").fetchall():
            fpath = self._files.get(fid)
            if fpath and tracer and self._tracers.get(fpath) != tracer:
                payload["tracers"][fpath] = self._tracers[fpath] = tracer
        for _, fpath in new_files:
            payload["touched"].setdefault(self._tracers.get(fpath, ""), []).append(fpath)
        return payload


# -- straight from SQLite: whole files ----------------------------------------------------------

# How a data file's arcs are carried out of SQLite (see _ARC_QUERY): an arc (fromno, tono) with
# both numbers in [-2**25, 2**25) is packed into one integer, offset to exactly 16 decimal digits.
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


def unpack_shard_arc(key: float) -> tuple[int, int]:
    """An arc as :func:`read_shard` packs it (one float of :attr:`ShardRead.packed`)."""
    packed = int(struct.pack("d", key).hex()) - _ARC_DIGITS
    return (packed >> _ARC_SHIFT) - _ARC_OFFSET, (packed & ((1 << _ARC_SHIFT) - 1)) - _ARC_OFFSET


class ShardRead:
    """What one data file holds (file and context names resolved)."""

    __slots__ = ("arcs", "files", "lines", "packed", "tracers", "wide")

    def __init__(self, arcs: bool | None, files: list[str], tracers: dict[str, str]) -> None:
        #: True: arc data, False: line data, None: no data
        self.arcs = arcs
        self.files = files
        self.tracers = tracers
        #: (path, context, numbits)
        self.lines: list[tuple[str, str, bytes]] = []
        #: (path, context, packed arcs: 8 bytes each, see _ARC_QUERY)
        self.packed: list[tuple[str, str, bytes]] = []
        #: (path, context, arcs beyond the packed range)
        self.wide: list[tuple[str, str, list[tuple[int, int]]]] = []


def read_shard(
    hub: sqlite3.Connection, name: str, path: str, *, immutable: bool = True
) -> ShardRead | DataFileError:
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
    hub = sqlite3.connect(":memory:")
    try:
        read = read_shard(hub, path, path, immutable=False)
    finally:
        hub.close()
    if isinstance(read, DataFileError):
        raise read
    by_context: dict[str, dict[str, set[Any]]] = {}
    if arcs:
        for name, context, blob in read.packed:
            by_context.setdefault(context, {}).setdefault(name, set()).update(
                unpack_shard_arc(key) for key in memoryview(blob).cast("d")
            )
        for name, context, rows in read.wide:
            by_context.setdefault(context, {}).setdefault(name, set()).update(map(tuple, rows))
    else:
        numbits_to_nums = numbits_decoder()
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


def _read_tables(hub: sqlite3.Connection, name: str) -> ShardRead | DataFileError:
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
    read = ShardRead(arcs, list(files.values()), {files[f]: t for f, t in tracers.items() if t})
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

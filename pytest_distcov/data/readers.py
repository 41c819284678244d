"""Every reader of coverage data files and journals, and what they share.

* :func:`read_data_file` opens a data file through coverage.py's ``CoverageData``, with errors
  that name the file; :func:`update_from_file` unions a data file or a worker's journal (see
  :mod:`.journal`) into another, as the controller's recovery and ``combine`` do.
* :class:`DeltaReader` is the worker's side of streaming: what is new in its own data file
  since the last call. It reads the file with :func:`read_live_file`.
* :class:`ContextDeltaReader` does the same for per-test contexts, whatever their number.
* :func:`read_shard` reads one whole data file for :class:`~.union.ShardUnion`. A shard comes
  from a store anyone with access could write to: it is checked whole (stored tables, the
  types coverage.py writes, known ids, line numbers up to :data:`MAX_LINE`) and read within a
  budget that grows with its size (:data:`READ_STEPS`), and whatever is wrong is its own error.

What they share: read-only SQLite URIs (:func:`read_only_uri`: a reader never changes or locks
what it reads unless it must), the data-file schemas read straight from SQLite
(:data:`KNOWN_SCHEMAS`), coverage.py's numbits decoding, and the path mappers that turn a
worker's or a shard's paths into the controller's (:class:`UntrustedPath`: one they refuse).

coverage.py is loaded only when a reader needs it: ``pytest-distcov combine`` starts its reader
processes (which read SQLite alone) before it loads coverage.py. Nothing here imports pytest.
"""

from __future__ import annotations

import contextlib
import errno
import operator
import os
import re
import sqlite3
import stat
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from pytest_distcov.errors import DataFileError, UntrustedPath
from pytest_distcov.protocol import MAX_LINE, ContextData, Payload, empty_payload

from .journal import JOURNAL_SUFFIX, read_entries

if TYPE_CHECKING:
    from coverage import CoverageData

__all__ = [
    "KNOWN_SCHEMAS",
    "MAX_LINE",
    "MAX_NUMBITS",
    "ContextDeltaReader",
    "DeltaReader",
    "MemoryContextDelta",
    "PathMapper",
    "ShardHub",
    "ShardRead",
    "UntrustedPath",
    "checked_mapper",
    "copy_at_most",
    "identity",
    "numbits_decoder",
    "numbits_of",
    "read_data_file",
    "read_live_file",
    "read_only_uri",
    "read_shard",
    "shard_hub",
    "shown",
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


def checked_mapper(map_path: PathMapper | None = None) -> PathMapper:
    """``map_path`` (or :func:`identity`), refusing a path that names something here other
    than a regular file (a FIFO would hang the report, ``/dev/zero`` fill the memory).

    A worker's data names the files it measured: a path that does not exist here is taken as
    it is (a serial run records files that are gone by the report too). The answers are
    cached: a worker names each file in many chunks.
    """
    inner = map_path or identity
    answers: dict[str, tuple[str, bool]] = {}  # path -> (its mapping, or why it is refused; ok)

    def checked(path: str) -> str:
        got = answers.get(path)
        if got is None:
            try:
                if path.endswith(_COMPILED):
                    # coverage.py's reports read the source beside it (``source_for_file``):
                    # a check of this name would not be a check of the file read
                    raise UntrustedPath(
                        f"it names {shown(path)}, a compiled file (measured code is named by"
                        " its source)"
                    )
                local = inner(path)
                if local.endswith(_COMPILED):  # (a [paths] remap, say)
                    raise UntrustedPath(f"it names {shown(path)}, mapped to a compiled file")
                got = (_regular_or_absent(local), True)
            except UntrustedPath as exc:
                got = (str(exc), False)
            answers[path] = got
        if not got[1]:
            raise UntrustedPath(got[0])  # a fresh one: a kept one would grow its traceback
        return got[0]

    return checked


#: Names coverage.py's reports turn into the source file's (``.pyc`` -> ``.py``).
_COMPILED = (".pyc", ".pyo")


def _regular_or_absent(path: str) -> str:
    if "\0" in path:
        raise UntrustedPath(f"it names {shown(path)}, with a NUL character in it")
    try:
        mode = os.stat(path).st_mode
    except OSError:  # absent or unreachable: nothing is read here
        return path
    except ValueError:  # not a file name here (a lone surrogate)
        raise UntrustedPath(f"it names {shown(path)}, which cannot be a file name here") from None
    if not stat.S_ISREG(mode):
        raise UntrustedPath(f"it names {shown(path)}, which is not a regular file here")
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
    test that had not finished. A record with a context label goes under that label, and the
    target's own context is set again after it."""
    from pytest_distcov.covapi.data import recorded_context  # (coverage.py only when needed)

    mapped = map_path or identity
    own = recorded_context(target)
    refused: list[str] = []

    def kept(record: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for name, items in record.items():
            try:
                out[mapped(name)] = items
            except UntrustedPath as exc:
                refused.append(str(exc))
        return out

    for context, (kind, record) in read_entries(path):
        try:
            if context is not None:
                target.set_context(context)
            if kind == "arcs":
                target.add_arcs(kept(record))
            else:
                target.add_lines(kept(record))
        except _read_errors(TypeError, AttributeError) as exc:  # e.g. arcs into line data
            if _writing_failed(target, exc):
                raise
            raise DataFileError(f"cannot combine journal {os.fspath(path)}: {exc}") from None
        finally:
            if context is not None:
                target.set_context(own or None)
    if refused:
        files = "a file" if len(set(refused)) == 1 else f"{len(set(refused))} files"
        raise DataFileError(
            f"journal {os.fspath(path)}: the data of {files} is left out ({refused[0]})"
        )


def update_from_file(
    target: CoverageData, path: str | os.PathLike[str], map_path: PathMapper | None = None
) -> None:
    """Union the data file (or a worker's journal) at ``path`` into ``target``; the file itself
    is not changed.

    A file whose paths ``map_path`` refuses loses those files' data only: the rest is united,
    then :class:`DataFileError` names what was left out (the caller keeps the file).
    """
    if os.fspath(path).endswith(JOURNAL_SUFFIX):
        update_from_journal(target, path, map_path)
        return
    source = read_data_file(path)
    refused: dict[str, str] = {}  # path in the file -> why it is refused
    try:
        if map_path is not None:
            # Mapped and checked before coverage.py reads the file: a mapper's refusal raised
            # inside its update would fail the target's write, not this file alone.
            mapped = {}
            for name in source.measured_files():
                try:
                    mapped[name] = map_path(name)
                except UntrustedPath as exc:
                    refused[name] = str(exc)
            map_path = mapped.get  # type: ignore[assignment]
        if refused:
            source.close()
            with _without_files(path, refused, keep=set(mapped)) as kept:
                source = read_data_file(kept)
                target.update(source, map_path=_only(mapped))
                source.close()  # before its directory goes
        else:
            target.update(source, map_path=map_path)
    except _CopyFailed as exc:
        raise DataFileError(
            f"cannot combine coverage data file {os.fspath(path)}: it names files that are left"
            f" out ({next(iter(refused.values()))}), and a copy without them failed: {exc}"
        ) from None
    except _read_errors() as exc:
        if _writing_failed(target, exc):
            raise
        raise DataFileError(f"cannot combine coverage data file {os.fspath(path)}: {exc}") from None
    finally:
        source.close()
    if refused:
        files = "a file" if len(refused) == 1 else f"{len(refused)} files"
        first = next(iter(refused.values()))
        raise DataFileError(
            f"coverage data file {os.fspath(path)}: the data of {files} is left out ({first})"
        )


def _only(mapped: Mapping[str, str]) -> PathMapper:
    """A mapper of the checked names alone: any other is the source's error (ValueError)."""

    def map_path(name: str) -> str:
        try:
            return mapped[name]
        except KeyError:
            raise ValueError(f"it names {shown(name)}, which was not checked") from None

    return map_path


@contextlib.contextmanager
def _without_files(
    path: str | os.PathLike[str], names: Iterable[str], *, keep: set[str]
) -> Iterator[Path]:
    """A private copy of the data file at ``path`` without the files ``names`` (their rows in
    every table that names a file), removed on exit; ``path`` itself is not changed."""
    with tempfile.TemporaryDirectory(prefix="distcov-part-") as tmp:
        copy = Path(tmp) / "part.coverage"
        try:
            _copy_without(path, copy, names, keep)
        except (sqlite3.Error, OSError) as exc:  # a full temporary disk is not the target's
            raise _CopyFailed(str(exc)) from None
        yield copy


class _CopyFailed(Exception):
    """A copy of a data file without its refused files could not be made."""


def _copy_without(
    path: str | os.PathLike[str], copy: Path, names: Iterable[str], keep: set[str]
) -> None:
    """Copy the data file at ``path`` to ``copy`` without the files ``names``; what is left
    must be the files ``keep`` exactly (a trigger or view of a doctored file is dropped first:
    it could put a path back, or change the files kept)."""
    source = sqlite3.connect(read_only_uri(path), uri=True)
    try:
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
            extras = target.execute(
                "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view')"
            ).fetchall()
            for kind, name in extras:
                quoted = '"' + str(name).replace('"', '""') + '"'
                target.execute(f"DROP {'TRIGGER' if kind == 'trigger' else 'VIEW'} {quoted}")
            listed = target.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = {row[0] for row in listed}
            with target:
                for name in names:
                    rows = target.execute("SELECT id FROM file WHERE path = ?", (name,)).fetchall()
                    for (file_id,) in rows:
                        for table in ("line_bits", "arc", "tracer"):
                            if table in tables:  # (names from this tuple, never from the file)
                                target.execute(
                                    f"DELETE FROM {table} WHERE file_id = ?",
                                    (file_id,),
                                )
                        target.execute("DELETE FROM file WHERE id = ?", (file_id,))
            left = {row[0] for row in target.execute("SELECT path FROM file")}
            if left != keep:
                raise sqlite3.DatabaseError("its files changed as they were taken out")
        finally:
            target.close()
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
            grouped: dict[tuple[str, str], list[tuple[int, int]]] = {}
            for _, fid, cid, fromno, tono in rows:
                key = (self._contexts[cid], self._files[fid])
                grouped.setdefault(key, []).append((fromno, tono))
            for (label, name), arcs in grouped.items():
                ctx = by_context.setdefault(label, {"lines": {}, "arcs": {}})
                ctx["arcs"][name] = arcs
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


class MemoryContextDelta:
    """Chunks of per-test contexts an engine hands over from memory (the monitor engine gives
    each test phase's lines once), in the payload :class:`ContextDeltaReader` makes from a file.
    Only the files already sent as touched are remembered."""

    def __init__(self, *, branch: bool = False) -> None:
        self._touched: set[str] = set()
        #: the engine hands arcs (the branch engine's), not lines
        self.branch = branch

    def delta_of(self, by_context: Mapping[str, Mapping[str, Iterable[Any]]]) -> Payload:
        payload = empty_payload()
        touched = self._touched
        for label in sorted(by_context):
            # (each file's items as the engine gave them: packed for the wire, see
            # protocol.packed, where a frozenset the engine gave again is packed once)
            lines: dict[str, Any] = dict(sorted(by_context[label].items()))
            if not lines:
                continue
            if self.branch:
                payload["contexts"][label] = {"lines": {}, "arcs": lines}
            else:
                payload["contexts"][label] = {"lines": lines, "arcs": {}}
            for path in lines:
                if path not in touched:
                    touched.add(path)
                    payload["touched"].setdefault("", []).append(path)
        return payload


# -- straight from SQLite: whole files ----------------------------------------------------------

#: A data file holds line numbers up to :data:`~pytest_distcov.protocol.MAX_LINE` (the bound a
#: message from a worker keeps to), and no smaller than its negation. It is also the range the
#: packed arcs carry (see ``_ARC_QUERY``), so every arc of a valid file is packed; line data (a
#: blob of one bit a line) needs at most :data:`MAX_NUMBITS` bytes.
MAX_NUMBITS = MAX_LINE // 8 + 1

#: The longest name (a path, a context, a plugin, a meta key or value) a data file may hold, in
#: characters: far above any path or test id, and small enough that a few rows of them cannot
#: fill the memory before the budget below sees them.
MAX_NAME = 1 << 16

#: The reading budget of one shard, so that no file can make ``combine`` run or grow without
#: end: SQLite steps (its virtual machine's instructions, counted by a progress handler), and
#: what the rows read may hold (:data:`ROW_BYTES` a row, plus the length of its values), each a
#: base plus so much for every byte of the file. Reading a real data file takes at most about
#: two steps a byte and yields at most about 4 such bytes a byte (measured on line and arc data
#: with up to thousands of files and contexts: a row is stored, with its index entry, in 20
#: bytes or more); the factors leave 8 times that. As every table read is stored (see
#: ``_READ_TABLES``), only a damaged or doctored file can go beyond: pages that point back at
#: each other, one long value that many rows share. It stops here, and the shard is refused.
#: Rows are fetched in batches no bigger than what the budget has left (16 rows at least, each
#: value capped: :data:`MAX_NUMBITS`, :data:`MAX_NAME`) and held against it before anything
#: else is done with them.
READ_STEPS = 10_000_000
READ_STEPS_PER_BYTE = 16
READ_BYTES = 16 << 20
READ_BYTES_PER_BYTE = 32
ROW_BYTES = 100
#: The longest string or blob SQLite may make while reading shards (set where Python can set it,
#: 3.11 on; SQLite's own limit, a billion bytes, before): one file's arcs in one context travel
#: as one string of 16 characters an arc, so this is 4 million arcs.
MAX_VALUE_BYTES = 64 << 20

_STEP_EVERY = 1000  # SQLite steps between two calls of the progress handler
_BATCH = 4096  # rows fetched at once, at most

# How a data file's arcs are carried out of SQLite (see _ARC_QUERY): an arc (fromno, tono) with
# both numbers in [-2**25, 2**25) is packed into one integer, offset to exactly 16 decimal digits.
_ARC_OFFSET = MAX_LINE + 1
_ARC_SHIFT = 26
_ARC_DIGITS = 10**15
_ARC_BASE = _ARC_OFFSET * (1 << _ARC_SHIFT) + _ARC_OFFSET + _ARC_DIGITS
# Per file and context, one string of all its packed arcs, 16 digits each, in one pass over the
# covering index; an arc with a number beyond MAX_LINE, or one that is not an integer, writes
# "x" or a real's text ("1.0e+15"), neither of which is hex, and the shard is refused. A decimal
# digit string is also a hex digit string, so ``bytes.fromhex`` turns the text into 8 bytes an
# arc, and ``memoryview.cast("d")`` reads those as distinct floats: no Python code runs per arc.
# (Floats because Python makes and hashes them faster than integers of this size; the bytes are
# never a NaN or a zero, so equal floats are equal bytes. The exponent of a NaN needs a byte
# 0x7F or 0xFF, and a hex digit above 9, neither of which decimal digits make; a zero needs
# eight zero bytes, and the first byte is 0x10 or more.) The text is this query's own making,
# whatever the file holds: a hostile file chooses the rows, never the format.
_ARC_QUERY = f"""
SELECT file_id, context_id, group_concat(
    CASE WHEN fromno BETWEEN -{MAX_LINE} AND {MAX_LINE} AND tono BETWEEN -{MAX_LINE} AND {MAX_LINE}
    THEN fromno * {1 << _ARC_SHIFT} + tono + {_ARC_BASE}
    ELSE 'x' END, '')
FROM shard.arc GROUP BY file_id, context_id
"""


def _capped(value: str, cap: int) -> str:
    """``value`` (a column), or NULL when it is longer than ``cap``; and then its length.
    SQLite knows a blob's length without reading it, so a huge one is never made here."""
    return f"CASE WHEN length({value}) <= {cap} THEN {value} END, coalesce(length({value}), 0)"


#: A row of line data: ids, numbits (NULL if longer than MAX_NUMBITS), the numbits' length.
_LINE_QUERY = f"SELECT file_id, context_id, {_capped('numbits', MAX_NUMBITS)} FROM shard.line_bits"
#: The same, uncapped, for a file this run wrote itself.
_OWN_LINE_QUERY = "SELECT file_id, context_id, numbits, 0 FROM shard.line_bits"


def unpack_shard_arc(key: float) -> tuple[int, int]:
    """An arc as :func:`read_shard` packs it (one float of :attr:`ShardRead.packed`)."""
    packed = int(struct.pack("d", key).hex()) - _ARC_DIGITS
    return (packed >> _ARC_SHIFT) - _ARC_OFFSET, (packed & ((1 << _ARC_SHIFT) - 1)) - _ARC_OFFSET


def numbits_of(number: int) -> bytes:
    """The numbits blob of line numbers held as one integer (see :attr:`ShardRead.lines`)."""
    return number.to_bytes((number.bit_length() + 7) // 8, "little")


class ShardRead:
    """What one data file holds (file and context names resolved), checked: every value has
    the type coverage.py writes, every id names a file or context of the file, and, in a shard
    from a store, every line number is within :data:`MAX_LINE`."""

    __slots__ = ("arcs", "files", "lines", "packed", "tracers", "wide")

    def __init__(self, arcs: bool | None, files: list[str], tracers: dict[str, str]) -> None:
        #: True: arc data, False: line data, None: no data
        self.arcs = arcs
        self.files = files
        self.tracers = tracers
        #: (path, context, numbits read as one little-endian integer: bit n is line n)
        self.lines: list[tuple[str, str, int]] = []
        #: (path, context, packed arcs: 8 bytes each, see _ARC_QUERY)
        self.packed: list[tuple[str, str, bytes]] = []
        #: (path, context, arcs) with a line number beyond MAX_LINE, read row by row: only in a
        #: file this run wrote itself (``read_shard(bounded=False)``), taken as it is; a shard
        #: from a store is refused for them
        self.wide: list[tuple[str, str, list[tuple[int, int]]]] = []


class ShardHub(sqlite3.Connection):
    """An in-memory SQLite database that data files are attached to and read through (make one
    with :func:`shard_hub`). It remembers the table statements it found stored (see
    ``_check_stored``): every shard that one coverage.py wrote repeats them."""

    stored: set[str]


def shard_hub() -> ShardHub:
    """A :class:`ShardHub`, its longest string or blob :data:`MAX_VALUE_BYTES` where Python can
    say so (3.11 on)."""
    hub = sqlite3.connect(":memory:", isolation_level=None, factory=ShardHub)
    hub.stored = set()
    setlimit = getattr(hub, "setlimit", None)
    if setlimit is not None:
        setlimit(getattr(sqlite3, "SQLITE_LIMIT_LENGTH"), MAX_VALUE_BYTES)  # noqa: B009 - 3.11+
    return hub


class _Refused(Exception):
    """What a file holds is not what a coverage.py data file holds; the message says what."""


class _Budget:
    """What reading one shard may still spend (see :data:`READ_STEPS`)."""

    def __init__(self, size: int) -> None:
        self.steps = (READ_STEPS + READ_STEPS_PER_BYTE * size) // _STEP_EVERY
        self.bytes = READ_BYTES + READ_BYTES_PER_BYTE * size
        self.exhausted = False

    def step(self) -> int:
        """SQLite's progress handler: an answer other than 0 stops the running query."""
        self.steps -= 1
        if self.steps < 0:
            self.exhausted = True
            return 1
        return 0

    def hold(self, rows: int, size: int) -> None:
        self.bytes -= rows * ROW_BYTES + size
        if self.bytes < 0:
            raise _Refused(
                "it yields more than a data file of its size can hold (is it damaged or doctored?)"
            )


def shown(value: object) -> str:
    """A value from a file someone else wrote, fit for one line of a message: quoted unless it
    is printable text (no newline, no terminal escape), and cut short."""
    text = value if isinstance(value, str) and value.isprintable() and value else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _kind(value: object) -> str:
    names = {int: "an integer", float: "a real number", str: "text", bytes: "a blob"}
    return "NULL" if value is None else names.get(type(value), type(value).__name__)


def read_shard(
    hub: ShardHub,
    name: str,
    path: str,
    *,
    immutable: bool = True,
    bounded: bool = True,
    max_bytes: int | None = None,
) -> ShardRead | DataFileError:
    """Read one data file through ``hub`` (a :func:`shard_hub`, in any thread); whatever the
    file holds, this never raises: what is wrong is returned, naming ``name``.

    A bounded read (a shard from a store, written by anyone who could write there) reads a
    private copy of the file (see :func:`_private_copy`; none above ``max_bytes``) and keeps to
    a budget that grows with its size (see :data:`READ_STEPS`); ``bounded=False`` is for a file
    this run wrote itself, read in place. Every value is checked (see :class:`ShardRead`) before
    anything is returned, so that a caller never adds part of a bad file.
    """
    cleanup = contextlib.ExitStack()  # what to undo when it is read, last first
    try:
        budget = None
        try:
            if bounded:
                path, size = _private_copy(path, max_bytes, cleanup)
                budget = _Budget(size)
            hub.execute("ATTACH DATABASE ? AS shard", (read_only_uri(path, immutable=immutable),))
        except _Refused as exc:
            return DataFileError(f"cannot read coverage data file {name}: {exc}")
        except (OSError, sqlite3.Error) as exc:
            why = _why_not_open(path, exc)
            return DataFileError(f"cannot read coverage data file {name}: {why}")
        # Failing to detach is no fault of this file's data (read or refused by then): the next
        # file then says that it cannot be attached.
        cleanup.callback(_quietly, hub, "DETACH DATABASE shard")
        if budget is not None:
            hub.set_progress_handler(budget.step, _STEP_EVERY)
            cleanup.callback(hub.set_progress_handler, None, 0)
        try:
            return _read_tables(hub, name, budget)
        except Exception as exc:  # anything a damaged or hostile file causes is its own error
            return DataFileError(f"cannot read coverage data file {name}: {_why_bad(exc, budget)}")
    finally:
        cleanup.close()


def _quietly(hub: ShardHub, statement: str) -> None:
    with contextlib.suppress(sqlite3.Error):
        hub.execute(statement)


#: How a store's file is opened: never through a symlink, never waiting (a FIFO would block an
#: ordinary open until someone writes to it), never taking a terminal as the controlling one.
_SHARD_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
_UNLIMITED = 1 << 62
_REGULAR = "a store's shards are read as regular files only"


def _private_copy(
    path: str, max_bytes: int | None, cleanup: contextlib.ExitStack
) -> tuple[str, int]:
    """A copy of the store's file at ``path`` in a private temporary file, and its size;
    ``cleanup`` removes it.

    SQLite opens a file by its name, so whatever checked that name before (a listing, a size)
    says nothing of what SQLite opens: someone who can write to the store could meanwhile put a
    FIFO there (SQLite's open would wait for a writer forever) or a symlink to another file.
    The file is opened here once, without following a symlink or waiting, found to be a regular
    file (of at most ``max_bytes``) through that very descriptor, and copied from it: SQLite
    reads the copy, which nobody else can change. (SQLite cannot be given the descriptor: it
    resolves ``/dev/fd/N``, a symlink on Linux, back to the name.) The copy is made in chunks,
    and removed as soon as the file is read, so that it costs one file's size of disk at a time.
    """
    try:
        fd = os.open(path, _SHARD_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):
            raise _Refused(f"it is a symbolic link; {_REGULAR}") from None
        raise
    cleanup.callback(os.close, fd)
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode):
        what = "a directory" if stat.S_ISDIR(found.st_mode) else "not a regular file"
        what = "a FIFO (named pipe)" if stat.S_ISFIFO(found.st_mode) else what
        raise _Refused(f"it is {what}; {_REGULAR}")
    limit = _UNLIMITED if max_bytes is None else max_bytes
    if found.st_size > limit:
        raise _Refused(f"it is {found.st_size:,} bytes, {_TOO_BIG} ({limit:,})")
    try:
        out_fd, copy = tempfile.mkstemp(prefix="distcov-shard-")
        cleanup.callback(_unlink_quietly, copy)
        with open(fd, "rb", closefd=False) as source, open(out_fd, "wb") as out:
            size = copy_at_most(source, out, limit + 1)
    except OSError as exc:  # a full temporary directory
        raise OSError(exc.errno, f"cannot copy it to a temporary file: {exc.strerror}") from None
    if size > limit:
        raise _Refused(f"it grew past {limit:,} bytes, {_TOO_BIG}")
    return copy, size


_TOO_BIG = "more than --max-shard-size allows"


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def copy_at_most(source: IO[bytes], out: IO[bytes], limit: int) -> int:
    """Copy ``source`` to ``out`` until it ends or ``limit`` bytes are copied; how many were."""
    copied = 0
    while copied < limit and (chunk := source.read(min(1 << 20, limit - copied))):
        out.write(chunk)
        copied += len(chunk)
    return copied


def _why_not_open(path: str, exc: Exception) -> str:
    """Why a file (this run's own, or a private copy) could not be attached: SQLite names no
    reason, the file system does."""
    if isinstance(exc, OSError):
        return str(exc.strerror)
    try:
        with open(path, "rb"):
            pass
    except OSError as os_exc:
        return str(os_exc.strerror)
    return str(exc)


def _why_bad(exc: Exception, budget: _Budget | None) -> str:
    if isinstance(exc, _Refused):
        return str(exc)
    if budget is not None and budget.exhausted:
        return (
            "reading it takes more work than a data file of its size needs (is it damaged or"
            " doctored?)"
        )
    what = str(exc) if isinstance(exc, sqlite3.Error) else f"{type(exc).__name__}: {exc}"
    return f"{what} (is it a coverage.py data file?)"


def read_live_file(
    path: str, *, arcs: bool
) -> tuple[dict[str, dict[str, set[Any]]], list[str], dict[str, str]]:
    """A data file's lines (or arcs), by context and file; its files; its file tracers.

    For a worker's own data file, streamed while it runs: one SQLite connection and a few
    queries, where ``CoverageData`` (coverage.py 7.17) opens and closes a connection for every
    query (two a measured file). Not immutable: its own process writes it between reads. Only
    the kind asked for is read, as ``CoverageData.lines``/``arcs`` give nothing of the other.
    """
    hub = shard_hub()
    try:
        read = read_shard(hub, path, path, immutable=False, bounded=False)
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
        for name, context, number in read.lines:
            by_context.setdefault(context, {}).setdefault(name, set()).update(
                numbits_to_nums(numbits_of(number))
            )
    return by_context, read.files, read.tracers


#: Everything but the measured data, in one query: a row per schema version, meta key, file,
#: context and tracer, tagged with its table; each value capped at MAX_NAME (see _capped).
_META_QUERY = f"""
SELECT 0, version, NULL, 0 FROM shard.coverage_schema
UNION ALL SELECT 1, key, {_capped("value", MAX_NAME)} FROM shard.meta
UNION ALL SELECT 2, id, {_capped("path", MAX_NAME)} FROM shard.file
UNION ALL SELECT 3, id, {_capped("context", MAX_NAME)} FROM shard.context
UNION ALL SELECT 4, file_id, {_capped("tracer", MAX_NAME)} FROM shard.tracer
"""


def _batches(cursor: sqlite3.Cursor, budget: _Budget | None, cap: int = 0) -> Iterator[list[Any]]:
    """A query's rows in batches, held against the budget before the caller sees them.

    ``cap`` is the longest value a row may hold; its length is the row's last value (see
    :func:`_capped`), and a batch is no longer than what the budget has left. Without a cap
    (the arcs, whose text is bounded by the steps that aggregate it) the lengths are not
    counted. The caller closes the cursor, whichever way it stops: a cursor left open would keep
    the file attached.
    """
    size = _BATCH
    while True:
        if budget is not None and cap:
            size = max(16, min(_BATCH, budget.bytes // (ROW_BYTES + cap)))
        batch = cursor.fetchmany(size)
        if not batch:
            return
        if budget is not None:
            budget.hold(len(batch), sum(map(_last, batch)) if cap else 0)
        yield batch


_last = operator.itemgetter(-1)


#: The tables read, which must be stored tables with stored columns: a view, a virtual table or
#: a computed column (or a default, filled into rows stored without that column) makes rows and
#: values from nothing, and coverage.py writes none of them. The budget below would stop most of
#: what they can do, but not all: a sort of a view's rows (the arcs are grouped) spills huge
#: values to temporary files, and a computed column can spend seconds of one SQLite step on
#: each row, both out of the progress handler's sight.
_READ_TABLES = ("coverage_schema", "meta", "file", "context", "tracer", "line_bits", "arc")
#: A CREATE TABLE statement's tokens: quoted strings and names, comments, words, other characters.
_SQL_TOKEN = re.compile(
    r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\]|--[^\n]*|/\*.*?(?:\*/|$)|\w+|\S""",
    re.DOTALL,
)
#: The words only a computed column (``AS (...)``, ``GENERATED ALWAYS``), a default or a table
#: made from a query can have; coverage.py's tables have none of them, not even in a comment, so
#: a statement without them anywhere (_MAYBE_COMPUTING) is not even split into tokens.
_COMPUTING = frozenset({"AS", "DEFAULT", "GENERATED"})
_MAYBE_COMPUTING = re.compile(r"\b(?:as|default|generated)\b", re.IGNORECASE)


def _check_stored(hub: ShardHub) -> None:
    """Refuse a file whose tables read are not stored tables with stored columns (the schema's
    own statements tell, read from ``sqlite_master``: one query, where asking SQLite for each
    table's columns would cost more than reading a small shard)."""
    for name, kind, rootpage, sql in hub.execute(
        "SELECT name, type, rootpage, sql FROM shard.sqlite_master WHERE type != 'index'"
    ).fetchall():
        if str(name).lower() not in _READ_TABLES:
            continue
        if kind != "table" or not rootpage:
            what = "a view" if kind == "view" else "a virtual table"
            raise _Refused(f"its {shown(name)} is {what}, not a stored table")
        if sql in hub.stored:
            continue
        if type(sql) is not str or (
            _MAYBE_COMPUTING.search(sql)
            and any(t.upper() in _COMPUTING for t in _SQL_TOKEN.findall(sql) if t[0].isalpha())
        ):
            raise _Refused(
                f"its {shown(name)} has a column that is computed or has a default, not stored"
            )
        hub.stored.add(sql)


def _read_tables(hub: ShardHub, name: str, budget: _Budget | None) -> ShardRead | DataFileError:
    if budget is not None:
        _check_stored(hub)
    try:
        with contextlib.closing(hub.execute(_META_QUERY)) as cursor:
            rows = [row for batch in _batches(cursor, budget, MAX_NAME) for row in batch]
    except sqlite3.Error:
        if budget is not None and budget.exhausted:
            raise
        # a table is missing: a file of another schema is told so, anything else is re-raised
        (version,) = hub.execute("SELECT version FROM shard.coverage_schema").fetchone() or (None,)
        if version in KNOWN_SCHEMAS:
            raise
    else:
        version = next((key for table, key, _, _ in rows if table == 0), None)
    if version not in KNOWN_SCHEMAS:
        return DataFileError(
            f"cannot read coverage data file {name}: it has data schema {shown(version)}, this"
            f" coverage.py reads {max(KNOWN_SCHEMAS)} (was it written by another version?)"
        )
    tables: list[dict[Any, Any]] = [{}, {}, {}, {}, {}]
    for table, key, value, size in rows:
        if size > MAX_NAME:
            raise _Refused(f"its {_TABLES[table]} table holds a name of {size:,} characters")
        tables[table][key] = value
    _, meta, files, contexts, tracers = tables
    _check_names(files, contexts, tracers)
    flag = meta.get("has_arcs", "")
    if type(flag) is not str:
        raise _Refused(f"its meta table's has_arcs is {_kind(flag)}, not text")
    arcs = None if "has_arcs" not in meta else flag not in ("0", "False", "")
    read = ShardRead(arcs, list(files.values()), {files[f]: t for f, t in tracers.items() if t})
    if arcs:
        _read_arcs(hub, read, _Ids(files, contexts), budget)
    elif arcs is not None:
        _read_lines(hub, read, _Ids(files, contexts), budget)
    return read


_TABLES = ("coverage_schema", "meta", "file", "context", "tracer")


def _check_names(files: dict[Any, Any], contexts: dict[Any, Any], tracers: dict[Any, Any]) -> None:
    """Every path a file name, every context and plugin name text, every tracer's file known."""
    for path in files.values():
        if type(path) is not str or not path or "\x00" in path:
            raise _Refused(f"its file table holds {_kind(path)} {shown(path)}, not a file name")
    for context in contexts.values():
        if type(context) is not str:
            raise _Refused(f"its context table holds {_kind(context)}, not a context's name")
    for fid, tracer in tracers.items():
        if fid not in files:
            raise _Refused(f"its tracer table names file id {shown(fid)}, which it does not have")
        if tracer and type(tracer) is not str:
            raise _Refused(f"its tracer table holds {_kind(tracer)}, not a plugin's name")


class _Ids(NamedTuple):
    """A file's ids and the names they stand for, checked (see ``_check_names``)."""

    files: dict[Any, str]
    contexts: dict[Any, str]


def _read_arcs(hub: ShardHub, read: ShardRead, ids: _Ids, budget: _Budget | None) -> None:
    files, contexts = ids
    fromhex = bytes.fromhex
    with contextlib.closing(hub.execute(_ARC_QUERY)) as cursor:
        for batch in _batches(cursor, budget):
            try:
                read.packed += [(files[f], contexts[c], fromhex(t)) for f, c, t in batch]
            except KeyError:
                raise _Refused(_missing_id("arc", batch, ids)) from None
            except (ValueError, TypeError):  # "x" or a real's text: see _ARC_QUERY
                if budget is not None:
                    raise _Refused(
                        f"its arc data holds a line number that is not a whole number from"
                        f" -{MAX_LINE:,} to {MAX_LINE:,}"
                    ) from None
                _read_wide_arcs(hub, read, ids, batch)


def _read_wide_arcs(
    hub: ShardHub, read: ShardRead, ids: _Ids, batch: list[tuple[Any, Any, str]]
) -> None:
    """A batch of arc groups of this run's own file, those beyond MAX_LINE read row by row."""
    files, contexts = ids
    for fid, cid, text in batch:
        try:
            read.packed.append((files[fid], contexts[cid], bytes.fromhex(text)))
        except ValueError:
            rows = hub.execute(
                "SELECT fromno, tono FROM shard.arc WHERE file_id = ? AND context_id = ?",
                (fid, cid),
            ).fetchall()
            read.wide.append((files[fid], contexts[cid], rows))


def _read_lines(hub: ShardHub, read: ShardRead, ids: _Ids, budget: _Budget | None) -> None:
    files, contexts = ids
    from_bytes = int.from_bytes
    with contextlib.closing(hub.execute(_OWN_LINE_QUERY if budget is None else _LINE_QUERY)) as cur:
        for batch in _batches(cur, budget, MAX_NUMBITS):
            if (longest := max(map(_last, batch))) > MAX_NUMBITS:
                raise _Refused(
                    f"its line data holds a blob of {longest:,} bytes: line numbers above"
                    f" {MAX_LINE:,}, which no source file has"
                )
            try:
                read.lines += [
                    (files[f], contexts[c], from_bytes(numbits, "little"))
                    for f, c, numbits, _ in batch
                ]
            except KeyError:
                raise _Refused(_missing_id("line", batch, ids)) from None
            except TypeError:  # int.from_bytes takes a blob, never an integer, text or NULL
                wrong = next(n for _, _, n, _ in batch if type(n) is not bytes)
                raise _Refused(
                    f"its line data holds {_kind(wrong)} where coverage.py writes a blob of line"
                    " numbers"
                ) from None


def _missing_id(what: str, batch: list[tuple[Any, ...]], ids: _Ids) -> str:
    """Why a batch of line or arc rows could not be read: an id its tables do not have."""
    for fid, cid, *_ in batch:
        if fid not in ids.files:
            return f"its {what} data names file id {shown(fid)}, which its file table lacks"
        if cid not in ids.contexts:
            return f"its {what} data names context id {shown(cid)}, which its context table lacks"
    return f"its {what} data names an id its tables lack"  # pragma: no cover - found above

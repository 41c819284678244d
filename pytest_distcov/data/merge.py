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

import errno
import json
import os
import re
import sqlite3
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from coverage import CoverageData
from coverage.exceptions import CoverageException

from pytest_distcov.errors import DataFileError
from pytest_distcov.protocol import ContextData, Payload, empty_payload

from .union import PathMapper, identity, read_live_file

#: A worker's journal of flushed lines: its data file's name plus this (see engine.NewOnly).
JOURNAL_SUFFIX = ".journal"

__all__ = [
    "JOURNAL_SUFFIX",
    "Accumulator",
    "DeltaReader",
    "read_data_file",
    "update_from_file",
    "update_from_journal",
    "write_data_file",
]

#: Line numbers, or (from, to) arcs when branch coverage is on: one run never mixes the two.
Measured = set[Any]

# What sqlite and coverage raise on a damaged or foreign file.
_READ_ERRORS = (CoverageException, sqlite3.Error, OSError, ValueError)


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
        map_path = map_path or identity
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


def update_from_journal(
    target: CoverageData, path: str | os.PathLike[str], map_path: PathMapper | None = None
) -> None:
    """Union a worker's journal of flushed lines or arcs (see ``engine.NewOnly``) into
    ``target``. A last line cut short (the worker was killed while writing it) is skipped: it
    belonged to a test that had not finished."""
    mapped = map_path or identity
    try:
        with open(path, encoding="utf-8") as fh:
            records = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFileError(f"cannot read journal {os.fspath(path)}: {exc}") from None
    for text in records:
        try:
            kind, record = json.loads(text)
        except ValueError:
            continue
        try:
            if kind == "arcs":
                target.add_arcs({mapped(f): [tuple(a) for a in arcs] for f, arcs in record.items()})
            else:
                target.add_lines({mapped(f): lines for f, lines in record.items()})
        except (*_READ_ERRORS, TypeError, AttributeError) as exc:  # not our journal's records
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
    except _READ_ERRORS as exc:
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


def write_data_file(
    target: str | os.PathLike[str],
    fill: Callable[[CoverageData], None],
) -> None:
    """Write a complete data file to ``target`` atomically.

    ``fill`` adds the data to a fresh ``CoverageData`` written beside ``target``; only when it
    has finished, and the new file is on disk (``fsync``: coverage has SQLite skip its own syncs),
    is it renamed over ``target``, and the directory synced so that the rename lasts too. A
    failure never leaves a partial or damaged data file behind (and never touches an existing
    one), nor can a crash of the machine right after the rename leave an empty file in its place.
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
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync_directory(target.parent)
    except BaseException:
        data.close(force=True)
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    """Make a rename in ``path`` durable (POSIX; Windows cannot open a directory to sync it)."""
    if os.name != "posix":
        return
    try:
        _fsync(path)
    except OSError as exc:
        # Some file systems cannot sync a directory (EINVAL); the file itself is on disk.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
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

"""``pytest-distcov combine``'s union of many whole data files (the shards of a store).

:class:`ShardUnion` reads coverage.py data files straight from their SQLite tables (coverage.py
documents the schema; the reading is :func:`~pytest_distcov.data.readers.read_shard`'s), several
processes at once, and writes the union through coverage.py's public ``CoverageData``. This
module (and the readers) imports neither coverage.py nor multiprocessing until it needs them, so
that the readers start before the command has loaded anything else.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pytest_distcov.errors import DataFileError

from .readers import (
    PathMapper,
    ShardRead,
    UntrustedPath,
    identity,
    numbits_decoder,
    numbits_of,
    read_shard,
    shard_hub,
    unpack_shard_arc,
)

if TYPE_CHECKING:
    from coverage import CoverageData

__all__ = ["ShardUnion"]


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _Part:
    """The union of some shards of one kind (line data, arc data, or no data)."""

    def __init__(self) -> None:
        self.files: set[str] = set()
        self.tracers: dict[str, str] = {}
        # (context, path) -> numbits as one integer / packed arcs
        self.lines: dict[tuple[str, str], int] = {}
        self.arcs: dict[tuple[str, str], set[float]] = {}
        # (context, path) -> the last packed arcs added: shards often repeat a file's arcs
        # exactly (code only run at import), and comparing bytes is far cheaper than a set update
        self._last: dict[tuple[str, str], bytes] = {}

    def add(self, read: ShardRead) -> None:
        """Add a shard's data; ``read`` is checked (see ShardRead), so nothing here fails
        half-way and leaves part of a bad shard behind."""
        last = self._last
        for path, context, blob in read.packed:
            key = (context, path)
            if last.get(key) != blob:
                last[key] = blob
                self.arcs.setdefault(key, set()).update(memoryview(blob).cast("d"))
        lines = self.lines
        for path, context, number in read.lines:
            key = (context, path)
            lines[key] = lines.get(key, 0) | number
        self.files.update(read.files)
        self.tracers.update(read.tracers)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_last"] = {}  # only a shortcut; not worth sending between processes
        return state


#: What reading a shard gave: its kind (True: arc data, False: line data, None: no data) or why
#: it could not be read.
_Outcome = bool | DataFileError | None

#: Why a shard's paths are refused ('' when they are not): see ShardUnion.untrusted.
PathCheck = Callable[[Iterable[str]], str]


class _Reader:
    """Reads shards into parts of the union, one part for each kind of data."""

    def __init__(self, max_bytes: int | None) -> None:
        self.hub = shard_hub()
        self.max_bytes = max_bytes
        self.parts: dict[bool | None, _Part] = {}

    def read(self, name: str, path: str, check: PathCheck | None = None) -> _Outcome:
        """Add one shard to the parts, or nothing if it is unusable (and say why)."""
        read = read_shard(self.hub, name, path, max_bytes=self.max_bytes)
        if isinstance(read, DataFileError):
            return read
        problem = check(read.files) if check is not None else ""
        if problem:
            return DataFileError(f"cannot combine coverage data file {name}: {problem}")
        part = self.parts.get(read.arcs)
        if part is None:
            part = self.parts[read.arcs] = _Part()
        part.add(read)
        return read.arcs


def _read_chunk(
    items: list[tuple[str, str]], max_bytes: int | None
) -> tuple[list[_Outcome], dict[bool | None, _Part]]:
    """A child process's work: read some shards and send back their outcomes and union (their
    paths are checked by the parent, see ShardUnion.add_files)."""
    reader = _Reader(max_bytes)
    try:
        return [reader.read(name, path) for name, path in items], reader.parts
    finally:
        reader.hub.close()


class ShardUnion:
    """The union of many whole data files, read straight from their SQLite tables.

    This is ``coverage combine`` without its per-file and per-row Python overhead. Each file is
    copied (through one descriptor: a file swapped for a FIFO or a symlink meanwhile is refused)
    and the copy attached read-only to an in-memory SQLite database. Lines are kept as
    integers whose set bits are the line numbers (a numbits blob read as one little-endian
    integer, so a union is one ``|``); arcs as sets of integers packed by SQLite itself (see
    ``readers._ARC_QUERY``). Contexts, file tracers and measured-but-empty files are kept.

    The files may come from anyone who could write to a store, so each is checked whole before
    any of it is added (see :func:`~.readers.read_shard`: its values, its line numbers, a reading
    budget), and so are its paths: each goes through :attr:`map_path` (a shard's relative paths
    become the combiner's own), and a file with a path that ``map_path`` refuses
    (:class:`~.readers.UntrustedPath`) adds nothing. One bad file is that file's error; the
    others are still added.

    Many files are read by several processes at once (forked, one a CPU, at most eight), each
    reading a run of the files into its own part of the union; the parts are joined when the
    union is written. Line data and arc data cannot be combined: the first file with data, in
    the order given, decides, and a file of the other kind is refused.
    """

    #: Fewer files than this are read in this process (starting processes would cost more).
    PARALLEL_FROM = 64

    def __init__(
        self,
        map_path: PathMapper | None = None,
        *,
        processes: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        #: Turns a file's path into the combiner's, or raises UntrustedPath. It is first used
        #: after :meth:`add_files`' ``meanwhile`` has run, which may set it (the command line
        #: reads the coverage configuration's ``[paths]`` there, while reader processes read).
        self.map_path = map_path or identity
        self.processes = max(1, min(8, processes or _usable_cpus()))
        self.has_arcs: bool | None = None
        self.first: str = ""
        #: How many processes read the files of the last :meth:`add_files` (1: this one alone).
        self.readers = 1
        #: The largest file read (``--max-shard-size``), checked on the file as it is read.
        self.max_bytes = max_bytes
        self._reader = _Reader(max_bytes)
        self._parts: list[dict[bool | None, _Part]] = [self._reader.parts]
        # a file's path -> map_path's answer: the combiner's path, or why it is refused
        self._mapped: dict[str, str | UntrustedPath] = {}

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
        runs = self._read_in_processes(todo, meanwhile_once) if self._parallel(len(todo)) else None
        meanwhile_once()  # no processes, or they could not start
        outcomes: list[_Outcome] = []
        if runs is None:
            outcomes = [self._reader.read(name, path, self.untrusted) for name, path in todo]
        else:
            self.readers = len(runs)
            for run, run_outcomes, parts in runs:
                if any(self.untrusted(part.files) for part in parts.values()):
                    # A file of this run has a path map_path refuses, and the run's union holds
                    # it: that union is dropped, and the run read again here, file by file.
                    outcomes += [self._reader.read(n, p, self.untrusted) for n, p in run]
                else:
                    self._parts.append(parts)
                    outcomes += run_outcomes
        pairs = zip(todo, outcomes, strict=True)
        return [(name, self._check_kind(outcome, name)) for (name, _), outcome in pairs]

    def untrusted(self, paths: Iterable[str]) -> str:
        """Why :attr:`map_path` refuses the first of ``paths`` that it refuses, or ''."""
        mapped = self._mapped
        for path in paths:
            got = mapped.get(path)
            if got is None:
                try:
                    got = self.map_path(path)
                except UntrustedPath as exc:
                    got = exc
                mapped[path] = got
            if isinstance(got, UntrustedPath):
                return str(got)
        return ""

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
    ) -> list[tuple[list[tuple[str, str]], list[_Outcome], dict[bool | None, _Part]]] | None:
        """Each run of files, with their outcomes and union, read by a child process (None if
        one died: the caller reads them all here instead)."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        count = min(self.processes, len(todo))
        runs = [todo[i * len(todo) // count : (i + 1) * len(todo) // count] for i in range(count)]
        context = multiprocessing.get_context("fork")
        try:
            with ProcessPoolExecutor(max_workers=count, mp_context=context) as pool:
                futures = [pool.submit(_read_chunk, run, self.max_bytes) for run in runs]
                meanwhile()
                results = [future.result() for future in futures]
        except (BrokenProcessPool, OSError):
            return None  # a child died (out of memory?): read them here instead
        return [(run, *result) for run, result in zip(runs, results, strict=True)]

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

    def _local(self, path: str) -> str:
        """The combiner's path of a file of a kept part (checked when its file was added)."""
        self.untrusted([path])
        got = self._mapped[path]
        if isinstance(got, UntrustedPath):  # pragma: no cover - kept parts hold checked paths
            raise got
        return got

    def _kept_parts(self) -> list[_Part]:
        kinds = {None, self.has_arcs}
        return [part for parts in self._parts for k, part in parts.items() if k in kinds]

    def write_into(self, data: CoverageData) -> None:
        numbits_to_nums = numbits_decoder()
        parts = self._kept_parts()
        mapped = {p: self._local(p) for part in parts for p in part.files}
        by_context: dict[str, dict[str, Any]] = {}
        if self.has_arcs:
            data.add_arcs({})
            sets: dict[tuple[str, str], set[tuple[int, int]]] = {}
            for part in parts:
                for (context, path), keys in part.arcs.items():
                    sets.setdefault((context, mapped[path]), set()).update(
                        map(unpack_shard_arc, keys)
                    )
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
                by_context.setdefault(context, {})[path] = numbits_to_nums(numbits_of(number))
        # every context in one transaction (one write per context took most of a second for
        # every thousand contexts); merge loads coverage.py, which the reader processes avoid
        from .merge import add_contexts

        add_contexts(data, dict(sorted(by_context.items())), arcs=bool(self.has_arcs))
        tracers = {mapped[p]: t for part in parts for p, t in part.tracers.items()}
        if tracers:
            data.add_file_tracers(tracers)
        measured = {p for files in by_context.values() for p in files}
        by_plugin: dict[str, list[str]] = {}
        for path in sorted(set(mapped.values()) - measured):
            by_plugin.setdefault(tracers.get(path, ""), []).append(path)
        for plugin, paths in sorted(by_plugin.items()):
            data.touch_files(paths, plugin or None)

"""The controller's in-memory union of coverage data, and writing the final data file.

Everything here speaks coverage.py's public data API (``CoverageData``) and never pytest.

* :class:`Accumulator` is the controller's in-memory union: sets of lines (or arcs) per context
  and file. Its size grows with the number of covered lines, never with the number of tests,
  chunks or workers, because a union stores each line once.
* :func:`write_data_file` saves a data file atomically;
* :func:`add_contexts` adds the data of many contexts to a data file in one transaction;
* :func:`without_contexts` copies a data file's data, every context together, for the reports
  that show no contexts.

What reads data files and journals (the worker's deltas, recovery) is in :mod:`.readers`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from coverage import Coverage, CoverageData
from coverage.exceptions import CoverageException

from pytest_distcov.covapi.data import close_all
from pytest_distcov.covapi.schema import fill_batch, fill_file, lines_union
from pytest_distcov.errors import DataFileError, UntrustedPath
from pytest_distcov.protocol import Payload

from .readers import Measured, PathMapper, identity, shown

__all__ = [
    "Accumulator",
    "BackgroundWrite",
    "add_contexts",
    "copy_without_contexts",
    "without_contexts",
    "write_data_file",
]


def add_contexts(
    data: CoverageData,
    by_context: Mapping[str | None, Mapping[str, Collection[Any]]],
    *,
    arcs: bool,
    tracers: Mapping[str, str] | None = None,
) -> None:
    """Add lines (or arcs) of many contexts (label -> file -> items) to ``data``.

    ``tracers`` names the file tracer of files ``data`` holds measured by a coverage plugin:
    the batch says so too, or ``CoverageData.update`` would refuse it as another tracer's.

    ``CoverageData.add_lines`` writes one context at a time, and opens, writes and closes its
    SQLite file for each: with thousands of per-test contexts that is most of a second for every
    thousand. They go into an in-memory ``CoverageData`` first (no file), and reach ``data``
    with one ``CoverageData.update``, one transaction. That in-memory batch is filled with three
    ``executemany`` into the tables coverage.py made (``covapi.schema.fill_batch``, the door
    that writes coverage.py's schema), not context by context with
    ``add_lines`` (a few SQL statements and a lookup of the context for each context and file:
    with per-test contexts, most of the controller's time at the end); where the tables are
    not the ones it knows (the start check's ``context batch`` fallback), with ``add_lines``.
    Where ``data`` is a file with no lines, arcs or contexts yet (the xdist controller's data
    file: the workers measured everything), the rows go straight into it instead
    (:func:`~pytest_distcov.covapi.schema.fill_file`).
    """
    if not by_context:
        return
    if fill_file(data, by_context, arcs=arcs):
        return
    batch = CoverageData(no_disk=True)
    try:
        (batch.add_arcs if arcs else batch.add_lines)({})  # its tables, and what it records
        if not fill_batch(batch, by_context, arcs=arcs, tracers=tracers):
            batch.close(force=True)  # (it may hold part of it: the fallback starts afresh)
            batch = CoverageData(no_disk=True)
            for context, files in by_context.items():
                batch.set_context(context or None)
                if arcs:
                    batch.add_arcs(files)
                else:
                    batch.add_lines(files)
            named = batch.measured_files()
            plugged = {f: t for f, t in (tracers or {}).items() if t and f in named}
            if plugged:
                batch.add_file_tracers(plugged)
        data.update(batch)
    finally:
        batch.close(force=True)


def without_contexts(
    full: CoverageData, into: CoverageData, *, known: Mapping[str, Collection[Any]] | None = None
) -> None:
    """Fill the empty ``into`` with what ``full`` measured, every context together: each
    file's lines (or arcs), its file tracer, and the files measured with nothing recorded.
    ``known``: each file's lines (or arcs), every context's together, known already (those
    ``full`` holds exactly: see :meth:`Finisher.finish`); else they are read from ``full``.

    A report that shows no contexts (the terminal's, XML, JSON without contexts, LCOV, the
    total, the upload) reads exactly this from ``full`` too: ``CoverageData.lines`` and
    ``arcs`` give the union of the contexts. But with thousands of per-test contexts,
    ``lines`` unpacks every context's numbits in Python, for every file and every report;
    this reads them once, OR-ed (:func:`~pytest_distcov.covapi.schema.lines_union`).
    """
    files = sorted(full.measured_files())
    if known is not None and {f for f, found in known.items() if found} - set(files):
        known = None  # (a name ``full`` holds otherwise: what it holds is read from it)
    if full.has_arcs():
        if known is None:  # (coverage.py reads them with a query a file, every context's)
            arcs: Mapping[str, Collection[Any]] = {f: full.arcs(f) or [] for f in files}
        else:
            arcs = {f: known.get(f, ()) for f in files}
        into.add_arcs({f: a for f, a in arcs.items() if a})
        empty = [f for f, a in arcs.items() if not a]
    else:
        lines = lines_union(full) if known is None else {f: known.get(f, ()) for f in files}
        if lines is None:
            lines = {f: full.lines(f) or [] for f in files}
        into.add_lines({f: n for f, n in lines.items() if n})
        empty = [f for f in files if not lines.get(f)]
    tracers = {f: t for f in files if (t := full.file_tracer(f))}
    by_tracer: dict[str, list[str]] = {}
    for f in empty:
        by_tracer.setdefault(tracers.get(f, ""), []).append(f)
    for plugin, names in sorted(by_tracer.items()):
        into.touch_files(names, plugin or None)
    unrecorded = set(empty)
    if tracers:
        into.add_file_tracers({f: t for f, t in tracers.items() if f not in unrecorded})


def copy_without_contexts(
    full: Coverage,
    fresh: Callable[[], Coverage],
    *,
    known: Mapping[str, Collection[Any]] | None = None,
) -> Coverage:
    """A ``Coverage`` (``fresh()``: in memory, with ``full``'s configuration) reading
    ``full``'s data with every context together (:func:`without_contexts`, ``known`` given
    to it), for the reports that show no contexts; ``full`` itself where its data has no
    contexts, where ``[report] contexts`` selects some (every report and the upload select
    them then), or where the copy fails."""
    if full.get_option("report:contexts"):
        return full
    data = full.get_data()
    if not set(data.measured_contexts()) - {""}:
        return full
    merged = fresh()
    try:
        without_contexts(data, merged.get_data(), known=known)
    except BaseException as exc:
        close_all(merged)
        if isinstance(exc, (CoverageException, sqlite3.Error, OSError)):
            return full
        raise
    return merged


class Accumulator:
    """The union of coverage data from many sources, kept in memory."""

    def __init__(self, *, branch: bool, plugins: Iterable[str] = ()) -> None:
        self.branch = branch
        #: the modules of ``[run] plugins``: a file tracer's name starts with one of them
        self.plugins = tuple(plugins)
        # context label -> file -> line numbers (or arcs when branch is on)
        #: context -> file -> its lines or arcs: a set, or a frozenset shared as it came
        self._data: dict[str, dict[str, Measured | frozenset[Any]]] = {}
        self._tracers: dict[str, str] = {}
        self._touched: dict[str, set[str]] = {}
        #: how many payloads were added (:class:`BackgroundWrite` checks it did not change)
        self.changes = 0

    def __bool__(self) -> bool:
        return bool(self._data or self._touched)

    # -- adding -----------------------------------------------------------------------------

    def _bucket(self, context: str, path: str) -> Measured:
        """The set of ``path``'s items under ``context``, to add to: a frozenset kept as it
        came (see :meth:`add_payload`) is made a set of its own first."""
        files = self._data.setdefault(context, {})
        bucket = files.get(path)
        if bucket is None:
            bucket = files[path] = set()
        elif type(bucket) is frozenset:
            bucket = files[path] = set(bucket)
        return bucket  # type: ignore[return-value]  # (a set now)

    def add_payload(self, payload: Payload, map_path: PathMapper | None = None) -> dict[str, str]:
        """Merge a worker's payload, each path through ``map_path``.

        A file whose path ``map_path`` refuses (:class:`UntrustedPath`) adds nothing; the
        refused paths are returned, each with why. A payload of the other kind (lines in a
        run measuring branches, or arcs in one measuring lines) is a :class:`DataFileError`,
        and then nothing of it is merged.
        """
        self.changes += 1
        map_path = map_path or identity
        for ctx in payload["contexts"].values():
            if (ctx["arcs"] and not self.branch) or (ctx["lines"] and self.branch):
                kind = "branch (arc)" if ctx["arcs"] else "line"
                measured = "branches" if self.branch else "lines only"
                raise DataFileError(
                    f"{kind} data into a run measuring {measured} (every worker must use the"
                    " same branch setting)"
                )
        refused: dict[str, str] = {}
        mapped: dict[str, str] = {}

        def local(path: str) -> str | None:
            got = mapped.get(path)
            if got is None and path not in refused:
                try:
                    got = mapped[path] = map_path(path)
                except UntrustedPath as exc:
                    refused[path] = str(exc)
            return got

        def claim(path: str, plugin: str, how: str) -> None:
            """A worker (a host) says ``plugin`` measured (found) ``path``: one that is no plugin
            of this run's would make coverage.py's report raise (KeyError), one unlike an
            earlier answer the data file's write fail. Then the file is left out."""
            name = local(path)
            if name is None:
                return
            if not any(plugin.startswith(f"{m}.") for m in self.plugins):
                why = "no plugin of this run's [run] plugins"
            elif self._tracers.setdefault(name, plugin) != plugin:
                why = f"where {shown(self._tracers[name])} measured it"
            else:
                return
            refused[path] = f"it names {shown(path)} as {how} by {shown(plugin)}, {why}"
            mapped.pop(path, None)  # its data is left out with it

        for path, plugin in payload["tracers"].items():
            claim(path, plugin, "measured")
        for plugin, paths in payload["touched"].items():
            if plugin:  # a file a plugin found is that plugin's: one plugin a file
                for path in paths:
                    claim(path, plugin, "found")
        data = self._data
        for context, ctx in payload["contexts"].items():
            lines, arcs = ctx["lines"], ctx["arcs"]
            for path, items in (arcs or lines).items():
                name = local(path)
                if name is None:
                    continue
                if type(items) is frozenset and name not in data.get(context, ()):
                    # Kept as it is: decoded from the wire, the same frozenset may stand for
                    # many phases (protocol's decoding keeps them), and nothing changes it;
                    # where the same context and file come again, a set of its own is made.
                    data.setdefault(context, {})[name] = items
                    continue
                bucket = self._bucket(context, name)
                if not self.branch:
                    bucket.update(items)
                    continue
                try:  # (arcs decoded from the wire are tuples: added in one step; items
                    # are lists, read again whole below where this stops half-way)
                    bucket.update(items)
                except TypeError:  # arcs given as lists (unhashable): made tuples
                    bucket.update(tuple(i) if isinstance(i, list) else i for i in items)
        for plugin, paths in payload["touched"].items():
            names = (local(p) for p in paths)
            self._touched.setdefault(plugin, set()).update(n for n in names if n is not None)
        return refused

    # -- reading out ------------------------------------------------------------------------

    def covered_lines(self) -> dict[str, set[int]]:
        """Executed line numbers per file, all contexts together."""
        if not self.branch:
            return self.union()
        return {
            path: {n for arc in arcs for n in arc if n > 0} for path, arcs in self.union().items()
        }

    def union(self) -> dict[str, set[Any]]:
        """Each file's lines (or arcs), every context's together (each set shared by many
        contexts joined once)."""
        by_file: dict[str, dict[int, Collection[Any]]] = {}
        for files in self._data.values():
            for path, items in files.items():
                by_file.setdefault(path, {})[id(items)] = items
        return {path: set().union(*found.values()) for path, found in by_file.items()}

    @property
    def labelled(self) -> bool:
        """True if some of it was measured under a context label (per-test contexts)."""
        return any(self._data.keys() - {""})

    def _clashing(self, before: Mapping[str, str]) -> set[str]:
        """The files measured here that ``before`` (file -> its file tracer, '' for Python)
        holds measured by another file tracer."""
        ours = self._tracers
        return {
            f
            for files in self._data.values()
            for f in files
            if f in before and before[f] != ours.get(f, "")
        }

    def clashes(self, data: CoverageData) -> bool:
        """True if a file ``data`` holds is one of these too, measured (or found) by another
        file tracer: then :meth:`write_into` must come after ``data``'s own, whose stands."""
        theirs = {f: data.file_tracer(f) or "" for f in data.measured_files()}
        if not theirs:
            return False
        found = any(
            f in theirs and theirs[f] != self._tracers.get(f, plugin)
            for plugin, paths in self._touched.items()
            for f in paths
        )
        return found or bool(self._clashing(theirs))

    def write_into(self, data: CoverageData) -> list[str]:
        """Add everything accumulated to ``data`` (which may hold data already, the trusted
        part: the controller's own). A file ``data`` holds measured by another file tracer
        (or by Python where the workers' says a plugin, or the other way) keeps ``data``'s
        alone: its name is returned, and the workers' data for it is left out."""
        before = {f: data.file_tracer(f) or "" for f in data.measured_files()}
        ours = self._tracers
        clash = self._clashing(before)
        if self.branch:
            data.add_arcs({})
        else:
            data.add_lines({})
        kept: dict[str | None, dict[str, Measured | frozenset[Any]]] = {
            context: {f: items for f, items in files.items() if f not in clash}
            for context, files in sorted(self._data.items())
        }
        add_contexts(data, kept, arcs=self.branch, tracers=before)
        data.set_context(None)
        measured = {f for files in kept.values() for f in files}
        tracers = {f: t for f, t in ours.items() if f in measured and f not in before}
        if tracers:
            data.add_file_tracers(tracers)
        for plugin, paths in sorted(self._touched.items()):
            touched = [
                p
                for p in sorted(paths)
                if p not in before and p not in clash and ours.get(p, plugin) == plugin
            ]
            if touched:
                data.touch_files(touched, plugin or None)
        return sorted(clash)


def _temporary(target: Path, part: str = "") -> Path:
    """The file a data file for ``target`` is written to before it is renamed over it (a
    ``part`` of its, written apart: see :class:`BackgroundWrite`)."""
    # Not ".coverage.*": coverage's own combine would pick that name up.
    return target.with_name(f"{target.name}-distcov-{os.getpid()}{part}.tmp")


class BackgroundWrite:
    """The first part of a data file, the workers' streamed data, written in a thread while
    the run ends (xdist stopping its workers, when the controller only waits for them), into
    the temporary file :func:`write_data_file` then goes on with.

    ``accumulator`` must not change meanwhile: :meth:`result` checks it did not (its count
    of payloads), and gives the file only if the write succeeded and it did not. The thread
    works on its own file alone (no lock, pipe or process of another's). Nothing waits for it
    but :meth:`result`: :meth:`abandon` leaves the file to the thread to remove when it ends,
    and the thread is a daemon, so no exit waits for it either (an exit in the middle of the
    write leaves the temporary file, as a kill in the middle of any write does).
    """

    def __init__(self, target: str | os.PathLike[str], accumulator: Accumulator) -> None:
        # (its own name: a whole write of the data file, begun while an abandoned thread
        # still writes, shares nothing with it)
        self.tmp = _temporary(Path(target), "-begun")
        self._accumulator = accumulator
        self._changes = accumulator.changes
        self._lock = threading.Lock()
        #: each file's items, every context's together, once written, where the data has
        #: context labels (:meth:`Accumulator.union`: what the reports' copy needs); else None
        self.union: dict[str, set[Any]] | None = None
        #: "new", "writing", "written" (the thread is done, the file whole), "taken" (the
        #: file is the caller's), "abandoned" (the thread removes it when done), "gone"
        self._state = "new"
        self._thread = threading.Thread(target=self._write, name="distcov-write", daemon=True)

    def start(self) -> None:
        with self._lock:
            if self._state != "new":
                return
            self._state = "writing"
        self._thread.start()

    def _write(self) -> None:
        data: CoverageData | None = None
        written = False
        try:
            self.tmp.parent.mkdir(parents=True, exist_ok=True)
            self.tmp.unlink(missing_ok=True)
            data = CoverageData(basename=str(self.tmp))
            self._accumulator.write_into(data)  # (into an empty file: no clash can come)
            data.close(force=True)
            _fsync(self.tmp)  # (most of the file: the sync at the end has less to do)
            if self._accumulator.labelled:  # (the reports' copy: see Finisher.finish)
                self.union = self._accumulator.union()
            written = True
        except BaseException:  # the end of the run writes it all (or rescues it) again
            with contextlib.suppress(Exception):
                if data is not None:
                    data.close(force=True)
        finally:
            with self._lock:
                keep = written and self._state == "writing"
                self._state = "written" if keep else "gone"
            if not keep:
                self._remove()

    def result(self) -> Path | None:
        """The temporary file holding the accumulator's data, the caller's from now on, once
        the thread is done (it waits for it); None where it failed, the accumulator changed
        since, or the file was taken or abandoned before (the file is not there then)."""
        if self._thread.ident is not None:  # (started)
            self._thread.join()
        with self._lock:
            if self._state != "written":
                return None
            fresh = self._accumulator.changes == self._changes
            self._state = "taken" if fresh else "gone"
        if not fresh:
            self._remove()
            return None
        return self.tmp

    def discard(self) -> None:
        """Wait for the thread, then remove its file (unless it was taken): nothing of it is
        used, and nothing of it is left."""
        if self.result() is not None:
            self._remove()
        else:
            self.abandon()

    def abandon(self) -> None:
        """Nothing of it is used (and nothing waits for the thread): its file is removed now,
        or by the thread when it ends. A file already taken is the caller's."""
        with self._lock:
            state = self._state
            if state == "writing":
                self._state = "abandoned"
                return
            if state in ("taken", "abandoned", "gone"):
                return
            self._state = "gone"
        self._remove()

    def _remove(self) -> None:
        with contextlib.suppress(OSError):  # (the end of the run goes on: nothing is lost)
            self.tmp.unlink(missing_ok=True)


def write_data_file(
    target: str | os.PathLike[str],
    fill: Callable[[CoverageData], None],
    *,
    begun: Path | None = None,
) -> None:
    """Write a complete data file to ``target`` atomically.

    ``fill`` adds the data to a fresh ``CoverageData`` written beside ``target`` (or to
    ``begun``, a file beside it that holds part of the data already:
    :meth:`BackgroundWrite.result`);
    only when it has finished, and the new file is on disk (``fsync``: coverage has SQLite skip
    its own syncs), is it renamed over ``target``, and the directory synced so that the rename
    lasts too. A failure never leaves a partial or damaged data file behind (and never touches
    an existing one), nor can a crash of the machine right after the rename leave an empty
    file in its place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if begun is None:
        tmp = _temporary(target)
        tmp.unlink(missing_ok=True)
    elif not begun.is_file():
        # (gone, the rest alone would be written: the caller writes it all, or rescues it)
        raise FileNotFoundError(errno.ENOENT, "the data file's first part is gone", str(begun))
    else:
        tmp = begun
    data = CoverageData(basename=str(tmp))
    try:
        if begun is not None:
            data.read()  # (else its first write would erase it: coverage.py starts afresh)
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

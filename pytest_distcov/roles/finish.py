"""Finishing a run's data: the combined data file, its rescue, and what is removed after.

The data file is written atomically (:func:`~pytest_distcov.data.merge.write_data_file`) from,
all as a union: the workers' streamed data (the receiver's accumulator), the controller's own
engine, the recovered files of dead workers, data files of measured subprocesses, and with
``--distcov-append`` the existing data file. Then the run's directories go, here and on the
hosts, except one holding a file the user is pointed to.

When the write fails (a full disk, say), nothing is removed: the same data is saved to a
rescue file elsewhere (:func:`rescue_dirs`), the hosts keep the workers' directories, and one
error says where everything is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import coverage
from coverage.exceptions import CoverageException

from pytest_distcov.covapi.data import renamed_by_update
from pytest_distcov.data.merge import BackgroundWrite, copy_without_contexts, write_data_file
from pytest_distcov.data.readers import checked_mapper, update_from_file
from pytest_distcov.engine.measure import Engine, MeasureSpec, open_coverage
from pytest_distcov.errors import DataFileError, DistCovError, printable
from pytest_distcov.sinks.pipeline import Combined

from .receive import Receiver, WorkerState
from .recovery import Recovered

__all__ = ["Finished", "Finisher", "rescue_dirs"]

Fill = Callable[[coverage.CoverageData], None]


@dataclass(frozen=True)
class Finished:
    """What finishing made: the data file for the sinks (if written), and what is said."""

    #: the data file written, and its ``Coverage`` for the reports; None: it could not be
    #: written (see :meth:`Finisher.rescue`)
    combined: Combined | None
    #: errors to show: unreadable recovered files (kept for inspection), the failed write
    errors: list[str] = field(default_factory=list)


class _AppendUnreadable(Exception):
    """The file named by --distcov-append cannot be read at the end of the run."""


def _reason(exc: BaseException) -> str:
    """An exception as a reason in a sentence: its text, with its kind when that says more."""
    if isinstance(exc, (OSError, DistCovError, CoverageException, sqlite3.Error)):
        return str(exc).rstrip(".")
    return f"{type(exc).__name__}: {exc}"


def rescue_dirs(data_file: Path) -> list[Path]:
    """Where to save the combined data when ``data_file`` cannot be written, in order."""
    out: list[Path] = []
    places: list[Callable[[], Path]] = [
        lambda: data_file.parent,
        lambda: Path(tempfile.gettempdir()),
        Path.home,
        Path.cwd,
    ]
    for where in places:
        try:
            path = where().resolve()
        except (OSError, RuntimeError, KeyError):  # no home directory, a cwd that is gone
            continue
        if path not in out:
            out.append(path)
    return out


class Finisher:
    """Writes the combined data file of one run from ``receiver``'s workers and ``engine``."""

    def __init__(
        self,
        engine: Engine,
        spec: MeasureSpec,
        receiver: Receiver,
        data_file: Path,
        *,
        append: bool,
    ) -> None:
        self.engine = engine
        self.spec = spec
        self.receiver = receiver
        self.data_file = data_file
        self.append = append
        #: the workers' data being written while the run ends (see :meth:`begin`)
        self._early: BackgroundWrite | None = None
        #: what it wrote, each file's items of every context together
        self._union: dict[str, set[Any]] | None = None
        #: each file's lines (or arcs) of every context together, in the data file written,
        #: where known without reading it (see :meth:`finish`)
        self._known: dict[str, Collection[Any]] | None = None

    def begin(self) -> None:
        """Every worker has finished and sent all it measured: write it now, in a thread,
        while xdist stops the workers (the controller waits for them then), as the first
        part of the data file. :meth:`finish` goes on from there; where the thread failed,
        the receiver's data changed since, the controller's own data clashes with it, or
        going on from it fails, the data file is written whole, as without it."""
        if self._early is None and self.receiver.acc:
            self._early = BackgroundWrite(self.data_file, self.receiver.acc)
            self._early.start()

    def abandon(self) -> None:
        """The run ends without :meth:`finish`: nothing waits for :meth:`begin`'s thread, and
        no file of its is left (the thread removes it when done)."""
        if self._early is not None:
            self._early.abandon()

    def _begun(self, own: coverage.CoverageData) -> tuple[Path | None, dict[str, list[Any]] | None]:
        """The file of :meth:`begin`'s thread, holding the workers' data, to go on with (the
        caller's from now on), and the controller's own data's items (:meth:`_own_items`);
        (None, None) where there is none, or the controller's own data clashes with the
        workers' (theirs must then come after it: see fill_run)."""
        early = self._early
        if early is None:
            return None, None
        taken: Path | None = None
        try:
            try:
                clash = self.receiver.acc.clashes(own)
            except Exception:  # (coverage.py reading its own data: written whole instead)
                clash = True
            if clash:  # (its file is removed once the thread is done: none is left at exit)
                early.discard()
                return None, None
            taken = early.result()
            self._union = early.union if taken is not None else None
            return taken, self._own_items(own) if self._union is not None else None
        except BaseException:  # (an interrupt while it waits for the thread)
            early.abandon()
            if taken is not None:
                with contextlib.suppress(OSError):
                    taken.unlink(missing_ok=True)
            raise
        finally:
            self._early = None

    def finish(self, recovered: list[Recovered]) -> Finished:
        """Write the data file; then remove the run's directories (or, failing, rescue)."""
        own = self.engine.finish()
        subprocess_files = self.engine.subprocess_files()
        unreadable: list[str] = []
        errors: list[str] = []
        self._known = None
        try:
            begun, own_items = self._begun(own)
        except BaseException:
            own.close(force=True)  # (see below)
            raise
        appended: list[bool] = []

        def fill_run(data: coverage.CoverageData, *, workers: bool = True) -> None:
            """This run's data: the controller's own, the workers' (unless ``data`` holds
            them already: then none of them clashes with the controller's), recovered files."""
            data.update(own)  # before the workers': where their data clashes with it, it stands
            clashed = self.receiver.acc.write_into(data) if workers else []
            if clashed:
                error = printable(
                    f"the workers' data of {len(clashed)} file(s) is left out: each was measured"
                    f" here by another file tracer (the first: {clashed[0]})"
                )
                if error not in errors:
                    errors.append(error)
            sources = [*recovered, *(("", p, None) for p in subprocess_files)]
            for worker_id, path, mapper in sources:
                try:
                    update_from_file(data, path, checked_mapper(mapper))
                except DataFileError as exc:
                    who = f"worker {worker_id}: " if worker_id else ""
                    unreadable.append(path)
                    error = printable(f"{who}{exc}; the file is kept for inspection")
                    if error not in errors:  # fill may run again (see rescue)
                        errors.append(error)

        def fill_for(workers: bool) -> Fill:
            def fill(data: coverage.CoverageData) -> None:
                fill_run(data, workers=workers)
                if self.append and self.data_file.exists():
                    appended.append(True)
                    try:
                        update_from_file(data, self.data_file)
                    except DataFileError as exc:
                        raise _AppendUnreadable(str(exc)) from None

            return fill

        try:
            went_on = self._write(fill_for, begun=begun)
        except Exception as exc:  # whatever it was (a full disk, SQLite, coverage): see rescue
            self._close_remote(keep_workers=True)
            errors.append(self.rescue(exc, fill_run))
            return Finished(None, errors=errors)
        finally:
            # An in-memory copy (a refused write's) keeps its connection on a plain close, and
            # on 3.13+ its ResourceWarning, once collected, would fail the user's run.
            own.close(force=True)
        self._close_remote(keep_workers=False)
        self._cleanup(recovered, keep=unreadable)
        if went_on and not (recovered or subprocess_files or appended):
            self._known = self._known_items(own_items)
        return Finished(Combined(self.data_file, self._load, self._without_contexts), errors=errors)

    def _write(self, fill_for: Callable[[bool], Fill], *, begun: Path | None) -> bool:
        """Write the data file, going on from ``begun``, :meth:`begin`'s file (``fill_for``:
        the fill, with the workers' data or without); where that fails, whatever went wrong,
        the whole file, once. True if it went on from it."""
        if begun is not None:
            try:
                write_data_file(self.data_file, fill_for(False), begun=begun)
                return True
            except _AppendUnreadable:  # (the whole file would fail the same way: rescue)
                raise
            except Exception:
                with contextlib.suppress(OSError):  # (written whole instead: none of it left)
                    begun.unlink(missing_ok=True)
        write_data_file(self.data_file, fill_for(True))
        return False

    def _known_items(
        self, own_items: dict[str, list[Any]] | None
    ) -> dict[str, Collection[Any]] | None:
        """Each file's lines (or arcs) of every context together in a data file that holds
        the workers' union (written by :meth:`begin`'s thread) and the controller's own data,
        nothing else: the reports' copy takes them from both, not from the file (coverage.py
        reads each file's arcs with a query over every context's rows, and lines as every
        context's numbits: most of the copy's time)."""
        if own_items is None or self._union is None:
            return None
        if any(renamed_by_update(name) for name in self._union):
            return None  # (where the thread's write went through ``update``, renamed)
        known: dict[str, Collection[Any]] = dict(self._union)
        for name, found in own_items.items():
            known[name] = set(known.get(name, ())).union(found)
        return known

    def _own_items(self, own: coverage.CoverageData) -> dict[str, list[Any]] | None:
        """Each file's lines (or arcs) in the controller's own data; None where a name of its
        is one ``CoverageData.update`` changes (it makes every slash, either way, the
        system's): then only the data file says what it holds."""
        try:
            names = own.measured_files()
            if any(renamed_by_update(name) for name in names):
                return None
            items = own.arcs if self.receiver.acc.branch else own.lines
            return {name: list(items(name) or []) for name in names}
        except Exception:  # (coverage.py reading its own data: the data file is read, then)
            return None

    def _load(self) -> coverage.Coverage:
        """The written data file in a ``Coverage`` with the run's configuration."""
        cov = open_coverage(self.spec, data_file=str(self.data_file))
        cov.load()
        return cov

    def _without_contexts(self, full: coverage.Coverage) -> coverage.Coverage:
        """``full``'s data with every context together, in memory, with the run's
        configuration (see :func:`~pytest_distcov.data.merge.copy_without_contexts`)."""
        return copy_without_contexts(
            full, lambda: open_coverage(self.spec, data_file=None), known=self._known
        )

    def rescue(self, exc: Exception, fill_run: Fill) -> str:
        """The data file could not be written: save this run's combined data elsewhere.

        Nothing is removed then (the workers' directories, the controller's own); the error
        returned says where the data went and what to do. The file is tried in the data
        file's directory (the natural place, unless that disk is full), the temporary
        directory, the home directory, the current directory, in that order. It holds what the
        data file would have held: this run's data, and an appended file's data when that file
        can still be read.
        """
        data_file = self.data_file
        append_error = str(exc) if isinstance(exc, _AppendUnreadable) else ""
        old_data: list[str] = []  # what became of the appended file's data in the rescue

        def fill(data: coverage.CoverageData) -> None:
            old_data.clear()
            fill_run(data)
            if self.append and not append_error and data_file.exists():
                try:
                    update_from_file(data, data_file)
                except DataFileError:
                    old_data.append(f" (without the data of {data_file}, which cannot be read)")

        name = f"distcov-rescue-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.coverage"
        saved: Path | None = None
        failed: list[str] = []
        for directory in rescue_dirs(data_file):
            try:
                write_data_file(directory / name, fill)
            except Exception as again:  # the next place, then
                failed.append(f"{directory}: {_reason(again)}")
                continue
            saved = directory / name
            break
        kept = self._kept_dirs()
        keeping = f"; kept the data directories {', '.join(kept)}" if kept else ""
        if append_error:
            what = f"--distcov-append: {append_error}; {data_file} is left as it is and "
        else:
            what = f"could not write {data_file}: {_reason(exc)}; "
        if saved is None:
            what += (
                f"saving this run's combined data failed everywhere too ({'; '.join(failed)}):"
                " its parts are in the directories kept (coverage data files, .coverage.*),"
                " which `coverage combine --keep` can read once the cause is fixed"
            )
        elif append_error:
            what += (
                f"this run's combined data was saved to {saved}: read it with `pytest-distcov"
                f" report --data-file {saved}`, or move it to {data_file} in place of the"
                " damaged file"
            )
        else:
            what += (
                f"this run's combined data was saved to {saved}{''.join(old_data)}: fix the"
                f" cause (free space?) and move it to {data_file}, or read it with"
                f" `pytest-distcov report --data-file {saved}`"
            )
        return printable(what + keeping)

    def _kept_dirs(self) -> list[str]:
        """After a failed write: every directory that still holds a part of this run's data."""
        kept = [str(self.engine.data_dir)]
        for state in self.receiver.workers.values():
            datadir = state.datadir  # as checked: only this run's directories are named
            if datadir is None:
                continue
            host = self.receiver.host_of(state.id)
            if host is not None:
                kept.append(printable(f"{host.spec.label}:{datadir}"))
            elif os.path.isdir(datadir) and datadir not in kept:
                kept.append(printable(datadir))
        return kept

    def _close_remote(self, *, keep_workers: bool) -> None:
        """Close the hosts; unless ``keep_workers``, remove the remote workers' directories."""
        remote = self.receiver.remote
        if remote is None:
            return
        if keep_workers:
            remote.fleet.close(keep=True)
            return
        for state in self.receiver.workers.values():
            host = remote.host_of(state.id)
            # state.datadir is this run's directory of the worker there (see RunDirs.remote)
            if host is not None and state.datadir is not None and not pointed_to(state):
                dirs = remote.leftovers.setdefault(host.spec.label, [])
                if state.datadir not in dirs:
                    dirs.append(state.datadir)
        remote.fleet.close(remote.leftovers)

    def _cleanup(self, recovered: list[Recovered], keep: list[str]) -> None:
        """The combined data file is written: the run's directories go, the controller's and
        the local workers' (which keep their data until now), except one holding a file the
        user is pointed to."""
        dirs = {self.engine.data_dir} | {Path(p).parent for _, p, _ in recovered}
        for state in self.receiver.workers.values():
            on_host = self.receiver.host_of(state.id) is not None
            if on_host or pointed_to(state) or state.datadir is None:
                continue
            # never anything else a message names: the directory is checked again now
            datadir = self.receiver.dirs.local(state.id, state.datadir)
            if datadir is not None:
                dirs.add(datadir)
        for d in dirs:
            if not any(Path(k).parent == d for k in keep):
                shutil.rmtree(d, ignore_errors=True)


def pointed_to(state: WorkerState) -> bool:
    """True if a note of the worker names a file in its directory (kept for the user)."""
    datadir = state.datadir
    return datadir is not None and any(datadir in note for note in state.notes)

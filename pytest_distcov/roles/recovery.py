"""Recovering the data of dead workers: a strategy per kind of worker.

A worker that goes down without its final message leaves its durable data file (and journal)
behind: a local one in its directory here (:class:`LocalRecovery`), a remote one on its host,
fetched through the host's agent
(:class:`~pytest_distcov.remote.recovery.RemoteRecovery`). The controller picks the strategy
for each worker, calls :meth:`Recovery.recover` when it learns of the death, and
:meth:`Recovery.collect` once at the end of the run, for the files to combine.

A worker that finished but had a message refused (see :mod:`.receive`) is recovered the same
way at the end (``refused``): its data files hold everything it measured, the refused part too.

The directory is the one its hello named, and is read only when it is that worker's directory
of this run (:class:`~pytest_distcov.tempdirs.RunDirs`), checked again right before it is read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from pytest_distcov.data.journal import JOURNAL_SUFFIX
from pytest_distcov.errors import printable
from pytest_distcov.protocol import Hello, Recovered
from pytest_distcov.tempdirs import RunDirs

__all__ = ["LocalRecovery", "Recovered", "Recovery", "count_data_files"]


class Recovery(Protocol):
    """How the data of a dead worker of one kind is recovered."""

    def recover(self, worker_id: str, hello: Hello, why: str, *, refused: bool = False) -> None:
        """The worker went down (``why``) after its ``hello``, or (``refused``) finished but a
        message of it was refused: start recovering its data."""

    def collect(self) -> list[Recovered]:
        """At the end of the run: the files recovered (waiting for them, within bounds)."""


def count_data_files(names: Sequence[str]) -> str:
    """'2 data files': a worker's journal goes with its data file and is not counted."""
    count = sum(1 for name in names if not name.endswith(JOURNAL_SUFFIX))
    return f"{count} data file{'s' if count != 1 else ''}"


def _regular_file(path: Path) -> bool:
    """A regular file itself, not a symlink to one (whose target could be anywhere)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class LocalRecovery:
    """A local worker's files are in its directory here, which the controller holds.

    ``dirs`` says which directories a worker's hello may name (this run's).
    """

    def __init__(self, say: Callable[[str], None], dirs: RunDirs) -> None:
        self.say = say
        self.dirs = dirs
        self.recovered: list[Recovered] = []

    def recover(self, worker_id: str, hello: Hello, why: str, *, refused: bool = False) -> None:
        who = f"worker {worker_id} on {hello['host']}"
        event = f"{who} {why}" if refused else f"{who} crashed ({why})"
        named = hello["datadir"]
        datadir = self.dirs.local(worker_id, named)
        gone = datadir is None and self.dirs.named(worker_id, named) and not os.path.lexists(named)
        if datadir is None and not gone:
            self.say(
                printable(
                    f"{event}; its directory {named} is not one of this run's: nothing is read"
                    " there; the coverage it streamed is kept"
                )
            )
            return
        files = (
            sorted(str(p) for p in datadir.glob(".coverage.*") if _regular_file(p))
            if datadir is not None
            else []  # gone: nothing to read (the data it streamed is kept)
        )
        self.recovered.extend((worker_id, f, None) for f in files)  # journals too
        what = "all of its data" if refused else "the data of its finished tests"
        self.say(printable(f"{event}; recovering {what}: {count_data_files(files)} in {named}"))

    def collect(self) -> list[Recovered]:
        return list(self.recovered)

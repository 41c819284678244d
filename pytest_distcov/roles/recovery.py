"""Recovering the data of dead workers: a strategy per kind of worker.

A worker that goes down without its final message leaves its durable data file (and journal)
behind: a local one in its directory here (:class:`LocalRecovery`), a remote one on its host,
fetched through the host's agent
(:class:`~pytest_distcov.remote.recovery.RemoteRecovery`). The controller picks the strategy
for each worker, calls :meth:`Recovery.recover` when it learns of the death, and
:meth:`Recovery.collect` once at the end of the run, for the files to combine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from pytest_distcov.data.journal import JOURNAL_SUFFIX
from pytest_distcov.protocol import Hello, Recovered

__all__ = ["LocalRecovery", "Recovered", "Recovery", "count_data_files"]


class Recovery(Protocol):
    """How the data of a dead worker of one kind is recovered."""

    def recover(self, worker_id: str, hello: Hello, why: str) -> None:
        """The worker went down (``why``) after its ``hello``: start recovering its data."""

    def collect(self) -> list[Recovered]:
        """At the end of the run: the files recovered (waiting for them, within bounds)."""


def count_data_files(names: Sequence[str]) -> str:
    """'2 data files': a worker's journal goes with its data file and is not counted."""
    count = sum(1 for name in names if not name.endswith(JOURNAL_SUFFIX))
    return f"{count} data file{'s' if count != 1 else ''}"


class LocalRecovery:
    """A local worker's files are in its directory here, which the controller holds."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.recovered: list[Recovered] = []

    def recover(self, worker_id: str, hello: Hello, why: str) -> None:
        datadir = Path(hello["datadir"])
        files = sorted(str(p) for p in datadir.glob(".coverage.*") if p.is_file())
        self.recovered.extend((worker_id, f, None) for f in files)  # journals too
        self.say(
            f"worker {worker_id} on {hello['host']} crashed ({why}); recovering the data of"
            f" its finished tests: {count_data_files(files)} in {datadir}"
        )

    def collect(self) -> list[Recovered]:
        return list(self.recovered)

"""The shard store as a sink: this run's shard for a later ``pytest-distcov combine``."""

from __future__ import annotations

from pathlib import Path

from pytest_distcov.errors import DistCovError

from .pipeline import Combined, ExitStatus, Outcome
from .store import open_store, write_shard

__all__ = ["StoreSink"]


class StoreSink:
    """Puts a copy of the data file in the store (the data file itself stays as it is)."""

    def __init__(self, spec: str, root: Path) -> None:
        self.spec = spec
        self.root = root

    def run(self, combined: Combined, so_far: Outcome) -> Outcome:
        """A store that cannot take the shard is an internal error; the reports still run."""
        try:
            where = write_shard(combined.data_file, self.root, open_store(self.spec))
        except DistCovError as exc:
            return Outcome(
                errors=[
                    f"{exc}; this run's data is still in {combined.data_file}"
                    " (combine can read that file directly)"
                ],
                status=ExitStatus.INTERNAL_ERROR,
            )
        return Outcome(lines=[f"stored shard {where}"])

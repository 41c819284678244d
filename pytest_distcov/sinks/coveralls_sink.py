"""Coveralls as a sink: the upload after the data is saved (a failed one never touches it).

This module imports nothing of the upload itself: :mod:`.coveralls` (and requests with it) is
imported only by a run that uploads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pytest_distcov.errors import DistCovError

from .pipeline import Combined, ExitStatus, Outcome

__all__ = ["CoverallsSink"]


class CoverallsSink:
    """Uploads one job from the data the reports loaded.

    ``required``: a failed upload fails the run (``distcov_coveralls_required``); otherwise it
    is an error line and the run's result stands.
    """

    def __init__(self, *, env: Mapping[str, str], start: Path, required: bool) -> None:
        self.env = env
        self.start = start  # where the repository's root is looked for
        self.required = required

    def run(self, combined: Combined, so_far: Outcome) -> Outcome:
        from . import coveralls  # requests is imported only by runs that upload

        outcome = Outcome()
        try:
            line = coveralls.submit(
                combined.merged(),  # (it sends no contexts)
                env=self.env,
                root=coveralls.repo_root(self.start),
                log=outcome.lines.append,
            )
        except DistCovError as exc:
            if self.required:
                outcome.errors.append(f"FAIL: Coveralls upload: {exc} (distcov_coveralls_required)")
                outcome.status = ExitStatus.TESTS_FAILED
            else:
                outcome.errors.append(f"Coveralls upload failed (the run's result stands): {exc}")
            return outcome
        outcome.lines.append(line)
        return outcome

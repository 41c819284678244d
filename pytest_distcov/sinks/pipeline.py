"""The end of a run as an ordered list of sinks, each doing one job with the combined data.

Once the combined data file is written, the controller runs these, in this order:

1. :class:`~.store_sink.StoreSink` (with a store): this run's shard. A failed upload is an
   error and an internal-error exit status, and the reports still follow.
2. :class:`~.report_sink.ReportSink`: the reports. When nothing matched (``NothingToReport``)
   or a report cannot be written (``ReportError``), the sinks after it do not run.
3. :class:`~.coveralls_sink.CoverallsSink` (with ``--distcov-coveralls``): the upload, from the
   data the reports loaded (and with their parses).
4. :class:`~.fail_under_sink.FailUnderSink` (with a threshold): judges the reports' total.

The terminal summary (:mod:`.summary`) comes last, for every run, written or not.

A sink knows no pytest: it returns an :class:`Outcome` (lines for the summary, errors, an exit
status to set) and the controller applies it to the session. None of them writes the data file
or removes anything: after a failed write no sink runs at all.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pytest_distcov.covapi.data import close_all

if TYPE_CHECKING:
    from coverage import Coverage

__all__ = ["Combined", "ExitStatus", "Outcome", "Sink", "run_sinks"]


class ExitStatus(enum.IntEnum):
    """The exit status a sink asks for; pytest's ``ExitCode`` values, without pytest."""

    TESTS_FAILED = 1
    INTERNAL_ERROR = 3


class Combined:
    """The combined data file, written, and the ``Coverage`` that reads it for the reports.

    ``load`` makes that ``Coverage`` (with the run's configuration) on first use only, and
    every sink gets the same one. ``without_contexts`` makes, from it, one that reads the same
    data with every context together (or returns it as it is, where it has no contexts, or
    where ``[report] contexts`` selects some): what a report that shows no contexts reads, and
    the upload (see :func:`pytest_distcov.data.merge.without_contexts`); the upload reuses the
    parses the reports made of that one.
    """

    def __init__(
        self,
        data_file: Path,
        load: Callable[[], Coverage],
        without_contexts: Callable[[Coverage], Coverage] | None = None,
    ) -> None:
        self.data_file = data_file
        self._load = load
        self._without = without_contexts
        self._coverage: Coverage | None = None
        self._merged: Coverage | None = None

    def coverage(self) -> Coverage:
        """The data file's data, every context apart."""
        if self._coverage is None:
            self._coverage = self._load()
        return self._coverage

    def close(self) -> None:
        """Close the data objects the reports read (in-memory ones keep their connection on
        a plain close: see :func:`pytest_distcov.covapi.data.close_all`)."""
        merged, self._merged = self._merged, None
        full, self._coverage = self._coverage, None
        for cov in {id(c): c for c in (merged, full) if c is not None}.values():
            close_all(cov)

    def merged(self) -> Coverage:
        """The same data, every context together: for a report that shows no contexts."""
        if self._merged is None:
            full = self.coverage()
            self._merged = full if self._without is None else self._without(full)
        return self._merged


@dataclass
class Outcome:
    """What a sink did, for the controller to show and apply."""

    #: lines for the terminal summary (shown after ``distcov: ``)
    lines: list[str] = field(default_factory=list)
    #: errors for the terminal summary (a ``FAIL`` one is shown as it is)
    errors: list[str] = field(default_factory=list)
    #: the exit status to set, if the session's is still OK
    status: ExitStatus | None = None
    #: True: the sinks after this one do not run
    stop: bool = False
    #: the terminal reports, shown under the summary's title
    report_text: str = ""
    #: the total coverage the reports computed (None: not computed)
    total: float | None = None

    def then(self, later: Outcome) -> Outcome:
        """This outcome followed by ``later``'s: the first status asked for stands."""
        return Outcome(
            lines=[*self.lines, *later.lines],
            errors=[*self.errors, *later.errors],
            status=self.status if self.status is not None else later.status,
            stop=later.stop,
            report_text=self.report_text + later.report_text,
            total=later.total if later.total is not None else self.total,
        )


class Sink(Protocol):
    """One job with the combined data. ``so_far`` is what the sinks before it did."""

    def run(self, combined: Combined, so_far: Outcome) -> Outcome: ...


def run_sinks(sinks: Iterable[Sink], combined: Combined) -> Outcome:
    """Run ``sinks`` in order until one says stop; their outcomes, one after the other."""
    outcome = Outcome()
    try:
        for sink in sinks:
            outcome = outcome.then(sink.run(combined, outcome))
            if outcome.stop:
                break
    finally:
        combined.close()
    return outcome

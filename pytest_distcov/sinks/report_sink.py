"""The reports as a sink: every ``--distcov-report``, and the total fail-under needs."""

from __future__ import annotations

import io
from collections.abc import Callable

from pytest_distcov.errors import NothingToReport, ReportError
from pytest_distcov.settings.reportspec import ReportSpec

from .parses import ParseCache
from .pipeline import Combined, ExitStatus, Outcome
from .report import produce_reports

__all__ = ["ReportSink"]


class ReportSink:
    """Writes the reports from the combined data; the terminal ones become the report text.

    ``fail_under`` is the threshold the run is judged by (None: none): with one, the total is
    computed even without a report, and no data at all fails the run. ``incoming`` adopts the
    parses the parse helper made while the tests ran (see preparse.py).
    """

    def __init__(
        self,
        specs: tuple[ReportSpec, ...],
        *,
        fail_under: float | None,
        parse_cache: ParseCache | None,
        incoming: Callable[[], object] | None,
    ) -> None:
        self.specs = specs
        self.fail_under = fail_under
        self.parse_cache = parse_cache
        self.incoming = incoming

    def run(self, combined: Combined, so_far: Outcome) -> Outcome:
        """No data, or a report that cannot be written, stops the sinks after this one."""
        cov = combined.coverage()
        buf = io.StringIO()
        if self.parse_cache is not None and self.incoming is not None:
            self.parse_cache.incoming = self.incoming
        try:
            reports = produce_reports(
                cov,
                self.specs,
                buf,
                need_total=self.fail_under is not None,
                parse_cache=self.parse_cache,
                merged=combined.merged,
            )
        except NothingToReport as exc:
            if self.fail_under is None:
                return Outcome(lines=[str(exc)], stop=True)
            return Outcome(
                errors=[f"FAIL: {exc}, so --distcov-fail-under cannot be met"],
                status=ExitStatus.TESTS_FAILED,
                stop=True,
            )
        except ReportError as exc:
            return Outcome(errors=[str(exc)], status=ExitStatus.INTERNAL_ERROR, stop=True)
        return Outcome(
            lines=[*reports.notes, *(f"wrote {w}" for w in reports.written)],
            report_text=buf.getvalue(),
            total=reports.total,
        )

"""Which reports a run asks for, and fail-under thresholds: parsed from options without coverage.py.

Kept apart from :mod:`.report` (which imports coverage.py) so that resolving the options of a
run that does not measure imports nothing heavy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pytest_distcov.errors import SettingsError

__all__ = ["REPORT_KINDS", "TERM_KINDS", "ReportSpec", "parse_percent", "parse_report_spec"]

REPORT_KINDS = ("term", "term-missing", "html", "xml", "json", "lcov", "markdown")
TERM_KINDS = ("term", "term-missing")


@dataclass(frozen=True)
class ReportSpec:
    """One requested report: ``kind``, where to write it, and (terminal only) skip-covered."""

    kind: str
    dest: str | None = None
    skip_covered: bool = False

    def __str__(self) -> str:
        if self.skip_covered:
            return f"{self.kind}:skip-covered"
        return f"{self.kind}:{self.dest}" if self.dest else self.kind


def parse_report_spec(text: str) -> ReportSpec:
    kind, sep, dest = text.partition(":")
    kind = kind.strip().lower()
    if kind not in REPORT_KINDS:
        raise SettingsError(f"unknown report type {kind!r}; choose from {', '.join(REPORT_KINDS)}")
    if kind in TERM_KINDS:
        if sep and dest != "skip-covered":
            raise SettingsError(f"{kind} takes only ':skip-covered', not {dest!r}")
        return ReportSpec(kind, None, skip_covered=bool(sep))
    if sep and not dest:
        raise SettingsError(f"{kind}: is missing the destination after ':'")
    return ReportSpec(kind, dest or None)


def parse_percent(raw: object, origin: str) -> float:
    """A fail-under threshold from any source; ``origin`` names it in the error."""
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if math.isnan(value) or not 0 <= value <= 100:
        raise SettingsError(f"invalid value {raw!r} for {origin}: expected a number from 0 to 100")
    return value

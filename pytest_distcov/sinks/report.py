"""Reports from a coverage data file: terminal, html, xml, json, lcov, markdown; fail-under.

Shared by the pytest plugin and the ``pytest-distcov report`` command, so both write the same
reports for the same data. Knows coverage.py's public ``Coverage`` reporting API, never pytest.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TextIO

import coverage
from coverage import Coverage
from coverage.exceptions import CoverageException, NoDataError

from pytest_distcov.covapi.warnings import capture_coverage_warnings
from pytest_distcov.errors import NothingToReport, ReportError
from pytest_distcov.settings.options import FAIL_UNDER, Layers
from pytest_distcov.settings.reportspec import (
    REPORT_KINDS,
    TERM_KINDS,
    ReportSpec,
    parse_percent,
    parse_report_spec,
)

from .parses import ParseCache, SharedParses, share_parses

__all__ = [
    "REPORT_KINDS",
    "ReportOutcome",
    "ReportSpec",
    "Verdict",
    "capture_coverage_warnings",
    "configured_fail_under",
    "fail_under_precision",
    "fails_under",
    "format_percent",
    "judge_fail_under",
    "parse_percent",
    "parse_report_spec",
    "precision_of",
    "produce_reports",
    "threshold_decimals",
]


@dataclass
class ReportOutcome:
    total: float | None = None
    written: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


#: coverage 7.17 judges fail-under to the threshold's own decimals when it has more than
#: ``[report] precision``; earlier versions round to ``precision`` only.
#: We follow the installed version.
_THRESHOLD_DECIMALS = coverage.version_info >= (7, 17)


def threshold_decimals(threshold: float, precision: int) -> int:
    """Decimals to show a threshold with: ``precision``, or more if the threshold has more."""
    if threshold == int(threshold):
        return precision
    exponent = Decimal(str(threshold)).as_tuple().exponent
    assert isinstance(exponent, int)
    return max(precision, -exponent)


def fail_under_precision(threshold: float, precision: int) -> int:
    """Decimals a total is judged (and shown) with against ``threshold``, as coverage does."""
    return threshold_decimals(threshold, precision) if _THRESHOLD_DECIMALS else precision


def fails_under(total: float, threshold: float, precision: int) -> bool:
    """True when ``total`` misses ``threshold``, decided exactly as coverage.py decides it."""
    if threshold == 100.0 and total != 100.0:
        return True  # 100 means 100: 99.999 must not round up to a pass
    return round(total, fail_under_precision(threshold, precision)) < threshold


def format_percent(total: float, precision: int) -> str:
    return f"{total:.{precision}f}%"


def configured_fail_under(cov: Coverage) -> float | None:
    """coverage's own ``[report] fail_under``, or None when it is not set (0): the coverage
    layer of the fail-under option, whose command line and ini file the plugin has read."""
    return FAIL_UNDER.value(Layers(coverage=cov.get_option))


@dataclass(frozen=True)
class Verdict:
    """A fail-under judgement, with both figures as the user should read them."""

    failed: bool
    shown: str  # the total, to the decimals it was judged with
    wanted: str  # the threshold, as precise as it was given


def judge_fail_under(total: float, threshold: float, precision: int) -> Verdict:
    return Verdict(
        failed=fails_under(total, threshold, precision),
        shown=format_percent(total, fail_under_precision(threshold, precision)),
        wanted=format_percent(threshold, threshold_decimals(threshold, precision)),
    )


def precision_of(cov: Coverage) -> int:
    """The ``[report] precision`` coverage uses for percentages."""
    value = cov.get_option("report:precision")
    return value if isinstance(value, int) else 0


def _markdown(cov: Coverage, spec: ReportSpec, term: TextIO, outcome: ReportOutcome) -> float:
    buf = io.StringIO()
    total = cov.report(file=buf, output_format="markdown")
    if spec.dest:
        with open(spec.dest, "w", encoding="utf-8") as f:
            f.write(buf.getvalue())
        outcome.written.append(spec.dest)
        return total
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(buf.getvalue() + "\n")
        outcome.written.append(f"{summary} (GITHUB_STEP_SUMMARY)")
    else:
        term.write(buf.getvalue())
    return total


def _one_report(cov: Coverage, spec: ReportSpec, term: TextIO, outcome: ReportOutcome) -> float:
    kind, dest = spec.kind, spec.dest
    if kind in TERM_KINDS:
        return cov.report(
            file=term,
            show_missing=True if kind == "term-missing" else None,
            skip_covered=True if spec.skip_covered else None,
        )
    if kind == "markdown":
        return _markdown(cov, spec, term, outcome)
    if kind == "html":
        # Per-test contexts are what the user asked for: show them (coverage hides them unless
        # [html] show_contexts is set).
        contexts = set(cov.get_data().measured_contexts()) - {""}
        total = cov.html_report(directory=dest, show_contexts=True if contexts else None)
        outcome.written.append(f"{dest or cov.get_option('html:directory')}/index.html")
        return total
    if kind == "xml":
        total = cov.xml_report(outfile=dest)
        outcome.written.append(str(dest or cov.get_option("xml:output")))
        return total
    if kind == "json":
        total = cov.json_report(outfile=dest)
        outcome.written.append(str(dest or cov.get_option("json:output")))
        return total
    assert kind == "lcov", kind
    total = cov.lcov_report(outfile=dest)
    outcome.written.append(str(dest or cov.get_option("lcov:output")))
    return total


def shows_contexts(cov: Coverage, spec: ReportSpec) -> bool:
    """Whether the report ``spec`` shows (or selects by) contexts: it then reads the data
    file's contexts; any other reads the same data with every context together."""
    if cov.get_option("report:contexts"):
        return True  # (only the contexts it names are reported)
    if spec.kind == "html":
        return True  # (shown whenever there are any: see _one_report)
    return spec.kind == "json" and bool(cov.get_option("json:show_contexts"))


def produce_reports(
    cov: Coverage,
    specs: tuple[ReportSpec, ...] | list[ReportSpec],
    term: TextIO,
    *,
    need_total: bool,
    parse_cache: ParseCache | None = None,
    merged: Callable[[], Coverage] | None = None,
) -> ReportOutcome:
    """Write every report in ``specs`` from the data ``cov`` has loaded.

    The terminal ones go to ``term``. The total is computed even without a report when
    ``need_total`` (for fail-under). Each file is parsed once for all the reports, or not at
    all when ``parse_cache`` has its parse. A report that shows no contexts reads ``merged()``
    instead, where given: the same data with every context together (see
    :func:`shows_contexts`). Raises :class:`ReportError` naming the failed report.
    """
    cache = parse_cache if parse_cache is not None else ParseCache(None)
    shared: dict[int, SharedParses] = {}

    def reading(spec: ReportSpec | None) -> Coverage:
        if spec is not None:
            contexts = shows_contexts(cov, spec)
        else:  # (the total alone)
            contexts = bool(cov.get_option("report:contexts"))
        chosen = cov if merged is None or contexts else merged()
        if id(chosen) not in shared:
            shared[id(chosen)] = share_parses(chosen, cache)
        return chosen

    outcome = ReportOutcome()
    with capture_coverage_warnings(outcome.notes):
        for spec in specs:
            try:
                outcome.total = _one_report(reading(spec), spec, term, outcome)
            except NoDataError:
                raise NothingToReport(
                    "no data to report: nothing measured matched the source/include settings"
                ) from None
            except (CoverageException, OSError) as exc:
                raise ReportError(f"could not produce the {spec} report: {exc}") from None
        if outcome.total is None and need_total:
            try:
                outcome.total = reading(None).report(file=io.StringIO(), output_format="total")
            except NoDataError:
                raise NothingToReport("no data to report: nothing measured matched") from None
            except CoverageException as exc:
                raise ReportError(f"could not compute the total coverage: {exc}") from None
    for parses in shared.values():
        parses.save()
    return outcome

"""``pytest-distcov`` / ``python -m pytest_distcov``: work with combined data outside pytest.

Exit status follows coverage.py: 0 ok, 1 error, 2 total below ``--fail-under``. Never imports
pytest.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .engine import MeasureSpec, open_coverage
from .errors import DistCovError, SettingsError
from .merge import read_data_file
from .report import (
    REPORT_KINDS,
    fail_under_precision,
    fails_under,
    format_percent,
    parse_report_spec,
    precision_of,
    produce_reports,
    threshold_decimals,
)

__all__ = ["main"]

OK, ERR, FAIL_UNDER = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    from importlib.metadata import version

    parser = argparse.ArgumentParser(
        prog="pytest-distcov", description="Combined coverage data: reports and more."
    )
    parser.add_argument("--version", action="version", version=version("pytest-distcov"))
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="write reports from a coverage data file")
    rep.add_argument(
        "--format",
        action="append",
        metavar="TYPE[:DEST]",
        help=f"report to write (repeatable): {', '.join(REPORT_KINDS)}. Default: term.",
    )
    rep.add_argument("--data-file", help="coverage data file (default: coverage's data_file)")
    rep.add_argument("--fail-under", type=float, metavar="PCT", help="exit 2 below PCT")
    rep.add_argument("--rcfile", help="coverage configuration file (default: coverage's search)")
    return parser


def _report(args: argparse.Namespace) -> int:
    specs = [parse_report_spec(f) for f in (args.format or ["term"])]
    spec = MeasureSpec(source=None, branch=None, config_file=args.rcfile or True)
    cov = open_coverage(spec, data_file=args.data_file) if args.data_file else open_coverage(spec)
    read_data_file(str(cov.get_option("run:data_file"))).close(force=True)  # clear error if bad
    cov.load()
    fail_under = args.fail_under
    if fail_under is None:
        configured = cov.get_option("report:fail_under")
        fail_under = (
            float(configured) if isinstance(configured, (int, float)) and configured else None
        )
    if fail_under is not None and not 0 <= fail_under <= 100:
        raise SettingsError(f"invalid value {fail_under} for --fail-under: expected 0 to 100")
    outcome = produce_reports(cov, specs, sys.stdout, need_total=fail_under is not None)
    for note in outcome.notes:
        print(f"pytest-distcov: {note}", file=sys.stderr)
    for path in outcome.written:
        print(f"pytest-distcov: wrote {path}")
    if fail_under is not None and outcome.total is not None:
        precision = precision_of(cov)
        if fails_under(outcome.total, fail_under, precision):
            shown = format_percent(outcome.total, fail_under_precision(fail_under, precision))
            wanted = format_percent(fail_under, threshold_decimals(fail_under, precision))
            print(
                f"pytest-distcov: FAIL: total coverage {shown} is below the required {wanted}",
                file=sys.stderr,
            )
            return FAIL_UNDER
    return OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "report":
            return _report(args)
    except DistCovError as exc:
        print(f"pytest-distcov: error: {exc}", file=sys.stderr)
        return ERR
    return ERR  # pragma: no cover - argparse requires a command

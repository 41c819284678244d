"""``pytest-distcov`` / ``python -m pytest_distcov``: work with combined data outside pytest.

Exit status follows coverage.py: 0 ok, 1 error, 2 total below ``--fail-under``. Never imports
pytest.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from coverage import Coverage

from . import coveralls
from .engine import MeasureSpec, open_coverage
from .errors import DistCovError
from .merge import read_data_file
from .report import (
    REPORT_KINDS,
    configured_fail_under,
    judge_fail_under,
    parse_percent,
    parse_report_spec,
    precision_of,
    produce_reports,
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
    rep.add_argument("--fail-under", metavar="PCT", help="exit 2 below PCT (0 to 100)")
    rep.add_argument("--rcfile", help="coverage configuration file (default: coverage's search)")
    up = sub.add_parser(
        "coveralls",
        help="upload a coverage data file to Coveralls (token from COVERALLS_REPO_TOKEN)",
    )
    up.add_argument("--data-file", help="coverage data file (default: coverage's data_file)")
    up.add_argument("--rcfile", help="coverage configuration file (default: coverage's search)")
    up.add_argument("--parallel", action="store_true", help="one job of a parallel build")
    up.add_argument("--flag-name", help="the job's flag name (e.g. unit)")
    up.add_argument("--output", help="write the payload to this file instead of sending it")
    up.add_argument(
        "--finish", action="store_true", help="close the parallel build (after all its jobs)"
    )
    return parser


def _open(args: argparse.Namespace) -> Coverage:
    spec = MeasureSpec(source=None, branch=None, config_file=args.rcfile or True)
    cov = open_coverage(spec, data_file=args.data_file) if args.data_file else open_coverage(spec)
    read_data_file(str(cov.get_option("run:data_file"))).close(force=True)  # clear error if bad
    cov.load()
    return cov


def _coveralls(args: argparse.Namespace) -> int:
    def log(line: str) -> None:
        print(f"pytest-distcov: {line}", file=sys.stderr)

    if args.finish:
        print(f"pytest-distcov: {coveralls.finish(os.environ, log=log)}")
        return OK
    line = coveralls.submit(
        _open(args),
        env=os.environ,
        root=coveralls.repo_root(Path.cwd()),
        parallel=args.parallel or os.environ.get("COVERALLS_PARALLEL", "").lower() == "true",
        flag_name=args.flag_name,
        output=Path(args.output) if args.output else None,
        log=log,
    )
    print(f"pytest-distcov: {line}")
    return OK


def _report(args: argparse.Namespace) -> int:
    specs = [parse_report_spec(f) for f in (args.format or ["term"])]
    cov = _open(args)
    fail_under = (
        parse_percent(args.fail_under, "--fail-under")
        if args.fail_under is not None
        else configured_fail_under(cov)
    )
    outcome = produce_reports(cov, specs, sys.stdout, need_total=fail_under is not None)
    for note in outcome.notes:
        print(f"pytest-distcov: {note}", file=sys.stderr)
    for path in outcome.written:
        print(f"pytest-distcov: wrote {path}")
    if fail_under is not None and outcome.total is not None:
        verdict = judge_fail_under(outcome.total, fail_under, precision_of(cov))
        if verdict.failed:
            print(
                f"pytest-distcov: FAIL: total coverage {verdict.shown} is below the required"
                f" {verdict.wanted}",
                file=sys.stderr,
            )
            return FAIL_UNDER
    return OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "report":
            return _report(args)
        if args.command == "coveralls":
            return _coveralls(args)
    except DistCovError as exc:
        print(f"pytest-distcov: error: {exc}", file=sys.stderr)
        return ERR
    return ERR  # pragma: no cover - argparse requires a command

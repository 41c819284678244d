"""``pytest-distcov`` / ``python -m pytest_distcov``: work with combined data outside pytest.

Exit status follows coverage.py: 0 ok, 1 error, 2 total below ``--fail-under``. Never imports
pytest.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .data.union import ShardUnion
from .errors import DataFileError, DistCovError, StoreError, printable
from .sinks.store import MAX_SHARD_BYTES, combiner_mapper, expand_stores, fetch_all, parse_size

if TYPE_CHECKING:
    from coverage import Coverage

# Modules that load coverage.py are imported where they are used: `combine` starts its readers
# before loading it. The report kinds are report.REPORT_KINDS (a test keeps the two equal).
_REPORT_KINDS = "term, term-missing, html, xml, json, lcov, markdown"

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
        help=f"report to write (repeatable): {_REPORT_KINDS}. Default: term.",
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
    up.add_argument(
        "--output",
        help="write the payload to this file (mode 0600, token as [secure]) instead of sending it",
    )
    up.add_argument(
        "--finish", action="store_true", help="close the parallel build (after all its jobs)"
    )
    comb = sub.add_parser(
        "combine",
        help="combine the shards of one or more stores (directories, globs, s3://bucket/prefix)",
    )
    comb.add_argument("stores", nargs="+", metavar="STORE")
    comb.add_argument("--data-file", help="where to write (default: coverage's data_file)")
    comb.add_argument("--rcfile", help="coverage configuration file (default: coverage's search)")
    comb.add_argument(
        "--expect", type=_positive, metavar="N", help="fail unless at least N shards arrived"
    )
    comb.add_argument(
        "--root",
        help="project root: the shards' relative paths are under it, and no path may lead out"
        " of it (default: .)",
    )
    comb.add_argument(
        "--max-shard-size",
        type=_size,
        default=MAX_SHARD_BYTES,
        metavar="SIZE",
        help="do not read a shard bigger than SIZE bytes (K, M, G: 1024s; default: 1G)",
    )
    who = sub.add_parser("who-covers", help="the tests that ran FILE:LINE[-LINE]")
    who.add_argument("where", metavar="FILE:LINE[-LINE]")
    who.add_argument("--data-file", help="coverage data file (default: coverage's data_file)")
    who.add_argument("--rcfile", help="coverage configuration file (default: coverage's search)")
    who.add_argument("--json", action="store_true", help="JSON with the phase of every test")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of shards, 1 or more: {text!r}")
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _coverage(args: argparse.Namespace, **kwargs: object) -> Coverage:
    """A Coverage object with the user's configuration and ``--data-file`` (not loaded);
    ``data_file=None``: in memory."""
    from .engine.measure import MeasureSpec, open_coverage

    spec = MeasureSpec(source=None, branch=None, config_file=args.rcfile or True)
    if "data_file" not in kwargs and args.data_file:
        kwargs["data_file"] = args.data_file
    return open_coverage(spec, **kwargs)


def _data_file(args: argparse.Namespace) -> Path:
    return Path(os.path.abspath(str(_coverage(args).get_option("run:data_file"))))


def _combine(args: argparse.Namespace) -> int:
    root = Path(args.root or os.getcwd())
    stores = expand_stores(args.stores)
    union = ShardUnion(max_bytes=args.max_shard_size)
    came: list[str] = []
    errors: list[str] = []
    notes: list[str] = []
    target = Path()

    def fetched(scratch: Path) -> Iterator[tuple[str, str]]:
        for store in stores:
            try:
                shards = store.shards()
            except StoreError as exc:
                errors.append(str(exc))
                continue
            if not shards:
                errors.append(f"no shards in {store.url} ({store.holds()})")
            for shard, local in fetch_all(store, shards, scratch, args.max_shard_size):
                if isinstance(local, StoreError):
                    errors.append(str(local))
                else:
                    yield shard.where, str(local)

    def configure() -> None:  # loads coverage.py: done while the readers read
        nonlocal target
        cov = _coverage(args)
        target = Path(os.path.abspath(str(cov.get_option("run:data_file"))))
        union.map_path, note = combiner_mapper(cov, root)
        if note:
            notes.append(note)

    with tempfile.TemporaryDirectory(prefix="distcov-combine-") as tmp, union:
        # every download finishes first: the union may fork reader processes
        shards = list(fetched(Path(tmp)))
        for name, problem in union.add_files(shards, meanwhile=configure):
            if problem is None:
                came.append(name)
            else:
                errors.append(str(problem))
        if came:
            try:
                _write_combined(target, union)
            except DataFileError as exc:
                errors.append(str(exc))
            else:
                print(f"pytest-distcov: combined {len(came)} shards into {target}")
    # Shard names and S3 keys come from whoever could write to the store: shown escaped.
    for note in notes:
        print(f"pytest-distcov: note: {printable(note)}", file=sys.stderr)
    for error in errors:
        print(f"pytest-distcov: error: {printable(error)}", file=sys.stderr)
    if args.expect and len(came) < args.expect:
        print(
            f"pytest-distcov: error: expected {args.expect} shards, {len(came)} arrived"
            + (": " + ", ".join(came) if came else ""),
            file=sys.stderr,
        )
        return ERR
    return ERR if errors or not came else OK


def _write_combined(target: Path, union: ShardUnion) -> None:
    import sqlite3

    from coverage.exceptions import CoverageException

    from .data.merge import write_data_file

    try:
        write_data_file(target, union.write_into)
    except (OSError, sqlite3.Error, CoverageException) as exc:
        cause = exc.__cause__ if isinstance(exc, CoverageException) and exc.__cause__ else exc
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
        if target.parent.is_dir() and not os.access(target.parent, os.W_OK):
            reason = f"no permission to write in {target.parent}"
        raise DataFileError(
            f"cannot write the combined data to {target}: {reason}; nothing was written there"
            " (give another --data-file, or make its directory writable and free space)"
        ) from None


def _who_covers(args: argparse.Namespace) -> int:
    from .data.contexts import parse_where, who_covers
    from .data.readers import read_data_file

    file, lines = parse_where(args.where)
    data = read_data_file(_data_file(args))
    try:
        found = who_covers(data, file, lines)
    finally:
        data.close(force=True)
    if args.json:
        import json

        print(json.dumps(found.as_json(), indent=2))
    else:
        for test in found.tests:
            print(test)
    if not found.tests:
        where = f"{found.path} lines {lines.start}-{lines.stop - 1}"
        print(
            f"pytest-distcov: no test ran {where}"
            + (" (they ran outside tests: imports, collection)" if found.outside else ""),
            file=sys.stderr,
        )
    return OK


def _open(args: argparse.Namespace) -> Coverage:
    from .data.readers import read_data_file

    cov = _coverage(args)
    read_data_file(str(cov.get_option("run:data_file"))).close(force=True)  # clear error if bad
    cov.load()
    return cov


def _coveralls(args: argparse.Namespace) -> int:
    from .sinks import coveralls  # requests is imported only when uploading

    def log(line: str) -> None:
        print(f"pytest-distcov: {line}", file=sys.stderr)

    if args.finish:
        print(f"pytest-distcov: {coveralls.finish(os.environ, log=log)}")
        return OK
    line = coveralls.submit(
        _open(args),
        env=os.environ,
        root=coveralls.repo_root(Path.cwd()),
        parallel=args.parallel,  # COVERALLS_PARALLEL=true is read with the other variables
        flag_name=args.flag_name,
        output=Path(args.output) if args.output else None,
        log=log,
    )
    print(f"pytest-distcov: {line}")
    return OK


def _report(args: argparse.Namespace) -> int:
    from .data.merge import copy_without_contexts
    from .sinks.pipeline import Combined
    from .sinks.report import (
        configured_fail_under,
        judge_fail_under,
        parse_percent,
        parse_report_spec,
        precision_of,
        produce_reports,
    )

    specs = [parse_report_spec(f) for f in (args.format or ["term"])]
    cov = _open(args)
    fail_under = (
        parse_percent(args.fail_under, "--fail-under")
        if args.fail_under is not None
        else configured_fail_under(cov)
    )
    # (the reports that show no contexts read the data with every context together)
    combined = Combined(
        Path(str(cov.get_option("run:data_file"))),
        lambda: cov,
        lambda full: copy_without_contexts(full, lambda: _coverage(args, data_file=None)),
    )
    try:
        outcome = produce_reports(
            cov, specs, sys.stdout, need_total=fail_under is not None, merged=combined.merged
        )
    finally:
        combined.close()
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
        if args.command == "combine":
            return _combine(args)
        if args.command == "who-covers":
            return _who_covers(args)
    except DistCovError as exc:
        print(f"pytest-distcov: error: {exc}", file=sys.stderr)
        return ERR
    return ERR  # pragma: no cover - argparse requires a command

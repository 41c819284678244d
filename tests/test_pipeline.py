"""The end of a run as a pipeline: the sinks, their order, and what stops the ones after."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import coverage
import pytest
from coverage import Coverage, CoverageData

from pytest_distcov.roles.recovery import LocalRecovery, count_data_files
from pytest_distcov.settings.reportspec import parse_report_spec
from pytest_distcov.sinks.coveralls_sink import CoverallsSink
from pytest_distcov.sinks.fail_under_sink import FailUnderSink
from pytest_distcov.sinks.pipeline import Combined, ExitStatus, Outcome, Sink, run_sinks
from pytest_distcov.sinks.report_sink import ReportSink
from pytest_distcov.sinks.store_sink import StoreSink
from pytest_distcov.sinks.summary import Summary
from pytest_distcov.tempdirs import RunDirs

from .helpers import load, run_pytest

#: A module whose line 4 never runs: 3 of its 4 statements are covered (75 %).
SOURCE = "def f(x):\n    if x:\n        return 1\n    return 2\n"


def _combined(tmp_path: Path, *, lines: list[int] | None = None) -> Combined:
    """A real data file for a real module in ``tmp_path`` (no data at all: ``lines`` None)."""
    module = tmp_path / "mod.py"
    module.write_text(SOURCE)
    data_file = tmp_path / ".coverage"
    data = CoverageData(basename=str(data_file))
    if lines is not None:
        data.add_lines({str(module): lines})
    data.write()

    def load_it() -> Coverage:
        cov = Coverage(data_file=str(data_file), config_file=False)
        cov.load()
        return cov

    return Combined(data_file, load_it)


def _reports(*specs: str, fail_under: float | None = None) -> ReportSink:
    return ReportSink(
        tuple(parse_report_spec(s) for s in specs),
        fail_under=fail_under,
        parse_cache=None,
        incoming=None,
    )


def _coveralls_without_token() -> CoverallsSink:
    """A required upload that fails at once when it runs (no token: nothing is sent)."""
    return CoverallsSink(env={}, start=Path.cwd(), required=True)


def test_exit_statuses_are_pytests() -> None:
    for status in ExitStatus:
        assert pytest.ExitCode(int(status)).name == status.name


def test_a_failed_store_does_not_stop_the_reports(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "store"
    not_a_directory.write_text("a file where the store's directory would be")
    combined = _combined(tmp_path, lines=[1, 2, 3])
    sinks: list[Sink] = [
        StoreSink(str(not_a_directory), tmp_path),
        _reports("term", f"xml:{tmp_path / 'cov.xml'}"),
    ]
    outcome = run_sinks(sinks, combined)
    (error,) = outcome.errors
    assert error.startswith(f"cannot write to the store {not_a_directory}")
    assert error.endswith(f"this run's data is still in {combined.data_file} (combine can read"
                          " that file directly)")  # fmt: skip
    assert outcome.status is ExitStatus.INTERNAL_ERROR
    assert outcome.lines == [f"wrote {tmp_path / 'cov.xml'}"]
    assert (tmp_path / "cov.xml").exists()
    assert "mod.py" in outcome.report_text
    assert outcome.total == 75.0


def test_a_stored_shard_is_a_line_and_the_data_file_stays(tmp_path: Path) -> None:
    store = tmp_path / "shards"
    combined = _combined(tmp_path, lines=[1, 2, 3])
    before = combined.data_file.read_bytes()
    outcome = run_sinks([StoreSink(str(store), tmp_path)], combined)
    ((shard_line), *_) = outcome.lines
    (shard,) = store.iterdir()
    assert shard_line == f"stored shard {shard}"
    assert load(shard).measured_files() == {"mod.py"}  # relative to the root
    assert combined.data_file.read_bytes() == before
    assert outcome.status is None


def test_nothing_to_report_stops_the_sinks_after_it(tmp_path: Path) -> None:
    combined = _combined(tmp_path)
    sinks: list[Sink] = [_reports("term"), _coveralls_without_token(), FailUnderSink(90, 0)]
    outcome = run_sinks(sinks, combined)
    assert outcome.lines == [
        "no data to report: nothing measured matched the source/include settings"
    ]
    assert outcome.errors == []  # neither the upload nor the judgement ran
    assert outcome.status is None
    assert outcome.stop


def test_nothing_to_report_fails_a_threshold(tmp_path: Path) -> None:
    outcome = run_sinks([_reports(fail_under=90), FailUnderSink(90, 0)], _combined(tmp_path))
    assert outcome.errors == [
        "FAIL: no data to report: nothing measured matched, so --distcov-fail-under cannot be met"
    ]
    assert outcome.status is ExitStatus.TESTS_FAILED


def test_a_report_that_cannot_be_written_stops_the_upload(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    sinks: list[Sink] = [_reports(f"xml:{blocker / 'cov.xml'}"), _coveralls_without_token()]
    outcome = run_sinks(sinks, _combined(tmp_path, lines=[1]))
    (error,) = outcome.errors
    assert error.startswith(f"could not produce the xml:{blocker / 'cov.xml'} report")
    assert outcome.status is ExitStatus.INTERNAL_ERROR


@pytest.mark.parametrize(("threshold", "failed"), [(75, False), (75.5, True)])
def test_fail_under_judges_the_reports_total(
    tmp_path: Path, threshold: float, failed: bool
) -> None:
    sinks: list[Sink] = [_reports(fail_under=threshold), FailUnderSink(threshold, 0)]
    outcome = run_sinks(sinks, _combined(tmp_path, lines=[1, 2, 3]))
    if failed:
        # coverage 7.17+ shows the total to the threshold's decimals; earlier, to precision's
        shown = "75.0%" if coverage.version_info >= (7, 17) else "75%"
        assert outcome.errors == [
            f"FAIL: total coverage {shown} is below the required 75.5% (--distcov-fail-under)"
        ]
        assert outcome.status is ExitStatus.TESTS_FAILED
    else:
        assert outcome.lines == ["required coverage of 75% reached: 75%"]
        assert outcome.status is None


def test_the_first_status_asked_for_stands(tmp_path: Path) -> None:
    """A failed upload that is required, then a missed threshold: both errors, in order; the
    exit status is the first one's (as pytest's session keeps the first failure)."""
    store = tmp_path / "store"
    store.write_text("")
    sinks: list[Sink] = [
        StoreSink(str(store), tmp_path),
        _reports(fail_under=100),
        _coveralls_without_token(),
        FailUnderSink(100, 0),
    ]
    outcome = run_sinks(sinks, _combined(tmp_path, lines=[1, 2, 3]))
    assert [e.split(":")[0] for e in outcome.errors] == [
        "cannot write to the store " + str(store),
        "FAIL",
        "FAIL",
    ]
    assert "Coveralls upload: no Coveralls token" in outcome.errors[1]
    assert "below the required 100%" in outcome.errors[2]
    assert outcome.status is ExitStatus.INTERNAL_ERROR


def test_the_combined_data_is_loaded_once(tmp_path: Path) -> None:
    """The reports and the upload read the same ``Coverage`` (and so share its parses)."""
    combined = _combined(tmp_path, lines=[1])
    cov = combined.coverage()
    assert combined.coverage() is cov
    assert cov.get_data().measured_files() == {str(tmp_path / "mod.py")}


def test_outcomes_follow_one_another() -> None:
    first = Outcome(lines=["a"], errors=["x"], status=ExitStatus.INTERNAL_ERROR, total=50.0)
    later = Outcome(lines=["b"], errors=["y"], status=ExitStatus.TESTS_FAILED, stop=True)
    both = first.then(later)
    assert (both.lines, both.errors) == (["a", "b"], ["x", "y"])
    assert both.status is ExitStatus.INTERNAL_ERROR
    assert both.total == 50.0
    assert both.stop


class _Terminal:
    """What pytest's terminal reporter was asked to write (the summary's only collaborator
    outside this package)."""

    def __init__(self) -> None:
        self.written: list[tuple[str, str, dict[str, bool]]] = []

    def write_sep(self, sep: str, title: str) -> None:
        self.written.append(("sep", f"{sep} {title}", {}))

    def write(self, content: str) -> None:
        self.written.append(("text", content, {}))

    def write_line(self, line: str, **markup: bool) -> None:
        self.written.append(("line", line, markup))


def test_the_summary_says_it_all_in_order() -> None:
    terminal = _Terminal()
    Summary(
        title="distcov: 2 workers",
        report_text="TOTAL 75%\n",
        lines=["stored shard s"],
        notes=["[gw0] a note"],
        errors=["FAIL: too low", "an error"],
    ).run(terminal)
    red = {"red": True, "bold": True}
    assert terminal.written == [
        ("sep", "- distcov: 2 workers", {}),
        ("text", "TOTAL 75%\n", {}),
        ("line", "distcov: stored shard s", {}),
        ("line", "distcov: [gw0] a note", {}),
        ("line", "FAIL: too low", red),
        ("line", "distcov: an error", red),
    ]


def test_a_dead_local_workers_files_are_recovered(tmp_path: Path) -> None:
    datadir = tmp_path / "distcov-gw1-x"
    datadir.mkdir()
    for name in (".coverage.gw1", ".coverage.gw1.journal", "unrelated"):
        (datadir / name).write_text("")
    lines: list[str] = []
    recovery = LocalRecovery(lines.append, RunDirs(tmp_path))
    hello: Any = {"datadir": str(datadir), "host": "here"}
    recovery.recover("gw1", hello, "crashed hard")
    assert recovery.collect() == [
        ("gw1", str(datadir / ".coverage.gw1"), None),
        ("gw1", str(datadir / ".coverage.gw1.journal"), None),
    ]
    assert lines == [
        "worker gw1 on here crashed (crashed hard); recovering the data of its finished"
        f" tests: 1 data file in {datadir}"
    ]
    assert count_data_files(["a", "b", "a.journal"]) == "2 data files"


def test_a_run_goes_through_the_sinks_in_their_documented_order(
    pytester: pytest.Pytester, shapes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Store, reports, Coveralls, fail-under: each one's lines and errors in that order."""
    for token in ("COVERALLS_REPO_TOKEN", "GITHUB_TOKEN"):
        monkeypatch.delenv(token, raising=False)  # the upload fails at once, sending nothing
    store = shapes / "store"
    result = run_pytest(
        pytester,
        "--distcov",
        f"--distcov-store={store}",
        "--distcov-report=xml:cov.xml",
        "--distcov-coveralls",
        "--distcov-fail-under=100",
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    (shard,) = os.listdir(store)
    result.stdout.fnmatch_lines(
        [
            f"distcov: stored shard {store / shard}",
            "distcov: wrote cov.xml",
            "distcov: Coveralls upload failed (the run's result stands): no Coveralls token*",
            "FAIL: total coverage * is below the required 100% (--distcov-fail-under)",
        ]
    )

"""Every report kind, fail-under, and coverage.py's own tools on the saved data."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .helpers import run_pytest


def test_every_report_kind(pytester: pytest.Pytester, shapes: Path) -> None:
    result = run_pytest(
        pytester,
        "--distcov",
        "-n",
        "2",
        "--distcov-report=term-missing:skip-covered",
        "--distcov-report=html:out/html",
        "--distcov-report=xml:out/cov.xml",
        "--distcov-report=json:out/cov.json",
        "--distcov-report=lcov:out/cov.lcov",
        "--distcov-report=markdown:out/cov.md",
    )
    assert result.ret == 0, result.stdout.str()
    out = result.stdout.str()
    assert "Missing" in out
    assert "shapes/__init__.py" not in out  # 100 %: skipped by skip-covered
    result.stdout.fnmatch_lines(["*shapes/geometry.py*89%*39, 57, 84-88*"])
    out_dir = shapes / "out"
    assert (out_dir / "html" / "index.html").exists()
    root = ET.parse(out_dir / "cov.xml").getroot()
    assert root.tag == "coverage"
    report = json.loads((out_dir / "cov.json").read_text())
    geometry = next(v for k, v in report["files"].items() if k.endswith("geometry.py"))
    assert geometry["missing_lines"] == [39, 57, 84, 85, 86, 87, 88]
    assert "SF:" in (out_dir / "cov.lcov").read_text()
    md = (out_dir / "cov.md").read_text()
    assert md.startswith("| Name")
    assert "**TOTAL**" in md
    for name in ("html/index.html", "cov.xml", "cov.json", "cov.lcov", "cov.md"):
        result.stdout.fnmatch_lines([f"*distcov: wrote *{name}*"])


def test_default_destinations_come_from_coverage_config(
    pytester: pytest.Pytester, shapes: Path
) -> None:
    (shapes / ".coveragerc").write_text(
        "[xml]\noutput = from-config.xml\n[html]\ndirectory = site\n"
    )
    result = run_pytest(pytester, "--distcov", "--distcov-report=xml", "--distcov-report=html")
    assert result.ret == 0
    assert (shapes / "from-config.xml").exists()
    assert (shapes / "site" / "index.html").exists()


def test_empty_report_value_turns_reports_off(pytester: pytest.Pytester, shapes: Path) -> None:
    result = run_pytest(pytester, "--distcov", "-n", "2", "--distcov-report=")
    assert result.ret == 0
    assert "TOTAL" not in result.stdout.str()
    assert (shapes / ".coverage").exists()  # the data is still saved


def test_markdown_without_file_goes_to_step_summary_or_terminal(
    pytester: pytest.Pytester, shapes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_pytest(pytester, "--distcov", "--distcov-report=markdown")
    result.stdout.fnmatch_lines(["| Name*", "*| **TOTAL** |*"])
    summary = shapes / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = run_pytest(pytester, "--distcov", "--distcov-report=markdown")
    assert "**TOTAL**" in summary.read_text()
    assert "**TOTAL**" not in result.stdout.str()


@pytest.mark.parametrize("threshold", ["90", "90.5", "90.48", "90.49", "95", "100", "0"])
def test_fail_under_agrees_with_coverage(
    pytester: pytest.Pytester, shapes: Path, threshold: str
) -> None:
    """The example totals 90.476 %. Whatever the installed coverage.py decides for the same
    data and threshold (`coverage report --fail-under`), the run decides too."""
    result = run_pytest(pytester, "--distcov", "-n", "2", f"--distcov-fail-under={threshold}")
    judge = pytester.run(sys.executable, "-m", "coverage", "report", f"--fail-under={threshold}")
    assert judge.ret in (0, 2)
    if judge.ret == 2:
        assert result.ret == 1, result.stdout.str()
        result.stdout.fnmatch_lines(
            [f"FAIL: total coverage 90*% is below the required {threshold}%*"]
        )
    else:
        assert result.ret == 0, result.stdout.str()
        result.stdout.fnmatch_lines([f"distcov: required coverage of {threshold}% reached: 90*%"])


@pytest.mark.parametrize(("threshold", "shown"), [("95", "90%"), ("100", "90%"), ("90.6", "90*%")])
def test_fail_under_message(
    pytester: pytest.Pytester, shapes: Path, threshold: str, shown: str
) -> None:
    result = run_pytest(pytester, "--distcov", f"--distcov-fail-under={threshold}")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [f"FAIL: total coverage {shown} is below the required {threshold}%*"]
    )


def test_fail_under_with_precision_and_no_report(pytester: pytest.Pytester, shapes: Path) -> None:
    (shapes / ".coveragerc").write_text("[report]\nprecision = 2\n")
    result = run_pytest(pytester, "--distcov", "--distcov-report=", "--distcov-fail-under=90.49")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["FAIL: total coverage 90.48% is below the required 90.49%*"])


def test_fail_under_keeps_failed_tests_status(pytester: pytest.Pytester, shapes: Path) -> None:
    (shapes / "tests" / "test_fails.py").write_text("def test_no():\n    assert False\n")
    result = run_pytest(pytester, "--distcov", "-n", "2", "--distcov-fail-under=99")
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_coverage_tools_work_on_the_saved_data(pytester: pytest.Pytester, shapes: Path) -> None:
    assert run_pytest(pytester, "--distcov", "-n", "3", "--distcov-branch").ret == 0
    result = pytester.run(sys.executable, "-m", "coverage", "report", "-m")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*shapes/geometry.py*", "TOTAL*"])
    assert pytester.run(sys.executable, "-m", "coverage", "html").ret == 0
    assert pytester.run(sys.executable, "-m", "coverage", "xml").ret == 0
    # No stray worker files next to the data file: coverage's combine would eat them.
    assert not list(shapes.glob(".coverage.*"))
    assert not list(shapes.glob(".coverage-distcov-*"))


def test_report_error_is_clear_and_data_kept(pytester: pytest.Pytester, shapes: Path) -> None:
    (shapes / "report-target").mkdir()
    result = run_pytest(pytester, "--distcov", "-n", "2", "--distcov-report=json:report-target")
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    result.stdout.fnmatch_lines(["*distcov: could not produce the json:report-target report*"])
    assert "Traceback" not in result.stdout.str()
    assert (shapes / ".coverage").exists()


def test_without_terminal_reporter_data_and_fail_under_still_work(
    pytester: pytest.Pytester, shapes: Path
) -> None:
    result = run_pytest(
        pytester,
        "--distcov",
        "-n",
        "2",
        "-p",
        "no:terminal",
        "--distcov-fail-under=95",
        "--distcov-report=xml:cov.xml",
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert (shapes / ".coverage").exists()
    assert (shapes / "cov.xml").exists()


def test_verbose_run_shows_the_combined_total_so_far(
    pytester: pytest.Pytester, shapes: Path
) -> None:
    """A long run shows, in verbose mode, how much is covered so far (every 5 s)."""
    (shapes / "tests" / "test_slow.py").write_text(
        "import time\n\nimport pytest\n\n\n@pytest.mark.parametrize('i', range(28))\n"
        "def test_slow(i):\n    time.sleep(0.4)\n"
    )
    result = run_pytest(pytester, "--distcov", "-n", "2", "-v", "--distcov-stream-interval=0")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["distcov: * of 84 statements (*%) in * files covered so far"])


def test_unwritable_data_file_keeps_the_combined_data(
    pytester: pytest.Pytester, shapes: Path, private_tmp: Path
) -> None:
    """The union is saved to a fallback file (the data file's directory cannot be made: the
    temporary directory is next), and the workers keep their copies."""
    (shapes / "blocker").write_text("a file where a directory should be")
    (shapes / ".coveragerc").write_text("[run]\ndata_file = blocker/sub/.coverage\n")
    result = run_pytest(pytester, "--distcov", "-n", "2")
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    out = result.stdout.str()
    assert "Traceback" not in out
    result.stdout.fnmatch_lines(
        [
            "distcov: could not write *blocker/sub/.coverage: *; this run's combined data was"
            f" saved to {private_tmp.resolve()}/distcov-rescue-*.coverage: *kept the data"
            " directories *distcov-controller-*distcov-gw*"
        ]
    )
    rescued = list(private_tmp.glob("distcov-rescue-*.coverage"))
    assert len(rescued) == 1
    # The workers' data files, each whole (their journals are empty at the end, and removed).
    assert sorted(p.name for p in private_tmp.glob("distcov-gw*/.coverage.*")) == [
        ".coverage.gw0",
        ".coverage.gw1",
    ]
    from .helpers import measured

    geometry = next(
        v for f, v in measured(rescued[0], arcs=False).items() if f.endswith("geometry.py")
    )
    assert len(geometry) > 50  # the workers' tests are in it, not just the controller's imports


MODULE_A = """\
def grade(n):
    if n > 10:
        return "big"
    return "small"  # pragma: no cover
"""
MODULE_B = "VALUE = 1\n\n\ndef unused():\n    return VALUE\n"


def test_reports_parse_each_file_once_and_say_what_coverage_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """coverage.py parses each file again for every report; ours share one parse a file (most
    of a report's time), and every report still reads as coverage.py's own."""
    import io

    from coverage import Coverage, CoverageData
    from coverage.parser import PythonParser

    from pytest_distcov.sinks.report import parse_report_spec, produce_reports

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.py").write_text(MODULE_A)
    (tmp_path / "b.py").write_text(MODULE_B)
    data = CoverageData(str(tmp_path / ".coverage"))
    data.add_lines({str(tmp_path / "a.py"): [1, 2, 3], str(tmp_path / "b.py"): [1, 4]})
    data.write()

    reference = Coverage(data_file=str(tmp_path / ".coverage"))
    reference.load()
    expected_term = io.StringIO()
    expected_total = reference.report(file=expected_term, show_missing=True)
    reference.xml_report(outfile="ref.xml")
    reference.json_report(outfile="ref.json")
    reference.lcov_report(outfile="ref.lcov")
    expected_files = json.loads(Path("ref.json").read_text())["files"]

    parses: list[str] = []
    original = PythonParser.parse_source

    def counting(self: PythonParser) -> None:
        parses.append(self.filename)
        original(self)

    monkeypatch.setattr(PythonParser, "parse_source", counting)
    cov = Coverage(data_file=str(tmp_path / ".coverage"))
    cov.load()
    specs = [
        parse_report_spec(s) for s in ("term-missing", "xml:x.xml", "json:x.json", "lcov:x.lcov")
    ]
    term = io.StringIO()
    outcome = produce_reports(cov, specs, term, need_total=True)
    assert sorted(parses) == [str(tmp_path / "a.py"), str(tmp_path / "b.py")]
    assert term.getvalue() == expected_term.getvalue()
    assert json.loads(Path("x.json").read_text())["files"] == expected_files
    assert Path("x.lcov").read_text() == Path("ref.lcov").read_text()
    packages = [ET.parse(name).getroot().find("packages") for name in ("x.xml", "ref.xml")]
    assert packages[0] is not None
    assert packages[1] is not None
    assert ET.tostring(packages[0]) == ET.tostring(packages[1])
    assert outcome.total == expected_total == pytest.approx(100 * 5 / 6)

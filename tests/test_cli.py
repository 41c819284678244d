"""`pytest-distcov report` / `python -m pytest_distcov`: reports from a data file."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from .helpers import run_pytest


@pytest.fixture
def data_file(pytester: pytest.Pytester, shapes: Path) -> Path:
    assert run_pytest(pytester, "--distcov", "-n", "2", "--distcov-report=").ret == 0
    return shapes / ".coverage"


def test_report_formats_and_exit_codes(pytester: pytest.Pytester, data_file: Path) -> None:
    exe = shutil.which("pytest-distcov", path=str(Path(sys.executable).parent))
    assert exe, "console script not installed"
    result = pytester.run(exe, "report", "--format", "term-missing", "--format", "json:c.json")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*shapes/geometry.py*39, 57, 84-88*", "TOTAL*90%*"])
    assert (pytester.path / "c.json").exists()
    result = pytester.run(sys.executable, "-m", "pytest_distcov", "report", "--fail-under", "95")
    assert result.ret == 2
    result.stderr.fnmatch_lines(["*FAIL: total coverage 90% is below the required 95%*"])
    result = pytester.run(sys.executable, "-m", "pytest_distcov", "report", "--fail-under", "90")
    assert result.ret == 0


def test_report_errors_are_one_line(pytester: pytest.Pytester, data_file: Path) -> None:
    bad = pytester.path / "bad.coverage"
    bad.write_bytes(b"nonsense" * 20)
    result = pytester.run(sys.executable, "-m", "pytest_distcov", "report", "--data-file", str(bad))
    assert result.ret == 1
    assert result.stderr.lines == [
        f"pytest-distcov: error: cannot read coverage data file {bad}: file is not a database"
        " (is it a coverage.py data file of this coverage version?)"
    ]
    result = pytester.run(sys.executable, "-m", "pytest_distcov", "report", "--format", "pdf")
    assert result.ret == 1
    assert "unknown report type 'pdf'" in result.stderr.str()
    assert "Traceback" not in result.stderr.str()


def test_command_line_loads_coverage_only_when_needed(pytester: pytest.Pytester) -> None:
    """`combine` starts its reader processes before coverage.py is loaded (it costs 0.07 s)."""
    code = (
        "import sys, pytest_distcov.cli\n"
        "assert 'coverage' not in sys.modules, 'coverage loaded'\n"
        "assert 'multiprocessing' not in sys.modules, 'multiprocessing loaded'\n"
        "from pytest_distcov.sinks.report import REPORT_KINDS\n"
        "from pytest_distcov.cli import _REPORT_KINDS\n"
        "assert _REPORT_KINDS == ', '.join(REPORT_KINDS), _REPORT_KINDS\n"
    )
    result = pytester.run(sys.executable, "-c", code)
    assert result.ret == 0, result.stderr.str()


@pytest.mark.parametrize("branch", [False, True], ids=["lines", "branches"])
def test_report_of_per_test_contexts_says_what_coverage_says(
    pytester: pytest.Pytester, shapes: Path, branch: bool
) -> None:
    """A data file with per-test contexts: the reports that show none (they read the data
    with every context together) say what coverage.py's own reports of the file say, and the
    HTML report shows the contexts; under ``[report] contexts`` only those are reported."""
    import json

    extra = ["--distcov-branch"] if branch else []
    run = run_pytest(pytester, "--distcov", "--distcov-context=test", *extra, "-n", "2")
    assert run.ret == 0, run.stdout.str()
    ours = pytester.run(
        sys.executable, "-m", "pytest_distcov", "report", "--format", "json:ours.json",
        "--format", "html:cov_html", "--format", "term-missing",
    )  # fmt: skip
    assert ours.ret == 0, ours.stderr.str()
    theirs = pytester.run(sys.executable, "-m", "coverage", "json", "-o", "theirs.json")
    assert theirs.ret == 0, theirs.stderr.str()
    got, want = (json.loads((shapes / n).read_text()) for n in ("ours.json", "theirs.json"))
    assert got["files"] == want["files"]
    assert got["totals"] == want["totals"]
    page = next((shapes / "cov_html").glob("*geometry_py.html")).read_text()
    assert "|run" in page  # (contexts shown)
    (shapes / ".coveragerc").write_text("[report]\ncontexts = test_circle\n")
    selected = pytester.run(sys.executable, "-m", "pytest_distcov", "report", "--format", "json")
    assert selected.ret == 0, selected.stderr.str()
    theirs = pytester.run(sys.executable, "-m", "coverage", "json", "-o", "theirs.json")
    assert theirs.ret == 0, theirs.stderr.str()
    got, want = (json.loads((shapes / n).read_text()) for n in ("coverage.json", "theirs.json"))
    assert got["totals"] == want["totals"]
    assert (
        0
        < got["totals"]["covered_lines"]
        < json.loads((shapes / "ours.json").read_text())["totals"]["covered_lines"]
    )  # (what test_circle ran: some of the lines, not none)

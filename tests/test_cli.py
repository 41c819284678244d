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

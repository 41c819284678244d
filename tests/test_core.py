"""The fast core is chosen for the user, said in the header, and never makes coverage warn."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .helpers import run_pytest

SYSMON = sys.version_info >= (3, 12)


def test_line_coverage_core(pytester: pytest.Pytester, shapes: Path) -> None:
    result = run_pytest(pytester, "--distcov", "-n", "2")
    core = "sysmon" if SYSMON else "ctrace"
    result.stdout.fnmatch_lines(
        [f"distcov: measuring lines of *shapes with the {core} core in 2 workers"]
    )
    result.stdout.fnmatch_lines([f"*distcov: 2 workers, the {core} core*"])


def test_branch_coverage_core(pytester: pytest.Pytester, shapes: Path) -> None:
    result = run_pytest(pytester, "--distcov", "--distcov-branch", "-n", "2")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["distcov: measuring lines and branches * with the ctrace core*"])
    if SYSMON and sys.version_info < (3, 14):
        result.stdout.fnmatch_lines(
            ["distcov: sysmon cannot measure branches before Python 3.14: using the ctrace core"]
        )


@pytest.mark.parametrize("how", ["env", "config"])
def test_users_core_choice_is_respected(
    pytester: pytest.Pytester, shapes: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "env":
        monkeypatch.setenv("COVERAGE_CORE", "pytrace")
    else:
        (shapes / ".coveragerc").write_text("[run]\ncore = pytrace\n")
    result = run_pytest(pytester, "--distcov", "-n", "2")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["distcov: measuring * with the pytrace core*"])


@pytest.mark.parametrize("branch", [False, True], ids=["lines", "branches"])
def test_suite_with_filterwarnings_error_passes(
    pytester: pytest.Pytester, shapes: Path, branch: bool
) -> None:
    """A suite run with warnings as errors must not fail because of anything we do."""
    pyproject = shapes / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace(
            "[tool.pytest.ini_options]", '[tool.pytest.ini_options]\nfilterwarnings = ["error"]'
        )
    )
    args = ["--distcov", "-n", "2"] + (["--distcov-branch"] if branch else [])
    result = run_pytest(pytester, *args)
    assert result.ret == 0, result.stdout.str()
    assert "Warning" not in result.stdout.str()


def test_coverage_warnings_become_plain_lines(pytester: pytest.Pytester, shapes: Path) -> None:
    """A package that is never imported: coverage's warning is a terminal line, not an error."""
    pyproject = shapes / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace(
            "[tool.pytest.ini_options]", '[tool.pytest.ini_options]\nfilterwarnings = ["error"]'
        )
    )
    result = run_pytest(pytester, "--distcov", "--distcov-source=nosuchpkg", "-p", "no:xdist")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["distcov: coverage: Module nosuchpkg was never imported.*"])

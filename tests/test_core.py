"""The fast core is chosen for the user, said in the header, and never makes coverage warn."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pytest_distcov.engine.measure import free_threading_note

from .helpers import run_pytest

SYSMON = sys.version_info >= (3, 12)
SYSMON_BRANCHES = sys.version_info >= (3, 14)


def test_line_coverage_core(pytester: pytest.Pytester, shapes: Path) -> None:
    result = run_pytest(pytester, "--distcov", "-n", "2")
    core = "sysmon" if SYSMON else "ctrace"
    result.stdout.fnmatch_lines(
        [f"distcov: measuring lines of *shapes with the {core} core in 2 workers"]
    )
    result.stdout.fnmatch_lines([f"*distcov: 2 workers, the {core} core*"])


def test_branch_coverage_core(pytester: pytest.Pytester, shapes: Path) -> None:
    """sysmon measures branches from Python 3.14 on (BRANCH_LEFT/BRANCH_RIGHT events); on
    3.12 and 3.13 the header says why the slower ctrace core measures them instead."""
    result = run_pytest(pytester, "--distcov", "--distcov-branch", "-n", "2")
    assert result.ret == 0
    core = "sysmon" if SYSMON_BRANCHES else "ctrace"
    result.stdout.fnmatch_lines([f"distcov: measuring lines and branches * with the {core} core*"])
    if SYSMON and not SYSMON_BRANCHES:
        result.stdout.fnmatch_lines(
            ["distcov: sysmon cannot measure branches before Python 3.14: using the ctrace core"]
        )
    else:
        assert "using the" not in result.stdout.str()  # no fallback, so no note


def test_the_header_says_when_the_gil_is_off(pytester: pytest.Pytester, shapes: Path) -> None:
    """No free-threaded build can be installed here: the interpreter's own answer is replaced
    in a conftest (read when the header is made), everything else is a real run."""
    plain = run_pytest(pytester, "--distcov", "-n", "2")
    assert plain.ret == 0
    assert "free-threaded" not in plain.stdout.str()
    (shapes / "conftest.py").write_text("import sys\nsys._is_gil_enabled = lambda: False\n")
    result = run_pytest(pytester, "--distcov", "-n", "2")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "distcov: measuring lines of *",
            "distcov: free-threaded Python with the GIL disabled: coverage.py supports it from"
            " 7.17.0, pytest-distcov is not tested on it (README: Free-threaded Python)",
        ]
    )


@pytest.mark.parametrize(
    ("free_threaded", "gil", "says"),
    [(False, True, ""), (True, False, "GIL disabled"), (True, True, "GIL enabled:")],
)
def test_free_threading_note(free_threaded: bool, gil: bool, says: str) -> None:
    note = free_threading_note(free_threaded=free_threaded, gil=gil)
    assert (says in note) if says else note == ""


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


@pytest.mark.parametrize(
    ("extra", "users_core"),
    [
        ([], None),
        (["--distcov-branch"], None),
        (["--distcov-context=test"], None),
        (["--distcov-context=test", "--distcov-branch"], None),
        (["--distcov-context=test"], "sysmon"),
    ],
    ids=["lines", "branches", "contexts", "contexts-branches", "contexts-users-sysmon"],
)
def test_suite_with_filterwarnings_error_passes(
    pytester: pytest.Pytester,
    shapes: Path,
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    users_core: str | None,
) -> None:
    """A suite run with warnings as errors must not fail because of anything we do.

    Per-test contexts switch coverage's context after every test, which coverage (7.15.3+)
    warns about under sysmon, the default core from Python 3.14: contexts get ctrace there,
    as on 3.12 and 3.13, even when the user asked for sysmon."""
    if users_core:
        monkeypatch.setenv("COVERAGE_CORE", users_core)
    pyproject = shapes / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace(
            "[tool.pytest.ini_options]", '[tool.pytest.ini_options]\nfilterwarnings = ["error"]'
        )
    )
    result = run_pytest(pytester, "--distcov", "-n", "2", *extra)
    assert result.ret == 0, result.stdout.str()
    assert "Warning" not in result.stdout.str()
    assert "arning" not in result.stderr.str()
    if "--distcov-context=test" in extra:
        result.stdout.fnmatch_lines(["distcov: measuring * with the ctrace core*"])


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

"""Every mode gives exactly what one serial `coverage run -m pytest` records."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .helpers import assert_same_data, run_pytest, serial_reference

MODES = {
    "no-xdist": ["-p", "no:xdist"],
    "n0": ["-n", "0"],
    "n1": ["-n", "1"],
    "n2": ["-n", "2"],
    "n3": ["-n", "3"],
}


def _measure_everything(project: Path) -> None:
    """Drop the example's `distcov_source`, so conftest and test modules are measured too."""
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(re.sub(r"distcov_source = .*\n", "", text))


@pytest.mark.parametrize("branch", [False, True], ids=["lines", "branches"])
@pytest.mark.parametrize("mode", MODES)
def test_example_equals_serial_coverage_run(
    pytester: pytest.Pytester, shapes: Path, mode: str, branch: bool
) -> None:
    _measure_everything(shapes)
    reference = serial_reference(pytester, branch=branch)
    args = ["--distcov", *MODES[mode]] + (["--distcov-branch"] if branch else [])
    result = run_pytest(pytester, *args)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*24 passed*"])
    assert_same_data(shapes / ".coverage", reference, arcs=branch)
    # Early start: lines run while conftest and test modules were imported are in the data.
    got = (shapes / ".coverage").read_bytes()
    assert got  # the data file exists and is not empty


def test_conftest_import_lines_are_measured(pytester: pytest.Pytester, shapes: Path) -> None:
    """The `import` and `def` lines of conftest.py run at import time, before any test."""
    from .helpers import measured

    _measure_everything(shapes)
    result = run_pytest(pytester, "--distcov", "-n", "2")
    assert result.ret == 0
    data = measured(shapes / ".coverage", arcs=False)
    conftest = next(f for f in data if f.endswith("tests/conftest.py"))
    assert {1, 3, 6, 7} <= data[conftest]


def test_source_option_limits_measurement(pytester: pytest.Pytester, shapes: Path) -> None:
    reference = serial_reference(pytester, source="shapes")
    result = run_pytest(pytester, "--distcov", "-n", "2")
    assert result.ret == 0
    assert_same_data(shapes / ".coverage", reference)
    from .helpers import measured

    assert all("/shapes/" in f for f in measured(shapes / ".coverage", arcs=False))


HOOKS_CONFTEST = """
import pytest

SEEN = []


def pytest_configure(config):
    SEEN.append("configure")


def pytest_sessionstart(session):
    SEEN.append("sessionstart")


def pytest_collection_modifyitems(items):
    SEEN.append("modifyitems")


def pytest_runtest_logstart(nodeid, location):
    SEEN.append("logstart")


def pytest_runtest_logreport(report):
    if report.when == "call":
        SEEN.append("logreport")


def pytest_runtest_logfinish(nodeid, location):
    SEEN.append("logfinish")


def pytest_report_teststatus(report, config):
    if report.when == "call" and report.passed:
        SEEN.append("teststatus")


def pytest_collectreport(report):
    SEEN.append("collectreport")


def pytest_warning_recorded(warning_message, when, nodeid, location):
    SEEN.append("warning")


def pytest_terminal_summary(terminalreporter):
    SEEN.append("terminal_summary")


def pytest_sessionfinish(session, exitstatus):
    SEEN.append("sessionfinish")


def pytest_unconfigure(config):
    SEEN.append("unconfigure")
"""

HOOK_TESTS = """
import warnings


def test_one():
    warnings.warn("noted", UserWarning)


def test_two():
    assert "two".upper() == "TWO"
"""


@pytest.mark.parametrize("mode", ["n0", "n2", "no-xdist"])
def test_conftest_hooks_measured_as_in_a_serial_run(pytester: pytest.Pytester, mode: str) -> None:
    """Every hook body a serial run executes is measured, in whichever process it ran.

    pytest_unconfigure is the one exception: it runs after the report, so no plugin can
    include it; it is left out of the comparison."""
    pytester.makeconftest(HOOKS_CONFTEST)
    pytester.makepyfile(test_hooks=HOOK_TESTS)
    reference = serial_reference(pytester)
    result = run_pytest(pytester, "--distcov", *MODES[mode])
    assert result.ret == 0, result.stdout.str()
    from .helpers import measured

    got = measured(pytester.path / ".coverage", arcs=False)
    want = measured(reference, arcs=False)
    conftest = str(pytester.path / "conftest.py")
    unconfigure_body = {max(want[conftest])}
    assert got[conftest] == want[conftest] - unconfigure_body
    test_file = str(pytester.path / "test_hooks.py")
    assert got[test_file] == want[test_file]

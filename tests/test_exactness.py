"""Every mode gives exactly what one serial `coverage run -m pytest` records."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from .helpers import (
    assert_same_data,
    assert_same_report,
    measured,
    per_worker_reference,
    report_view,
    run_pytest,
    serial_reference,
    sysmon_branches,
)

MODES = {
    "no-xdist": ["-p", "no:xdist"],
    "n0": ["-n", "0"],
    "n1": ["-n", "1"],
    "n2": ["-n", "2"],
    "n3": ["-n", "3"],
}
MULTI_WORKER = ("n2", "n3")


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
    """Several workers measuring branches with sysmon (Python 3.14+) are compared with the
    union of one serial run per worker, each of that worker's tests in its order: what
    coverage.py's sysmon core records depends on the order in which code first runs in a
    process (see :func:`~tests.helpers.per_worker_reference`), so no parallel run can equal
    one serial run there. The ctrace core, which records every transition, is compared with
    one serial run on every Python (test_example_branches_with_ctrace_equal_serial_run)."""
    _measure_everything(shapes)
    args = ["--distcov", "-v", *MODES[mode]] + (["--distcov-branch"] if branch else [])
    result = run_pytest(pytester, *args)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*24 passed*"])
    if sysmon_branches(result) and mode in MULTI_WORKER:
        reference = per_worker_reference(pytester, result)
    else:
        reference = serial_reference(pytester, branch=branch)
    assert_same_data(shapes / ".coverage", reference, arcs=branch)
    # Early start: lines run while conftest and test modules were imported are in the data.
    got = (shapes / ".coverage").read_bytes()
    assert got  # the data file exists and is not empty


@pytest.mark.parametrize("mode", MULTI_WORKER)
def test_example_branches_with_ctrace_equal_serial_run(
    pytester: pytest.Pytester, shapes: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """With a core whose arcs do not depend on the order tests run in (ctrace records every
    transition), several workers' branches equal one serial run's, on every Python. Before
    3.14 ctrace is the default for branches and this repeats the test above."""
    monkeypatch.setenv("COVERAGE_CORE", "ctrace")
    _measure_everything(shapes)
    reference = serial_reference(pytester, branch=True)
    result = run_pytest(pytester, "--distcov", "--distcov-branch", *MODES[mode])
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["distcov: measuring lines and branches * the ctrace core*"])
    assert_same_data(shapes / ".coverage", reference, arcs=True)


@pytest.mark.parametrize("mode", ["no-xdist", "n2"])
def test_example_with_branch_markers_reports_as_the_c_tracer(
    pytester: pytest.Pytester, shapes: Path, mode: str
) -> None:
    """The engine ``auto`` picks for branches (branch markers: sys.monitoring line events on
    3.12+, SlipCover's probes on 3.10/3.11): every file of the example, its conftest and test
    modules included, reports as a serial ``coverage run --branch`` on the C tracer does."""
    if sys.version_info < (3, 12):
        pytest.importorskip("slipcover", reason="branch markers on 3.10/3.11 need the fast extra")
    _measure_everything(shapes)
    reference = serial_reference(pytester, branch=True, core="ctrace")
    args = ["--distcov", "--distcov-branch", "--distcov-engine=auto", *MODES[mode]]
    result = run_pytest(pytester, *args)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["distcov: measuring lines and branches * with branch markers *"])
    assert "coverage.py's tracer instead" not in result.stdout.str()
    assert_same_report(shapes / ".coverage", reference, shapes)


#: Numbered as the assertions below read it: mix is lines 4-9, make lines 12-15.
ORDER_MODULE = """\
PRIMARY = {"red": 1, "green": 2}


def mix(first, second):
    try:
        a, b = PRIMARY[first], PRIMARY[second]
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    return a + b


def make(flag):
    if flag:
        class Made: pass
    return 1
"""

ORDER_TESTS = """\
import pytest
from order_mod import make, mix


def test_mix():
    assert mix("red", "green") == 3


def test_mix_unknown():
    with pytest.raises(ValueError):
        mix("red", "purple")


def test_make_false():
    assert make(False) == 1


def test_make_true():
    assert make(True) == 1
"""

REVERSE_CONFTEST = """\
import os


def pytest_collection_modifyitems(items):
    if os.environ.get("REVERSE_ORDER"):
        items.reverse()
"""


@pytest.mark.skipif(sys.version_info < (3, 14), reason="sysmon measures branches from 3.14")
def test_sysmon_arcs_depend_on_test_order(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why several workers measuring branches with sysmon are not compared with one serial
    run: coverage.py alone, with no pytest-distcov, records different arcs for the same tests
    in the opposite order, and even reports a branch partial in one order and complete in the
    other. sysmon adds an arc from the last line whose LINE event fired in the same code
    object, and each LINE event is disabled after its first firing (coverage/sysmon.py,
    sysmon_line_arcs, coverage 7.17.1+). Found with coverage 7.18.0 on Python 3.14.10 and
    3.15.2. If this starts failing, coverage.py no longer depends on the order, and
    per_worker_reference can give way to one serial run again."""
    for name, text in [
        ("order_mod.py", ORDER_MODULE),
        ("test_order.py", ORDER_TESTS),
        ("conftest.py", REVERSE_CONFTEST),
    ]:
        (pytester.path / name).write_text(text)
    monkeypatch.setenv("COVERAGE_CORE", "sysmon")
    runs = {}
    for order in ("forward", "backward"):
        if order == "backward":
            monkeypatch.setenv("REVERSE_ORDER", "1")
        data = serial_reference(pytester, branch=True, source="order_mod")
        runs[order] = data.rename(pytester.path / f"{order}.coverage")
    [forward] = measured(runs["forward"], arcs=True).values()
    [backward] = measured(runs["backward"], arcs=True).values()
    # Recorded only when the raising call is the first to reach line 7 (the except) and the
    # class is made before line 15 was first reached: both real, as ctrace records them.
    assert {(6, 7), (14, 15)} <= backward - forward
    # Recorded only when the succeeding call is the first to reach line 9: real too.
    assert (6, 9) in forward - backward
    # Never executed: line 8 raises. Line 9 was the next line to fire its first LINE event.
    assert (8, 9) in backward - forward
    # What the user sees: forward, line 14 did not jump to 15 (it did); backward, all taken.
    module = os.path.realpath(pytester.path / "order_mod.py")
    assert report_view(runs["forward"], pytester.path)[module]["missing_branches"] == [[14, 15]]
    assert report_view(runs["backward"], pytester.path)[module]["missing_branches"] == []


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

"""`[run] patch = subprocess`: data of processes started by tests in workers is combined too."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from .helpers import assert_same_data, assert_same_report, measured, run_pytest, serial_reference

#: The engine auto measures lines with here: coverage.py's sysmon core from 3.12, before that
#: probes where installed (which hand the configuration on as coverage.py would).
ENGINE = (
    "the sysmon core"
    if sys.version_info >= (3, 12)
    else "SlipCover's probes"
    if importlib.util.find_spec("slipcover")
    else "the ctrace core"
)

CHILD = """
import sys


def child(n):
    if n > 2:
        return "big"
    return "small"


def parent_only():
    return "parent"


if __name__ == "__main__":
    print(child(int(sys.argv[1])))
"""

TESTS = """
import subprocess
import sys

import child


def test_in_subprocess_big():
    out = subprocess.run([sys.executable, "child.py", "5"], capture_output=True, text=True)
    assert out.stdout.strip() == "big"


def test_in_subprocess_small():
    out = subprocess.run([sys.executable, "child.py", "1"], capture_output=True, text=True)
    assert out.stdout.strip() == "small"


def test_parent():
    assert child.parent_only() == "parent"
"""


@pytest.mark.parametrize("mode", [["-n", "2"], ["-n", "0"]], ids=["xdist", "in-process"])
def test_subprocess_data_is_combined(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, mode: list[str]
) -> None:
    monkeypatch.delenv("DISTCOV_ENGINE")  # auto: the engine this Python measures lines with
    pytester.makepyfile(child=CHILD, test_child=TESTS)
    (pytester.path / "pytest.ini").write_text("[pytest]\npythonpath = .\n")
    (pytester.path / ".coveragerc").write_text(
        "[run]\npatch = subprocess\nsource = .\nomit = test_*\n"
    )
    reference = serial_reference(pytester)
    result = run_pytest(pytester, "--distcov", *mode)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines([f"distcov: measuring lines of * with {ENGINE}*"])
    assert_same_data(pytester.path / ".coverage", reference)
    lines = measured(pytester.path / ".coverage", arcs=False)[str(pytester.path / "child.py")]
    assert {5, 6, 7, 15} <= lines  # only ever run in the subprocesses
    assert not list(pytester.path.glob(".coverage.*"))  # nothing left for coverage to combine


@pytest.mark.skipif(
    sys.version_info < (3, 12) and not importlib.util.find_spec("slipcover"),
    reason="branch markers: 3.12+, or probes",
)
def test_subprocess_branches_with_markers(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Branch markers in the workers, coverage.py in their subprocesses: the combined report
    equals a serial ``coverage run --branch``'s, the subprocesses' branches included."""
    monkeypatch.delenv("DISTCOV_ENGINE")
    pytester.makepyfile(child=CHILD, test_child=TESTS)
    (pytester.path / "pytest.ini").write_text("[pytest]\npythonpath = .\n")
    (pytester.path / ".coveragerc").write_text(
        "[run]\npatch = subprocess\nsource = .\nomit = test_*\nbranch = true\n"
    )
    reference = serial_reference(pytester, branch=True, core="ctrace")
    result = run_pytest(pytester, "--distcov", "-n", "2")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["distcov: measuring lines and branches*branch markers*"])
    assert_same_report(pytester.path / ".coverage", reference, pytester.path)
    assert not list(pytester.path.glob(".coverage.*"))


def test_corrupt_subprocess_file_is_named_kept_and_the_rest_combined(
    pytester: pytest.Pytester, private_tmp: Path
) -> None:
    pytester.makepyfile(child=CHILD, test_child=TESTS)
    pytester.makepyfile(
        test_zz_corrupt="""
import glob, os, tempfile


def test_leave_a_corrupt_file():
    worker = os.environ["PYTEST_XDIST_WORKER"]
    [d] = glob.glob(tempfile.gettempdir() + "/distcov-" + worker + "-*")
    with open(os.path.join(d, ".coverage.fake.pid1.Xbadx"), "wb") as f:
        f.write(b"not a database" * 100)
"""
    )
    (pytester.path / "pytest.ini").write_text("[pytest]\npythonpath = .\n")
    (pytester.path / ".coveragerc").write_text(
        "[run]\npatch = subprocess\nsource = .\nomit = test_*\n"
    )
    result = run_pytest(pytester, "--distcov", "-n", "2")
    assert result.ret == 0, result.stdout.str()
    assert "Traceback" not in result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "distcov: [[]gw*[]] cannot read coverage data file *.coverage.fake.pid1.Xbadx*"
            "kept for inspection"
        ]
    )
    assert "crashed" not in result.stdout.str()  # the worker still finished cleanly
    lines = measured(pytester.path / ".coverage", arcs=False)[str(pytester.path / "child.py")]
    assert {5, 6, 7, 15} <= lines  # the good subprocess files were combined
    assert len(list(private_tmp.glob("distcov-gw*/.coverage.fake.pid1.Xbadx"))) == 1

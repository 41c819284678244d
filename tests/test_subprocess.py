"""`[run] patch = subprocess`: data of processes started by tests in workers is combined too."""

from __future__ import annotations

import pytest

from .helpers import assert_same_data, measured, run_pytest, serial_reference

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
def test_subprocess_data_is_combined(pytester: pytest.Pytester, mode: list[str]) -> None:
    pytester.makepyfile(child=CHILD, test_child=TESTS)
    (pytester.path / "pytest.ini").write_text("[pytest]\npythonpath = .\n")
    (pytester.path / ".coveragerc").write_text(
        "[run]\npatch = subprocess\nsource = .\nomit = test_*\n"
    )
    reference = serial_reference(pytester)
    result = run_pytest(pytester, "--distcov", *mode)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    assert_same_data(pytester.path / ".coverage", reference)
    lines = measured(pytester.path / ".coverage", arcs=False)[str(pytester.path / "child.py")]
    assert {5, 6, 7, 15} <= lines  # only ever run in the subprocesses
    assert not list(pytester.path.glob(".coverage.*"))  # nothing left for coverage to combine

"""Code bases of thousands of files, as a fresh CI checkout sees them (no pytest cache)."""

from __future__ import annotations

import pytest

from .helpers import (
    ROOT,
    assert_same_data,
    measured,
    order_independent_arcs,
    run_pytest,
    run_python,
    serial_reference,
)
from .test_preparse import _pipe_capacity


@pytest.mark.slow
@pytest.mark.parametrize("branch", [False, True], ids=["lines", "branches"])
def test_thousands_of_modules_with_an_empty_cache_finish_exact(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, branch: bool
) -> None:
    """1,500 measured modules whose names and parses overflow every pipe between the
    controller and its parse helper: the run ends (it used to hang after its last test) and
    equals a serial `coverage run`."""
    if branch:  # two workers against one serial run
        order_independent_arcs(monkeypatch)
    project = pytester.path / ("a-ci-checkout-" * 4)
    generator = str(ROOT / "benchmarks" / "bigproject.py")
    run_python(generator, str(project), "--modules=1500", "--tests=20", "--imports=200")
    monkeypatch.chdir(project)  # pytester's runs start in the current directory
    branch_args = ["--distcov-branch"] if branch else []
    reference = serial_reference(pytester, branch=branch, source="pkg")
    result = run_pytest(pytester, "--distcov", "-n", "2", "--distcov-source=pkg", *branch_args)
    assert result.ret == 0, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["TOTAL *", "*20 passed*"])
    assert_same_data(project / ".coverage", reference, arcs=branch)
    files = measured(project / ".coverage", arcs=branch)
    assert len(files) >= 1500
    assert sum(len(name) + 1 for name in files) > 2 * _pipe_capacity()

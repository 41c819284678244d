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

"""Helpers for acceptance tests: real pytest sessions in subprocesses, exact data comparison.

Every acceptance test runs pytest in a subprocess (``pytester.runpytest_subprocess``) so the
plugin under test owns its process's tracer; data files are compared with coverage's public
``CoverageData`` API.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from coverage import CoverageData

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "shapes"

#: Seconds any single pytest subprocess may take before the test fails instead of hanging.
RUN_TIMEOUT = 240


def run_pytest(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest in a subprocess, in ``pytester.path``."""
    return pytester.runpytest_subprocess(*args, timeout=RUN_TIMEOUT)


def serial_reference(
    pytester: pytest.Pytester, *pytest_args: str, branch: bool = False, source: str | None = None
) -> Path:
    """``coverage run -m pytest`` of the same suite: the result every mode must equal."""
    data = pytester.path / "serial.coverage"
    cmd = [sys.executable, "-m", "coverage", "run", f"--data-file={data}"]
    if branch:
        cmd.append("--branch")
    if source:
        cmd.append(f"--source={source}")
    cmd += ["-m", "pytest", "-p", "no:distcov", "-p", "no:xdist", "-p", "no:cacheprovider"]
    result = pytester.run(*cmd, *pytest_args, timeout=RUN_TIMEOUT)
    assert result.ret in (0, 1), result.stdout.str() + result.stderr.str()
    if list(pytester.path.glob("serial.coverage.*")):  # parallel files, e.g. patch = subprocess
        combined = pytester.run(
            sys.executable, "-m", "coverage", "combine", f"--data-file={data}", timeout=RUN_TIMEOUT
        )
        assert combined.ret == 0, combined.stdout.str() + combined.stderr.str()
    assert data.exists()
    return data


@dataclass
class DataDiff:
    only_left: dict[str, list[object]]
    only_right: dict[str, list[object]]
    files_only_left: list[str]
    files_only_right: list[str]

    def __bool__(self) -> bool:
        return bool(
            self.only_left or self.only_right or self.files_only_left or self.files_only_right
        )


def load(path: Path | str) -> CoverageData:
    data = CoverageData(basename=str(path))
    data.read()
    return data


def measured(path: Path | str, *, arcs: bool) -> dict[str, set[object]]:
    data = load(path)
    try:
        if arcs:
            assert data.has_arcs(), f"{path} has no arc data"
        out: dict[str, set[object]] = {}
        for f in data.measured_files():
            items = data.arcs(f) if arcs else data.lines(f)
            out[os.path.realpath(f)] = set(items or [])
        return out
    finally:
        data.close(force=True)


def diff_data(left: Path | str, right: Path | str, *, arcs: bool = False) -> DataDiff:
    """File by file, line by line (arc by arc) difference of two data files."""
    a, b = measured(left, arcs=arcs), measured(right, arcs=arcs)
    only_left = {f: sorted(a[f] - b[f], key=str) for f in a.keys() & b.keys() if a[f] - b[f]}
    only_right = {f: sorted(b[f] - a[f], key=str) for f in a.keys() & b.keys() if b[f] - a[f]}
    return DataDiff(only_left, only_right, sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys()))


def assert_same_data(got: Path | str, want: Path | str, *, arcs: bool = False) -> None:
    diff = diff_data(got, want, arcs=arcs)
    assert not diff, f"combined data differs from the reference: {diff}"
    assert measured(got, arcs=arcs), "no data at all"

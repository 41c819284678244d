"""Exactness on a test suite written by somebody else: a pinned sdist from PyPI with its tests.

The sdist is downloaded once (pip, from PyPI) into pytest's cache directory.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from .helpers import (
    assert_same_data,
    per_worker_reference,
    run_pytest,
    serial_reference,
    sysmon_branches,
)

SDIST = "more-itertools==10.7.0"
# test_primes and test_large run for a minute under any tracer; the rest takes seconds.
TESTS = ("tests/test_recipes.py", "-k", "not test_primes and not test_large")

pytestmark = pytest.mark.slow


def fetch_sdist(config: pytest.Config, factory: pytest.TempPathFactory, requirement: str) -> Path:
    """A pinned sdist from PyPI (``name==version``), downloaded once into pytest's cache."""
    cache = getattr(config, "cache", None)  # absent with -p no:cacheprovider
    where = cache.mkdir("distcov-sdists") if cache else factory.mktemp("sdists")
    name, _, version = requirement.partition("==")
    names = {f"{name.replace('-', '_')}-{version}.tar.gz", f"{name}-{version}.tar.gz"}

    def cached() -> list[Path]:
        return sorted(p for p in where.glob("*.tar.gz") if p.name in names)

    found = cached()
    if not found:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                str(where),
                requirement,
            ],
            check=True,
        )
        found = cached()
    return found[0]


def unpack_suite(pytester: pytest.Pytester, sdist: Path) -> Path:
    """The sdist's tree as the test's project directory (package and tests at the top)."""
    with tarfile.open(sdist) as tar:
        tar.extractall(pytester.path, filter="data")
    root = pytester.path / sdist.name.removesuffix(".tar.gz")
    pytester.chdir()
    for item in root.iterdir():
        item.rename(pytester.path / item.name)
    (pytester.path / "pytest.ini").write_text("[pytest]\npythonpath = .\n")
    return pytester.path


@pytest.fixture(scope="session")
def sdist(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fetch_sdist(pytestconfig, tmp_path_factory, SDIST)


@pytest.fixture
def suite(pytester: pytest.Pytester, sdist: Path) -> Path:
    return unpack_suite(pytester, sdist)


@pytest.mark.parametrize("branch", [False, True], ids=["lines", "branches"])
def test_more_itertools_equals_serial_coverage_run(
    pytester: pytest.Pytester, suite: Path, branch: bool
) -> None:
    """Several workers measuring branches with sysmon (Python 3.14+) are compared with one
    serial run per worker, of its tests in its order: sysmon's arcs depend on the order in
    which code first runs in a process (see per_worker_reference and
    test_exactness.test_sysmon_arcs_depend_on_test_order)."""
    reference = serial_reference(pytester, *TESTS, branch=branch, source="more_itertools")
    for mode in (["-n", "0"], ["-n", "2"], ["-n", "3"]):
        args = ["--distcov", "--distcov-source=more_itertools", "--distcov-report=", "-v", *mode]
        if branch:
            args.append("--distcov-branch")
        result = run_pytest(pytester, *args, *TESTS)
        assert result.ret == 0, result.stdout.str()[-3000:]
        want = reference
        if sysmon_branches(result) and mode != ["-n", "0"]:
            want = per_worker_reference(pytester, result, *TESTS, source="more_itertools")
        assert_same_data(suite / ".coverage", want, arcs=branch)

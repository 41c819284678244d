"""Fixtures shared by the tests; the helpers they use live in ``tests/helpers.py``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .helpers import EXAMPLE
from .sshlab import SshLab, build_lab, lab_unavailable

# A run under test must not believe it is an xdist worker of the run testing it.
_SCRUB = (
    "PYTEST_XDIST_WORKER",
    "PYTEST_XDIST_WORKER_COUNT",
    "PYTEST_XDIST_TESTRUNUID",
    "COVERAGE_PROCESS_START",
    "COVERAGE_PROCESS_CONFIG",
    "COVERAGE_CORE",
    "COVERAGE_FILE",
    "COVERAGE_RCFILE",
    "PYTEST_ADDOPTS",
    "GITHUB_STEP_SUMMARY",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _SCRUB:
        monkeypatch.delenv(name, raising=False)
    # coverage.py's cores, whose raw data the tests compare with `coverage run`'s; the probe
    # engine's tests (test_probes.py) choose it explicitly and compare reports instead.
    monkeypatch.setenv("DISTCOV_ENGINE", "coverage")


@pytest.fixture(autouse=True)
def _home_beside_the_project(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """pytester makes the project's directory HOME too, and ``--distcov-remote`` refuses a
    rootdir that is the home directory (it would ship all of it): a test with ssh hosts gets a
    home of its own, beside the project."""
    if "sshlab" in request.fixturenames and "pytester" in request.fixturenames:
        request.getfixturevalue("pytester")  # which sets HOME first
        monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture
def shapes(pytester: pytest.Pytester) -> Path:
    """A copy of the example project in the test's directory."""
    shutil.copytree(EXAMPLE, pytester.path, dirs_exist_ok=True, ignore=_ignore_generated)
    return pytester.path


def _ignore_generated(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if n in {"__pycache__", ".pytest_cache"} or n.startswith(".coverage")]


@pytest.fixture(scope="session")
def sshlab(tmp_path_factory: pytest.TempPathFactory) -> SshLab:
    """Real ssh hosts (see tests/sshlab.py). In CI a missing lab is a failure, not a skip."""
    why = lab_unavailable()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"ssh lab unavailable in CI: {why}")
        pytest.skip(f"ssh lab unavailable: {why}")
    return build_lab(tmp_path_factory.mktemp("sshlab"))


@pytest.fixture
def private_tmp(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The run's temp dir (worker data files live there) is this test's own."""
    tmp = pytester.path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    return tmp

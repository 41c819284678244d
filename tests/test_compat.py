"""pytest-cov beside pytest-distcov: no two tracers, and pytest-cov's no_cover still works."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import measured, run_pytest

NO_COVER_SUITE = """
import pytest

import mod


@pytest.mark.no_cover
def test_marked():
    assert mod.only_marked() == 1


def test_fixture(no_cover):
    assert mod.only_fixture() == 2


def test_plain():
    assert mod.plain() == 3
"""

MOD = """
def only_marked():
    return 1


def only_fixture():
    return 2


def plain():
    return 3
"""


@pytest.fixture
def no_cover_project(pytester: pytest.Pytester) -> Path:
    pytester.makepyfile(mod=MOD, test_nc=NO_COVER_SUITE)
    (pytester.path / "pytest.ini").write_text("[pytest]\npythonpath = .\n")
    return pytester.path


@pytest.mark.parametrize("mode", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist", "in-process"])
@pytest.mark.parametrize("with_pytest_cov", [True, False], ids=["pytest-cov", "no-pytest-cov"])
def test_no_cover_marker_and_fixture(
    pytester: pytest.Pytester, no_cover_project: Path, mode: list[str], with_pytest_cov: bool
) -> None:
    extra = [] if with_pytest_cov else ["-p", "no:pytest_cov"]
    result = run_pytest(
        pytester, "--strict-markers", "--distcov", "--distcov-source=mod", *mode, *extra
    )
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*3 passed*"])
    lines = measured(no_cover_project / ".coverage", arcs=False)[str(no_cover_project / "mod.py")]
    assert 10 in lines  # plain() body
    assert 2 not in lines
    assert 6 not in lines


def test_cov_and_distcov_together_is_a_usage_error(pytester: pytest.Pytester, shapes: Path) -> None:
    result = run_pytest(pytester, "--cov=shapes", "--distcov", "-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "distcov: --cov (pytest-cov) and --distcov both measure coverage" in err
    assert "Traceback" not in err


def test_pytest_cov_alone_is_untouched(pytester: pytest.Pytester, shapes: Path) -> None:
    result = run_pytest(pytester, "--cov=shapes", "-n", "2")
    assert result.ret == 0
    assert "distcov:" not in result.stdout.str()

"""Options and ini keys: precedence, and a clear one-line error for every bad value."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from .helpers import measured, run_pytest


def _assert_clean_usage_error(result: pytest.RunResult, *needles: str) -> None:
    err = result.stderr.str() + result.stdout.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, err
    assert "Traceback" not in err, err
    lines = [ln for ln in result.stderr.lines if "distcov" in ln]
    assert 1 <= len(lines) <= 2, result.stderr.lines
    for needle in needles:
        assert needle in lines[0], (needle, lines)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def existing_data(pytester: pytest.Pytester, shapes: Path) -> Path:
    """A data file from an earlier run, which a bad run must leave untouched."""
    assert run_pytest(pytester, "--distcov", "-n", "0").ret == 0
    return shapes / ".coverage"


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--distcov-fail-under=abc"], ["'abc'", "--distcov-fail-under", "0 to 100"]),
        (["--distcov-fail-under=150"], ["'150'", "--distcov-fail-under"]),
        (["--distcov-fail-under=-1"], ["'-1'", "--distcov-fail-under"]),
        (["--distcov-report=bogus"], ["'bogus'", "--distcov-report", "term-missing"]),
        (["--distcov-report=term:foo"], ["'term:foo'", "skip-covered"]),
        (["--distcov-report=html:"], ["'html:'", "destination"]),
        (["--distcov-config=missing.cfg"], ["missing.cfg", "--distcov-config", "does not exist"]),
        (["--distcov-stream-interval=soon"], ["'soon'", "--distcov-stream-interval"]),
    ],
)
def test_bad_option_is_a_clear_usage_error(
    pytester: pytest.Pytester, existing_data: Path, args: list[str], needles: list[str]
) -> None:
    before = _digest(existing_data)
    result = run_pytest(pytester, "--distcov", "-n", "2", *args)
    _assert_clean_usage_error(result, *needles)
    assert _digest(existing_data) == before


@pytest.mark.parametrize(
    ("ini", "needles"),
    [
        ("distcov_fail_under = lots", ["distcov_fail_under", "pytest.ini"]),
        ("distcov_fail_under = 101", ["101", "distcov_fail_under in pytest.ini"]),
        ("distcov_branch = maybe", ["distcov_branch in pytest.ini", "maybe"]),
        ("distcov_report = xml:", ["distcov_report in pytest.ini"]),
    ],
)
def test_bad_ini_value_names_the_key_and_file(
    pytester: pytest.Pytester, shapes: Path, ini: str, needles: list[str]
) -> None:
    (shapes / "pytest.ini").write_text(f"[pytest]\npythonpath = .\ndistcov = true\n{ini}\n")
    _assert_clean_usage_error(run_pytest(pytester), *needles)


def test_broken_coverage_config_is_named(pytester: pytest.Pytester, existing_data: Path) -> None:
    before = _digest(existing_data)
    (pytester.path / ".coveragerc").write_text("[run]\nbranch = perhaps\n")
    result = run_pytest(pytester, "--distcov", "-n", "2")
    _assert_clean_usage_error(result, ".coveragerc")
    assert _digest(existing_data) == before


def test_unreadable_data_file_with_append_is_refused_and_kept(
    pytester: pytest.Pytester, shapes: Path
) -> None:
    bad = shapes / ".coverage"
    bad.write_bytes(b"this is no coverage data" * 10)
    before = _digest(bad)
    result = run_pytest(pytester, "--distcov", "--distcov-append", "-n", "2")
    _assert_clean_usage_error(result, ".coverage", "cannot read")
    assert _digest(bad) == before


def test_append_of_other_kind_is_refused(pytester: pytest.Pytester, existing_data: Path) -> None:
    result = run_pytest(pytester, "--distcov", "--distcov-append", "--distcov-branch")
    _assert_clean_usage_error(result, "line data", "branches")


def test_append_adds_to_existing_data(pytester: pytest.Pytester, shapes: Path) -> None:
    assert run_pytest(pytester, "--distcov", "-n", "2", "-k", "palette").ret == 0
    first = measured(shapes / ".coverage", arcs=False)
    # geometry.py: only its import-time lines (class and def statements) so far
    assert len(next(v for f, v in first.items() if f.endswith("geometry.py"))) < 40
    assert (
        run_pytest(pytester, "--distcov", "--distcov-append", "-n", "2", "-k", "geometry").ret == 0
    )
    both = measured(shapes / ".coverage", arcs=False)
    for f, lines in first.items():
        assert lines <= both[f]
    geometry = next(v for f, v in both.items() if f.endswith("geometry.py"))
    assert len(geometry) > 50


def test_without_append_the_data_file_is_replaced(pytester: pytest.Pytester, shapes: Path) -> None:
    assert run_pytest(pytester, "--distcov", "-k", "geometry").ret == 0
    assert run_pytest(pytester, "--distcov", "-k", "palette").ret == 0
    data = measured(shapes / ".coverage", arcs=False)
    geometry = next(v for f, v in data.items() if f.endswith("geometry.py"))
    assert len(geometry) < 40  # only import-time lines: the geometry tests did not run this time


def test_off_by_default_and_no_distcov_wins_over_ini(
    pytester: pytest.Pytester, shapes: Path
) -> None:
    result = run_pytest(pytester)
    assert result.ret == 0
    assert "distcov:" not in result.stdout.str()
    assert not (shapes / ".coverage").exists()
    pyproject = shapes / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace(
            "[tool.pytest.ini_options]", "[tool.pytest.ini_options]\ndistcov = true"
        )
    )
    assert "distcov: measuring" in run_pytest(pytester, "-n", "2").stdout.str()
    result = run_pytest(pytester, "-n", "2", "--no-distcov")
    assert "distcov:" not in result.stdout.str()
    assert result.ret == 0


@pytest.mark.parametrize("inifile", ["pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml"])
def test_every_ini_file_kind_works(pytester: pytest.Pytester, shapes: Path, inifile: str) -> None:
    (shapes / "pyproject.toml").unlink()
    section = {"pytest.ini": "[pytest]", "tox.ini": "[pytest]", "setup.cfg": "[tool:pytest]"}
    if inifile == "pyproject.toml":
        text = (
            '[tool.pytest.ini_options]\npythonpath = ["."]\ndistcov = true\n'
            'distcov_source = ["shapes"]\ndistcov_report = ["term-missing"]\n'
            "distcov_fail_under = 99\ndistcov_branch = true\n"
        )
    else:
        text = (
            f"{section[inifile]}\npythonpath = .\ndistcov = true\ndistcov_source = shapes\n"
            "distcov_report = term-missing\ndistcov_fail_under = 99\ndistcov_branch = true\n"
        )
    (shapes / inifile).write_text(text)
    result = run_pytest(pytester, "-n", "2")
    out = result.stdout.str()
    assert "distcov: measuring lines and branches" in out
    assert "Missing" in out  # term-missing
    result.stdout.fnmatch_lines(["*FAIL: total coverage *% is below the required 99%*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_command_line_wins_over_ini_over_coverage_config(
    pytester: pytest.Pytester, shapes: Path
) -> None:
    (shapes / ".coveragerc").write_text("[run]\nbranch = true\n[report]\nfail_under = 99\n")
    # coverage config alone: branches on, fail-under 99 -> fails
    result = run_pytest(pytester, "--distcov", "-n", "2")
    assert "lines and branches" in result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # ini beats coverage config
    pyproject = shapes / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace(
            "[tool.pytest.ini_options]",
            "[tool.pytest.ini_options]\ndistcov_fail_under = 50\ndistcov_branch = false",
        )
    )
    result = run_pytest(pytester, "--distcov", "-n", "2")
    assert "measuring lines of" in result.stdout.str()
    assert result.ret == 0
    # command line beats ini
    result = run_pytest(
        pytester, "--distcov", "-n", "2", "--distcov-fail-under=99.5", "--distcov-branch"
    )
    assert "lines and branches" in result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_plugin_can_be_disabled_with_p_no(pytester: pytest.Pytester, shapes: Path) -> None:
    result = run_pytest(pytester, "-p", "no:distcov", "-n", "2")
    assert result.ret == 0
    result = run_pytest(pytester, "-p", "no:distcov", "--distcov")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unrecognized arguments: --distcov" in result.stderr.str()

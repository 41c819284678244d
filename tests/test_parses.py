"""Parses kept across runs: reports of unchanged sources restore them instead of parsing, and
say exactly what coverage.py says; any change to what a parse depends on parses again."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from coverage import Coverage
from coverage.parser import PythonParser

from pytest_distcov.sinks.parses import ParseCache
from pytest_distcov.sinks.report import parse_report_spec, produce_reports

from .helpers import run_pytest

#: Multi-line statements, a decorator, an excluded block, a docstring, a ``with`` (whose exits
#: coverage.py fixes up), a loop and branches taken one way only: what a parse must get right.
MODULE = '''\
"""A module."""
import functools


def grade(n):
    """Say how big."""
    if n > 100:
        return "huge"
    if n > 10:
        return "big"
    if n < 0:  # pragma: no cover
        return "negative"
    return (
        "small"
        if n
        else "zero"
    )


@functools.lru_cache(
    maxsize=None,
)
def total(items):
    acc = 0
    for i in items:
        with open(__file__) as f:
            acc += i
    return acc


VALUES = [
    grade(11),
    grade(0),
    total((1, 2)),
]
'''
OTHER = "VALUE = 1\n\n\ndef unused():\n    return VALUE\n"
REPORTS = ("term-missing", "xml:x.xml", "json:x.json", "lcov:x.lcov", "html:html")


def _measure(root: Path, *, branch: bool) -> None:
    """A real coverage.py measurement of the two modules (a .coverage in ``root``)."""
    (root / "main.py").write_text("import mod, other\n")
    cmd = [sys.executable, "-m", "coverage", "run", "--include=mod.py,other.py"]
    subprocess.run([*cmd, *(["--branch"] if branch else []), "main.py"], cwd=root, check=True)


def _outputs(root: Path) -> dict[str, str]:
    """What the file reports say (html: the module's page, without its timestamp)."""
    page = (root / "html" / "mod_py.html").read_text()
    return {
        "xml": re.sub(r' timestamp="\d+"', "", (root / "x.xml").read_text()),
        "json": json.dumps(json.loads((root / "x.json").read_text())["files"], sort_keys=True),
        "lcov": (root / "x.lcov").read_text(),
        "html": re.sub(r"created at [^<]*", "", page),
    }


def _coverage_says(root: Path) -> tuple[str, dict[str, str]]:
    """coverage.py's own reports of the data in ``root`` (its warnings ignored: ours become
    notes)."""
    cov = Coverage()
    cov.load()
    term = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cov.report(file=term, show_missing=True)
        cov.xml_report(outfile="x.xml")
        cov.json_report(outfile="x.json")
        cov.lcov_report(outfile="x.lcov")
        cov.html_report(directory="html")
    return term.getvalue(), _outputs(root)


def _ours(root: Path, cache: Path) -> tuple[str, dict[str, str], list[str]]:
    """Our reports of the same data with a cache at ``cache``, and the files parsed."""
    parsed: list[str] = []
    original = PythonParser.parse_source

    def counting(self: PythonParser) -> None:
        parsed.append(Path(self.filename).name)
        original(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PythonParser, "parse_source", counting)
        cov = Coverage()
        cov.load()
        term = io.StringIO()
        specs = [parse_report_spec(s) for s in REPORTS]
        produce_reports(cov, specs, term, need_total=True, parse_cache=ParseCache(cache))
    return term.getvalue(), _outputs(root), sorted(parsed)


def make_project(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The two modules in ``root``, the current directory."""
    monkeypatch.chdir(root)
    (root / "mod.py").write_text(MODULE)
    (root / "other.py").write_text(OTHER)
    return root


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return make_project(tmp_path, monkeypatch)


@pytest.mark.parametrize("branch", [False, True], ids=["lines", "branch"])
def test_unchanged_sources_report_without_parsing_and_say_the_same(
    project: Path, branch: bool
) -> None:
    _measure(project, branch=branch)
    expected = _coverage_says(project)
    cache = project / "cache" / "parses"

    term, files, parsed = _ours(project, cache)
    assert parsed == ["mod.py", "other.py"]
    assert (term, files) == expected
    assert cache.exists()

    term, files, parsed = _ours(project, cache)
    assert parsed == []
    assert (term, files) == expected
    if branch:
        assert "didn't jump" in files["html"]  # descriptions of missing arcs came back too


def test_what_a_parse_depends_on_parses_again(project: Path) -> None:
    cache = project / "cache" / "parses"
    _measure(project, branch=False)
    _ours(project, cache)

    # an edited file is parsed again, the other one is not
    (project / "mod.py").write_text(MODULE.replace("acc = 0", "acc = 0\n    acc += 0"))
    _measure(project, branch=False)
    expected = _coverage_says(project)
    term, files, parsed = _ours(project, cache)
    assert parsed == ["mod.py"]
    assert (term, files) == expected

    # other exclusion settings: another parse
    (project / ".coveragerc").write_text("[report]\nexclude_also =\n    def unused\n")
    expected = _coverage_says(project)
    term, files, parsed = _ours(project, cache)
    assert parsed == ["mod.py", "other.py"]
    assert (term, files) == expected
    assert "Missing" in term

    # a parse stored by a line run has no arcs: a branch run parses again, then keeps them
    _measure(project, branch=True)
    expected = _coverage_says(project)
    assert _ours(project, cache) == (*expected, ["mod.py", "other.py"])
    assert _ours(project, cache) == (*expected, [])


def test_a_damaged_cache_is_rebuilt_and_never_fails_a_report(project: Path) -> None:
    _measure(project, branch=True)
    expected = _coverage_says(project)
    cache = project / "cache" / "parses"
    _ours(project, cache)
    whole = cache.read_bytes()
    both = ["mod.py", "other.py"]
    for damage, parsed in (
        (b"", both),
        (b"\x00garbage", both),
        (whole[: len(whole) // 2], both),
        (whole.replace(b"mod.py", b"mod.pz"), ["mod.py"]),  # one entry no longer found
    ):
        cache.write_bytes(damage)
        assert _ours(project, cache) == (*expected, parsed)
        assert _ours(project, cache) == (*expected, [])


def test_a_file_that_does_not_parse_is_never_kept(project: Path) -> None:
    """coverage.py keeps the half-made parser of a file that is not Python; with
    ``ignore_errors`` the report goes on without it. That parser must neither serve the next
    report of the run (json would then fail on the file) nor come back, as an empty parse, in
    the next run."""
    _measure(project, branch=False)
    (project / "other.py").write_text("def broken(:\n")
    (project / ".coveragerc").write_text("[report]\nignore_errors = True\n")
    expected = _coverage_says(project)
    assert "other" not in expected[0]
    cache = project / "cache" / "parses"
    tries = ["other.py"] * len(REPORTS)  # every report tries it, as coverage.py's own do
    assert _ours(project, cache) == (*expected, ["mod.py", *tries])
    assert _ours(project, cache) == (*expected, tries)


def test_a_parse_that_is_not_plain_data_is_not_kept(tmp_path: Path) -> None:
    parser = PythonParser(text="x = 1\n", filename=str(tmp_path / "x.py"))
    parser.parse_source()
    cache = ParseCache(tmp_path / "parses")
    parser.unexpected = object()  # type: ignore[attr-defined]
    cache.keep(parser)
    cache.save()
    assert not (tmp_path / "parses").exists()
    del parser.unexpected  # type: ignore[attr-defined]
    cache.keep(parser)
    cache.save()
    state = ParseCache(tmp_path / "parses").restore(parser.filename, None, "x = 1\n", arcs=False)
    assert state is not None
    assert state["statements"] == {1}


def test_the_plugin_keeps_parses_in_pytests_cache(pytester: pytest.Pytester, shapes: Path) -> None:
    stored = pytester.path / ".pytest_cache" / "d" / "distcov" / "parses"
    first = run_pytest(pytester, "--distcov", "-n", "2", "--distcov-report=term-missing")
    assert first.ret == 0, first.stdout.str()
    assert stored.exists()
    again = run_pytest(pytester, "--distcov", "-n", "2", "--distcov-report=term-missing")
    assert again.ret == 0, again.stdout.str()

    def table(result: pytest.RunResult) -> list[str]:
        lines = result.stdout.lines
        start = next(i for i, line in enumerate(lines) if line.startswith("Name"))
        return lines[start : next(i for i in range(start, len(lines)) if "TOTAL" in lines[i]) + 1]

    assert table(again) == table(first)
    assert len(table(first)) > 4

    stored.unlink()
    off = run_pytest(pytester, "--distcov", "-p", "no:cacheprovider", "--distcov-report=term")
    assert off.ret == 0, off.stdout.str()
    assert not stored.exists()

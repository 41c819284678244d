"""Per-test contexts (--distcov-context=test) against pytest-cov's serial --cov-context=test.

The reference is a serial pytest-cov run of the same suite; every mode must record, for every
file and line (every arc with branch coverage), the same set of context labels. The suite uses
function-scoped fixtures with teardown code, xunit setup/teardown methods and parametrized tests;
module or session-scoped fixtures run once per process, so in any parallel run they are
attributed to a different test than in a serial one (see the README).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from coverage import CoverageData

from .helpers import RUN_TIMEOUT, run_pytest
from .sshlab import SshLab, host_python

CONFTEST_EXTRA = """

@pytest.fixture
def tracked(assorted):
    names = [type(s).__name__ for s in assorted]
    yield names
    names.clear()  # teardown code: recorded under |teardown
    assert not names
"""

TEST_MORE = """
import pytest
from shapes import Rectangle, Circle
from shapes.palette import mix


class TestXunit:
    def setup_method(self, method):
        self.shape = Rectangle(1, 2)

    def teardown_method(self, method):
        self.shape = Circle(self.shape.area())

    def test_area(self):
        assert self.shape.area() == 2


def test_tracked(tracked):
    assert tracked == ["Rectangle", "Circle", "Triangle"]


@pytest.mark.parametrize("a, b", [("red", "blue"), ("blue", "red")])
def test_mix_both_ways(a, b):
    assert mix(a, b) == mix(b, a)
"""

SOURCES = ("shapes", "tests")
#: where --distcov-branch has the branch engine (branch markers): with contexts too
BRANCH_ENGINE_PYTHONS = ((3, 12), (3, 13), (3, 14), (3, 15))


@pytest.fixture(autouse=True)
def _auto_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine ``auto`` chooses: on Python 3.12+ the monitor engine (sys.monitoring line
    events), before that coverage.py's C tracer (the suite's default is coverage.py's)."""
    monkeypatch.delenv("DISTCOV_ENGINE")


@pytest.fixture
def suite(pytester: pytest.Pytester, shapes: Path) -> Path:
    conftest = shapes / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + CONFTEST_EXTRA)
    (shapes / "tests" / "test_more.py").write_text(TEST_MORE)
    return shapes


def _reference(pytester: pytest.Pytester, *, branch: bool) -> Path:
    """pytest-cov 7, serial, --cov-context=test, on coverage's C tracer."""
    args = [sys.executable, "-m", "pytest", "-p", "no:distcov", "-p", "no:xdist"]
    args += [f"--cov={s}" for s in SOURCES] + ["--cov-context=test", "--cov-report="]
    args += ["--cov-branch"] if branch else []
    env = {"COVERAGE_CORE": "ctrace", "COVERAGE_FILE": str(pytester.path / "ref.coverage")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        result = pytester.run(*args, "-p", "no:randomly", timeout=RUN_TIMEOUT)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    return pytester.path / "ref.coverage"


def contexts_of(path: Path, root: Path, *, arcs: bool) -> dict[str, dict[object, frozenset[str]]]:
    """file (relative to root) -> line or arc -> the context labels that recorded it."""
    data = CoverageData(str(path))
    data.read()
    out: dict[str, dict[object, set[str]]] = {}
    try:
        names = sorted(data.measured_contexts())
        assert len(names) > 1, f"{path} has no per-test contexts"
        for name in names:
            data.set_query_contexts([f"^{re.escape(name)}$"])
            for f in data.measured_files():
                items = (data.arcs(f) if arcs else data.lines(f)) or []
                rel = os.path.relpath(os.path.realpath(f), os.path.realpath(root))
                for item in items:
                    out.setdefault(rel, {}).setdefault(item, set()).add(name)
    finally:
        data.close(force=True)
    return {f: {k: frozenset(v) for k, v in items.items()} for f, items in out.items()}


Labelled = dict[str, dict[object, frozenset[str]]]


def assert_same_labels(a: Labelled, b: Labelled) -> None:
    """The same files, and in each the same labels for every item (got, want)."""
    assert sorted(a) == sorted(b)
    diffs = {
        (f, item): (a[f].get(item), b[f].get(item))
        for f in b
        for item in a[f].keys() | b[f].keys()
        if a[f].get(item) != b[f].get(item)
    }
    assert not diffs, diffs


def assert_same_contexts(got: Path, want: Path, root: Path, *, arcs: bool = False) -> None:
    a = contexts_of(got, root, arcs=arcs)
    b = contexts_of(want, root, arcs=arcs)
    assert_same_labels(a, b)
    labels = {c for items in b.values() for cs in items.values() for c in cs}
    # the reference really has every phase, so the comparison covers all three
    assert {c.rsplit("|", 1)[1] for c in labels if "|" in c} == {"setup", "run", "teardown"}


def _ours(*extra: str) -> list[str]:
    return ["--distcov", *(f"--distcov-source={s}" for s in SOURCES), "--distcov-context=test"]


@pytest.mark.parametrize("workers", ["0", "2", "3"])
def test_contexts_equal_pytest_cov_serial(
    pytester: pytest.Pytester, suite: Path, workers: str
) -> None:
    reference = _reference(pytester, branch=False)
    result = run_pytest(pytester, *_ours(), "-n", workers, "-p", "no:randomly")
    assert result.ret == 0, result.stdout.str()
    assert_same_contexts(suite / ".coverage", reference, suite)


TEST_GENS = """
import pytest


def numbers(n):
    total = 0
    while total < n:
        try:
            total += yield total
        except ValueError:
            total += 1
    return total


@pytest.fixture
def paused():
    gen = numbers(5)
    next(gen)  # suspended in |setup
    yield gen
    gen.close()  # and closed in |teardown


def test_thrown_into_and_caught(paused):
    assert paused.throw(ValueError) == 1


def test_thrown_into_and_left(paused):
    with pytest.raises(KeyError):
        paused.throw(KeyError)


def test_resumed(paused):
    assert paused.send(2) == 2
"""


def reported_contexts(path: Path, root: Path) -> Labelled:
    """file (relative to root) -> executed line or branch of coverage.py's JSON report -> the
    context labels whose report shows it (what users look at: the branch engine records arcs
    of its own, not the tracer's transitions)."""
    from coverage import Coverage

    data = CoverageData(str(path))
    data.read()
    try:
        names = sorted(data.measured_contexts())
    finally:
        data.close(force=True)
    assert len(names) > 1, f"{path} has no per-test contexts"
    out: dict[str, dict[object, set[str]]] = {}
    report = root / f"contexts-{path.name.lstrip('.')}.json"
    cwd = os.getcwd()
    os.chdir(root)
    try:
        cov = Coverage(data_file=str(path))
        cov.load()
        for name in names:
            cov.json_report(outfile=str(report), contexts=[f"^{re.escape(name)}$"])
            for f, info in json.loads(report.read_text())["files"].items():
                items = out.setdefault(os.path.relpath(os.path.realpath(f), root.resolve()), {})
                for line in info["executed_lines"]:
                    items.setdefault(line, set()).add(name)
                for a, b in info.get("executed_branches", ()):
                    items.setdefault((a, b), set()).add(name)
    finally:
        os.chdir(cwd)
    return {f: {k: frozenset(v) for k, v in items.items()} for f, items in out.items()}


@pytest.mark.parametrize("workers", ["0", "2"])
def test_contexts_with_branches_equal_pytest_cov_serial(
    pytester: pytest.Pytester, suite: Path, workers: str
) -> None:
    """Every line and every branch of the report: the same tests as pytest-cov's. On Python
    3.12+ the branch engine records them (sys.monitoring events on marked code), with
    generators suspended in one phase and resumed, thrown into or closed in the next."""
    (suite / "tests" / "test_gens.py").write_text(TEST_GENS)
    reference = _reference(pytester, branch=True)
    result = run_pytest(pytester, *_ours(), "--distcov-branch", "-n", workers, "-p", "no:randomly")
    assert result.ret == 0, result.stdout.str()
    got, want = reported_contexts(suite / ".coverage", suite), reported_contexts(reference, suite)
    assert_same_labels(got, want)
    assert any(isinstance(item, tuple) for items in want.values() for item in items)  # branches
    if sys.version_info[:2] in BRANCH_ENGINE_PYTHONS:
        result.stdout.fnmatch_lines(
            [
                "distcov: measuring lines and branches of * with sys.monitoring line events with"
                " branch markers*"
            ]
        )
    else:  # the C tracer's own arcs: those too are the reference's
        assert_same_contexts(suite / ".coverage", reference, suite, arcs=True)


def test_contexts_streamed_after_every_test_and_chosen_core(
    pytester: pytest.Pytester, suite: Path
) -> None:
    """Streaming after every test (interval 0) sends many small context chunks: same result.
    The header names the engine: sys.monitoring line events on 3.12+, the C tracer before."""
    reference = _reference(pytester, branch=False)
    result = run_pytest(
        pytester, *_ours(), "-n", "2", "--distcov-stream-interval=0", "-p", "no:randomly"
    )
    assert result.ret == 0, result.stdout.str()
    assert_same_contexts(suite / ".coverage", reference, suite)
    if sys.version_info >= (3, 12):
        result.stdout.fnmatch_lines(
            ["distcov: measuring lines of shapes, tests with sys.monitoring line events in 2*"]
        )
    else:
        result.stdout.fnmatch_lines(["distcov: measuring lines of * with the ctrace core in 2*"])


def test_who_covers_and_html_contexts(pytester: pytest.Pytester, suite: Path) -> None:
    result = run_pytest(pytester, *_ours(), "-n", "2", "--distcov-report=html:cov_html")
    assert result.ret == 0, result.stdout.str()
    cli = [sys.executable, "-m", "pytest_distcov", "who-covers"]
    # Rectangle.__post_init__'s raise: only the two bad-sides cases run it
    found = pytester.run(*cli, "shapes/geometry.py:16", timeout=RUN_TIMEOUT)
    assert found.ret == 0, found.stderr.str()
    assert found.stdout.lines == [
        "tests/test_geometry.py::test_rectangle_rejects_bad_sides[bad0]",
        "tests/test_geometry.py::test_rectangle_rejects_bad_sides[bad1]",
    ]
    as_json = pytester.run(*cli, "geometry.py:15-16", "--json", timeout=RUN_TIMEOUT)
    doc = json.loads(as_json.stdout.str())
    assert doc["file"] == str(suite / "shapes" / "geometry.py")
    assert set(doc["lines"]) == {"15", "16"}
    assert "tests/test_geometry.py::test_total_area|setup" in doc["lines"]["15"]  # a fixture
    assert set(doc["tests"]) >= set(found.stdout.lines)
    # the teardown half of a yield fixture
    teardown = pytester.run(*cli, "tests/conftest.py:15", "--json", timeout=RUN_TIMEOUT)
    assert json.loads(teardown.stdout.str())["lines"]["15"] == [
        "tests/test_more.py::test_tracked|teardown"
    ]
    # html shows the contexts
    page = next((suite / "cov_html").glob("*geometry_py.html")).read_text()
    assert "test_rectangle_rejects_bad_sides[bad0]|run" in page

    bad = pytester.run(*cli, "nowhere.py:3", timeout=RUN_TIMEOUT)
    assert bad.ret == 1
    assert bad.stderr.lines == [
        "pytest-distcov: error: nowhere.py is not in the coverage data (7 files measured);"
        " give its path as `coverage report` shows it"
    ]
    bad = pytester.run(*cli, "geometry.py", timeout=RUN_TIMEOUT)
    assert bad.ret == 1
    assert "expected FILE:LINE or FILE:FIRST-LAST" in bad.stderr.str()


def test_who_covers_needs_contexts(pytester: pytest.Pytester, suite: Path) -> None:
    assert run_pytest(pytester, "--distcov", "-n", "2").ret == 0
    result = pytester.run(
        sys.executable, "-m", "pytest_distcov", "who-covers", "geometry.py:16", timeout=60
    )
    assert result.ret == 1
    assert result.stderr.lines == [
        f"pytest-distcov: error: {suite / '.coverage'} has no per-test contexts: measure with"
        " --distcov-context=test (or distcov_context = test in the ini file)"
    ]


def test_bad_context_value_is_a_usage_error(pytester: pytest.Pytester, suite: Path) -> None:
    result = run_pytest(pytester, "--distcov", "--distcov-context=function")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: distcov: invalid value 'function' for --distcov-context: expected test"]
    )


@pytest.mark.slow
def test_contexts_on_remote_hosts(pytester: pytest.Pytester, suite: Path, sshlab: SshLab) -> None:
    for host in ("h1", "h2"):
        sshlab.add_host(host)
    reference = _reference(pytester, branch=False)
    result = run_pytest(
        pytester,
        *_ours(),
        "--distcov-remote=h1,h2",
        "--distcov-remote-timeout=120",
        f"--distcov-ssh-config={sshlab.ssh_config}",
        f"--distcov-remote-python={host_python()}",
        "-p",
        "no:randomly",
    )
    assert result.ret == 0, result.stdout.str()
    assert_same_contexts(suite / ".coverage", reference, suite)


def test_who_covers_lines_run_only_at_import(pytester: pytest.Pytester, suite: Path) -> None:
    assert run_pytest(pytester, *_ours(), "-n", "2").ret == 0
    result = pytester.run(
        sys.executable, "-m", "pytest_distcov", "who-covers", "geometry.py:10-12", timeout=60
    )
    assert result.ret == 0
    assert result.stdout.lines == []
    assert result.stderr.lines == [
        f"pytest-distcov: no test ran {suite / 'shapes' / 'geometry.py'} lines 10-12"
        " (they ran outside tests: imports, collection)"
    ]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="sysmon needs Python 3.12+")
@pytest.mark.parametrize("core", ["sysmon", "ctrace"])
def test_users_core_with_contexts(pytester: pytest.Pytester, suite: Path, core: str) -> None:
    """``core = sysmon`` asks for sys.monitoring: contexts get the monitor engine (coverage.py's
    own sysmon core records none). ``core = ctrace`` asks for the C tracer: it measures."""
    (suite / ".coveragerc").write_text(f"[run]\ncore = {core}\n")
    result = run_pytest(pytester, *_ours(), "-n", "2")
    assert result.ret == 0, result.stdout.str()
    if core == "sysmon":
        result.stdout.fnmatch_lines(["distcov: measuring * with sys.monitoring line events in 2*"])
    else:
        result.stdout.fnmatch_lines(
            [
                "distcov: measuring * with the ctrace core in 2*",
                "distcov: [[]run[]] core = ctrace (or COVERAGE_CORE) chooses coverage.py's tracer"
                " for per-test contexts: using the ctrace core",
            ]
        )
    data = CoverageData(str(suite / ".coverage"))
    data.read()
    assert len(data.measured_contexts()) > 20


def test_a_worker_that_measures_another_way_is_named(
    pytester: pytest.Pytester, suite: Path
) -> None:
    """The summary's title says how the controller measures; workers whose own environment
    chooses another core (here ``COVERAGE_CORE``; another Python on a remote host does the
    same) are named in one line for that core and Python, and their data is merged all
    the same."""
    tx = ["--tx", "popen//id=gw0"]
    tx += [a for n in (1, 2) for a in ("--tx", f"popen//id=gw{n}//env:COVERAGE_CORE=pytrace")]
    result = run_pytest(pytester, *_ours(), "-d", *tx)
    assert result.ret == 0, result.stdout.str()
    out = result.stdout.str()
    lines = [line for line in out.splitlines() if "measured with" in line]
    assert len(lines) == 1, out
    assert re.fullmatch(
        r"distcov: \[(gw1, gw2|gw2, gw1)\] measured with the pytrace core"
        r" \(Python \d+\.\d+\.\d+\S*\), not with .+ as the controller does",
        lines[0],
    ), lines[0]
    data = CoverageData(str(suite / ".coverage"))
    data.read()
    assert len(data.measured_contexts()) > 20


@pytest.mark.parametrize("branch", [False, True], ids=["lines", "branches"])
def test_reports_without_contexts_read_as_coverage_reads_the_data_file(
    pytester: pytest.Pytester, suite: Path, branch: bool
) -> None:
    """The reports that show no contexts read a copy with every context together: each says
    what coverage.py's own report of the data file says; JSON with ``[json] show_contexts``
    and HTML show each line's contexts, as coverage.py's do."""
    (suite / ".coveragerc").write_text("[json]\nshow_contexts = False\n")
    extra = ["--distcov-branch"] if branch else []
    reports = ["--distcov-report=term-missing", "--distcov-report=json:plain.json"]
    result = run_pytest(pytester, *_ours(), *extra, "-n", "2", *reports)
    assert result.ret == 0, result.stdout.str()
    coverage_json = [sys.executable, "-m", "coverage", "json", "--data-file=.coverage"]
    ref = pytester.run(*coverage_json, "-o", "ref.json", timeout=RUN_TIMEOUT)
    assert ref.ret == 0, ref.stderr.str()
    ours, theirs = (json.loads((suite / n).read_text()) for n in ("plain.json", "ref.json"))
    assert ours["files"] == theirs["files"]
    assert ours["totals"] == theirs["totals"]
    assert ours["totals"]["covered_lines"] > 0
    assert "TOTAL" in result.stdout.str()
    # with contexts asked for: the data file's contexts, each line's as coverage.py gives them
    (suite / ".coveragerc").write_text("[json]\nshow_contexts = True\n")
    reports = ["--distcov-report=json:ctx.json", "--distcov-report=html:cov_html"]
    result = run_pytest(pytester, *_ours(), *extra, "-n", "2", *reports)
    assert result.ret == 0, result.stdout.str()
    ref = pytester.run(*coverage_json, "--show-contexts", "-o", "ref.json", timeout=RUN_TIMEOUT)
    assert ref.ret == 0, ref.stderr.str()
    ours, theirs = (
        _contexts_sorted(json.loads((suite / n).read_text())) for n in ("ctx.json", "ref.json")
    )
    assert ours["files"] == theirs["files"]
    contexts = {c for f in ours["files"].values() for cs in f["contexts"].values() for c in cs}
    assert "tests/test_more.py::test_tracked|teardown" in contexts
    page = next((suite / "cov_html").glob("*geometry_py.html")).read_text()
    assert "test_rectangle_rejects_bad_sides[bad0]|run" in page


def _contexts_sorted(doc: Any) -> Any:
    """A JSON report with each line's contexts sorted (coverage.py lists them in a set's
    order, which differs from process to process)."""
    if isinstance(doc, dict):
        return {
            k: {line: sorted(cs) for line, cs in v.items()}
            if k == "contexts" and isinstance(v, dict)
            else _contexts_sorted(v)
            for k, v in doc.items()
        }
    if isinstance(doc, list):
        return [_contexts_sorted(v) for v in doc]
    return doc

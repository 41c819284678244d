"""Per-test contexts of the engine ``auto`` chooses (on Python 3.12+ the monitor engine, before
that coverage.py's C tracer) against a serial pytest-cov ``--cov-context=test`` run on the C
tracer: fixtures at every scope, generators suspended across tests, threads, coroutines,
classes, no_cover, modules imported before measuring, during a test and again; in-process, with
xdist, and through a killed worker. And whose tool ids and warnings are whose.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from coverage import CoverageData

from .helpers import RUN_TIMEOUT, run_pytest
from .test_contexts import assert_same_contexts, contexts_of

ON_MONITOR = sys.version_info >= (3, 12)
ENGINE = "sys.monitoring line events" if ON_MONITOR else "the ctrace core"

CORE = """
import asyncio
import threading


def add(a, b):
    return a + b


def scale(x, factor=2):
    if factor == 0:
        raise ValueError("zero")
    return x * factor


def countdown(n):
    while n:
        yield n
        n -= 1
    return "done"


def in_thread(x):
    out = []
    thread = threading.Thread(target=lambda: out.append(add(x, 1)))
    thread.start()
    thread.join()
    return out[0]


async def twice(x):
    await asyncio.sleep(0)
    return x * 2


class Account:
    def __init__(self, balance=0):
        self.balance = balance

    def deposit(self, amount):
        self.balance += amount
        return self.balance

    @property
    def empty(self):
        return self.balance == 0

    @classmethod
    def opened(cls):
        return cls(10)


def setup_of(scope):
    return f"setup {scope}"


def teardown_of(scope):
    return f"teardown {scope}"


def only_paused():
    return "paused"


def paused_then_measured(flag):
    if flag:
        return "a"
    return "b"


square = lambda x: x * x  # noqa: E731


def one(): return 1
"""

EARLY = """
def early(x):
    if x:
        return "yes"
    return "no"
"""

LATE = """
COUNTER = []
COUNTER.append(1)


def late():
    return len(COUNTER)
"""

CONFTEST = """
import pytest

from lib import core


@pytest.fixture(scope="session")
def session_res():
    core.setup_of("session")
    yield "session"
    core.teardown_of("session")


@pytest.fixture(scope="package")
def package_res():
    core.setup_of("package")
    yield "package"
    core.teardown_of("package")


@pytest.fixture(scope="module")
def module_res(session_res, package_res):
    core.setup_of("module")
    yield "module"
    core.teardown_of("module")


@pytest.fixture(scope="module")
def ticker():
    return core.countdown(3)


@pytest.fixture(scope="class")
def class_res():
    core.setup_of("class")
    yield core.Account.opened()
    core.teardown_of("class")


@pytest.fixture
def func_res(module_res):
    acc = core.Account()
    yield acc
    core.teardown_of("function")
    assert acc.balance >= 0


@pytest.fixture(autouse=True)
def everywhere():
    core.add(0, 0)
"""

TESTS = """
import asyncio
import importlib

import pytest

from lib import core
from lib.early import early


def setup_module(module):
    core.setup_of("xunit module")


def teardown_module(module):
    core.teardown_of("xunit module")


def test_plain(func_res):
    assert func_res.deposit(5) == 5
    assert early(1) == "yes"
    assert core.square(3) + core.one() == 10


@pytest.mark.parametrize("factor", [0, 3])
def test_scale(factor, module_res):
    if factor:
        assert core.scale(2, factor) == 6
    else:
        with pytest.raises(ValueError):
            core.scale(2, factor)


def test_ticker_starts(ticker):
    assert next(ticker) == 3


def test_ticker_resumes(ticker):
    assert list(ticker) == [2, 1]


def test_thread_and_coroutine():
    assert core.in_thread(1) == 2
    assert asyncio.run(core.twice(4)) == 8


def test_imports_late():
    from lib import late

    assert late.late() == 1


def test_reloads_late():
    from lib import late

    assert importlib.reload(late).late() == 1


@pytest.mark.no_cover
def test_marked_no_cover():
    core.only_paused()
    core.paused_then_measured(True)


def test_fixture_no_cover(no_cover):
    core.paused_then_measured(False)


def test_after_no_cover():
    assert core.paused_then_measured(True) == "a"
    assert early(0) == "no"
    assert core.square(2) + core.one() == 5


class TestAccount:
    @classmethod
    def setup_class(cls):
        core.setup_of("xunit class")

    @classmethod
    def teardown_class(cls):
        core.teardown_of("xunit class")

    def setup_method(self, method):
        self.account = core.Account()

    def teardown_method(self, method):
        self.account = None

    def test_empty(self, class_res):
        assert self.account.empty
        assert not class_res.empty

    def test_deposit(self, class_res, func_res):
        assert class_res.deposit(1) == 11
"""

SOURCES = ("lib", "tests")


@pytest.fixture(autouse=True)
def _auto_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISTCOV_ENGINE")


@pytest.fixture
def scoped(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One test module (``--dist loadfile`` keeps it on one worker, in order: then even the
    session, package and module fixtures run where they run in a serial run)."""
    lib = pytester.mkpydir("lib")
    (lib / "__init__.py").write_text("")
    (lib / "core.py").write_text(CORE)
    (lib / "early.py").write_text(EARLY)
    (lib / "late.py").write_text(LATE)
    tests = pytester.mkpydir("tests")
    (tests / "conftest.py").write_text(CONFTEST)
    (tests / "test_scopes.py").write_text(TESTS)
    pytester.makepyfile(early_plugin="import lib.early\n")
    pytester.makeini("[pytest]\ntestpaths = tests\n")
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    return pytester.path


def _reference(pytester: pytest.Pytester, *args: str) -> Path:
    """pytest-cov, serial, --cov-context=test, on coverage's C tracer."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:distcov",
        "-p",
        "no:xdist",
        "-p",
        "no:randomly",
    ]
    cmd += [f"--cov={s}" for s in SOURCES] + ["--cov-context=test", "--cov-report="]
    ref = pytester.path / "ref.coverage"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("COVERAGE_CORE", "ctrace")
        env.setenv("COVERAGE_FILE", str(ref))
        result = pytester.run(*cmd, *args, timeout=RUN_TIMEOUT)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    return ref


def _ours(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return run_pytest(
        pytester,
        "-p",
        "no:randomly",
        "--distcov",
        *(f"--distcov-source={s}" for s in SOURCES),
        "--distcov-context=test",
        "--distcov-report=",
        *args,
    )


def _measured_files(path: Path) -> set[str]:
    data = CoverageData(str(path))
    data.read()
    try:
        return {os.path.realpath(f) for f in data.measured_files()}
    finally:
        data.close(force=True)


#: In-process, the monitor engine writes test phases to the data file in batches: of 2 here.
SMALL_BATCHES = """
from pytest_distcov.engine import monitor

monitor.BATCH = 2
"""


@pytest.mark.parametrize(
    "mode",
    [
        ["-p", "no:xdist"],
        ["-p", "no:xdist", "-p", "small_batches"],
        ["-n", "2", "--dist", "loadfile"],
    ],
    ids=["in-process", "in-process-batches", "xdist"],
)
def test_every_scope_equals_pytest_cov_serial(
    pytester: pytest.Pytester, scoped: Path, mode: list[str]
) -> None:
    pytester.makepyfile(small_batches=SMALL_BATCHES)
    reference = _reference(pytester, "-p", "early_plugin")
    result = _ours(pytester, "-p", "early_plugin", *mode)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines([f"distcov: measuring lines of lib, tests with {ENGINE} *"])
    got = scoped / ".coverage"
    assert_same_contexts(got, reference, scoped)
    assert _measured_files(got) == _measured_files(reference)
    contexts = contexts_of(reference, scoped, arcs=False)
    core = contexts[os.path.join("lib", "core.py")]
    # The reference is what the test means: a generator resumed by the next test records the
    # resumed lines there; what ran only paused is nowhere; imports inside a test are its own.
    nodes = "tests/test_scopes.py::"
    assert f"{nodes}test_ticker_resumes|run" in core[19]  # n -= 1, after the first yield
    assert 62 not in core  # only_paused's body
    assert core[67] == {f"{nodes}test_after_no_cover|run"}  # paused_then_measured's "a"
    # one-line functions: their only line runs at import and in each test that calls them
    for line in (71, 74):
        assert core[line] == {"", f"{nodes}test_plain|run", f"{nodes}test_after_no_cover|run"}
    late = contexts[os.path.join("lib", "late.py")]
    assert late[3] == {f"{nodes}test_imports_late|run", f"{nodes}test_reloads_late|run"}
    early = contexts[os.path.join("lib", "early.py")]  # imported before measuring started
    assert early[4] == {f"{nodes}test_plain|run"}
    assert early[5] == {f"{nodes}test_after_no_cover|run"}


def test_filterwarnings_error_suite_sees_no_warning(
    pytester: pytest.Pytester, scoped: Path
) -> None:
    """No warning of coverage.py's (or ours) reaches a suite that makes warnings errors."""
    pytester.makeini("[pytest]\ntestpaths = tests\nfilterwarnings = error\n")
    for mode in (["-p", "no:xdist"], ["-n", "2", "--dist", "loadfile"]):
        result = _ours(pytester, "-p", "early_plugin", *mode)
        out = result.stdout.str() + result.stderr.str()
        assert result.ret == 0, out
        assert "Warning" not in out, out
        assert "warnings summary" not in out, out
        result.stdout.fnmatch_lines([f"distcov: measuring lines of lib, tests with {ENGINE} *"])


@pytest.mark.parametrize("streamed", [False, True], ids=["from-file", "streamed"])
def test_killed_worker_keeps_the_contexts_of_finished_tests(
    pytester: pytest.Pytester, private_tmp: Path, streamed: bool
) -> None:
    """A worker killed mid-test: the contexts of every test that finished reach the combined
    data, from its durable file or (that file destroyed before the kill) from the chunks it
    streamed after every test; nothing is attributed to a test that did not run it."""
    from .test_crash import _project, _run_killer

    before_kill = (
        "import glob, shutil, tempfile; "
        "[shutil.rmtree(d) for d in glob.glob(tempfile.gettempdir() + "
        "'/distcov-' + os.environ['PYTEST_XDIST_WORKER'] + '-*')]"
    )
    _project(pytester, before_kill=before_kill if streamed else "pass")
    result = _run_killer(
        pytester, "--distcov-context=test", stream_interval=0 if streamed else 3600
    )
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines([f"distcov: measuring lines of work with {ENGINE} in 2 workers"])
    result.stdout.fnmatch_lines(["*distcov: worker gw* crashed*"])
    got = contexts_of(pytester.path / ".coverage", pytester.path, arcs=False)["work.py"]
    killer, other = "test_a_killer.py::", "test_b_other.py::"
    expected = {
        2: {f"{killer}test_1|run"},
        6: {f"{killer}test_2|run"},
        15: {f"{killer}test_4|run"},
        19: {f"{other}test_g1|run"},
        23: {f"{other}test_g2|run"},
    }
    for line, labels in expected.items():
        assert got.get(line) == labels, (line, got)
    # the killed test's lines (f3) may be there (from the file) or not; under its label only
    for line in (10, 11):
        assert got.get(line, set()) <= {f"{killer}test_3_kill|run"}, (line, got)


TAKES_TOOL_IDS = """
import sys

for tool in (3, 4):
    sys.monitoring.use_tool_id(tool, f"user tool {tool}")
"""


@pytest.mark.skipif(not ON_MONITOR, reason="sys.monitoring: Python 3.12+")
def test_tool_ids_in_use_leave_contexts_to_the_c_tracer(
    pytester: pytest.Pytester, scoped: Path
) -> None:
    """Another tool holds both ids the monitor engine may take: it takes none of the
    debugger's, coverage.py's or the profiler's; coverage.py's C tracer measures, as exactly."""
    pytester.makepyfile(tool_plugin=TAKES_TOOL_IDS)
    reference = _reference(pytester, "-p", "early_plugin")
    result = _ours(pytester, "-p", "early_plugin", "-p", "tool_plugin", "-p", "no:xdist")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(
        [
            "distcov: measuring lines of lib, tests with the ctrace core in-process",
            "distcov: sys.monitoring tool ids 3 and 4 are both in use (user tool 3, user tool 4):"
            " using the ctrace core",
        ]
    )
    assert_same_contexts(scoped / ".coverage", reference, scoped)


DEBUGGER_LIKE = """
import sys

import pytest

SEEN = []
mon = sys.monitoring
mon.use_tool_id(mon.DEBUGGER_ID, "debugger-like")


def on_line(code, line):
    if code.co_name == "add":
        SEEN.append(line)
    return mon.DISABLE


mon.register_callback(mon.DEBUGGER_ID, mon.events.LINE, on_line)
mon.set_events(mon.DEBUGGER_ID, mon.events.LINE)


def pytest_unconfigure(config):
    mon.set_events(mon.DEBUGGER_ID, 0)
    mon.free_tool_id(mon.DEBUGGER_ID)
    print(f"debugger-like tool saw add's line {len(SEEN)} times")
"""


@pytest.mark.skipif(not ON_MONITOR, reason="sys.monitoring: Python 3.12+")
def test_other_tools_disabled_events_stay_disabled(pytester: pytest.Pytester, scoped: Path) -> None:
    """As the README says: the monitor engine re-arms only its own events, on the measured code
    objects, never with restart_events. A tool that disables a line after seeing it once does
    not see it again in every test, though core.add runs in every test (through an autouse
    fixture) and measuring records it in every test. (CPython may re-enable another tool's
    disabled line when it re-instruments a code object for us: a few times, not per test.)"""
    pytester.makepyfile(debugger_like=DEBUGGER_LIKE)
    result = _ours(pytester, "-p", "debugger_like", "-p", "no:xdist", "-s")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([f"distcov: measuring lines of lib, tests with {ENGINE} *"])
    seen = [line for line in result.stdout.lines if "debugger-like tool saw" in line]
    assert len(seen) == 1, result.stdout.str()
    times = int(seen[0].split("line ")[1].split()[0])
    assert 1 <= times <= 3, seen  # 13 tests: once per test with restart_events
    contexts = contexts_of(scoped / ".coverage", scoped, arcs=False)
    add = contexts[os.path.join("lib", "core.py")][7]  # add's body
    assert len({c for c in add if c.endswith("|setup")}) == 13, add  # every test

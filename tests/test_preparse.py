"""Parses made while the tests run, by a helper process: the report restores them and says
exactly what coverage.py says; a helper that cannot run changes nothing."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from coverage import Coverage

from pytest_distcov.sinks.parses import ParseCache, parse_entry
from pytest_distcov.sinks.preparse import PreParser

from .helpers import run_pytest
from .test_parses import MODULE, _coverage_says, _measure, _ours, make_project

posix_only = pytest.mark.skipif(not PreParser.possible(), reason="the helper needs POSIX")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return make_project(tmp_path, monkeypatch)


def _exclude() -> str | None:
    return Coverage()._exclude_regex("exclude")


@pytest.mark.parametrize("branch", [False, True], ids=["lines", "branch"])
def test_a_parse_made_ahead_is_what_the_report_would_make(project: Path, branch: bool) -> None:
    """``parse_entry`` parses as coverage.py's reporter does: with its parses in the cache,
    every report (html's missing-arc descriptions included) equals coverage.py's own, and
    nothing is parsed."""
    _measure(project, branch=branch)
    expected = _coverage_says(project)
    cache_path = project / "cache" / "parses"
    cache = ParseCache(cache_path)
    for name in ("mod.py", "other.py"):
        entry = parse_entry(str(project / name), _exclude(), arcs=branch)
        assert entry is not None
        assert entry[0] == str(project / name)
        cache.adopt(*entry)
    cache.save()
    assert _ours(project, cache_path) == (*expected, [])


def test_parse_entry_refuses_what_is_not_python(project: Path) -> None:
    (project / "broken.py").write_text("def broken(:\n")
    assert parse_entry(str(project / "broken.py"), None, arcs=False) is None
    assert parse_entry(str(project / "gone.py"), None, arcs=False) is None


def _wait_for(preparser: PreParser, count: int) -> None:
    # The helper runs at the lowest priority: on a saturated machine it may wait minutes.
    deadline = time.monotonic() + 300
    while preparser.received < count and time.monotonic() < deadline:
        preparser.pump()
        time.sleep(0.05)


@posix_only
@pytest.mark.parametrize("branch", [False, True], ids=["lines", "branch"])
def test_the_helper_parses_what_it_is_offered(project: Path, branch: bool) -> None:
    _measure(project, branch=branch)
    expected = _coverage_says(project)
    (project / "broken.py").write_text("def broken(:\n")
    cache_path = project / "cache" / "parses"
    cache = ParseCache(cache_path)
    preparser = PreParser(cache, _exclude(), arcs=branch, relative_files=False)
    names = [str(project / n) for n in ("mod.py", "broken.py", "gone.py", "other.py")]
    preparser.offer(names)
    preparser.offer(names)  # offered twice: parsed once
    helper = preparser._proc
    assert helper is not None
    _wait_for(preparser, 2)
    assert preparser.received == 2  # the broken and the missing file are left to the report
    assert cache.knows(str(project / "mod.py"))
    assert cache.knows(str(project / "other.py"))
    preparser.stop()
    assert helper.poll() is not None  # stopped and reaped
    cache.save()
    assert _ours(project, cache_path) == (*expected, [])


@posix_only
def test_the_report_takes_parses_as_they_come(project: Path) -> None:
    """A lookup takes whatever the helper has sent meanwhile (the report asks file by file)."""
    _measure(project, branch=False)
    cache = ParseCache(project / "cache" / "parses")
    preparser = PreParser(cache, _exclude(), arcs=False, relative_files=False)
    cache.incoming = preparser.take
    preparser.offer([str(project / "mod.py")])
    deadline = time.monotonic() + 60
    state = None
    while state is None and time.monotonic() < deadline:
        state = cache.restore(str(project / "mod.py"), _exclude(), MODULE, arcs=False)
        time.sleep(0.05)
    preparser.stop()
    assert state is not None
    assert 5 in state["statements"]  # type: ignore[operator]


@posix_only
def test_a_helper_that_cannot_start_changes_nothing(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ParseCache(project / "cache" / "parses")
    preparser = PreParser(cache, None, arcs=False, relative_files=False)
    monkeypatch.setattr(sys, "executable", str(project / "no-such-python"))
    preparser.offer([str(project / "mod.py")])
    assert preparser.take() == 0
    preparser.offer([str(project / "other.py")])  # not tried again
    preparser.stop()
    assert not cache.knows(str(project / "mod.py"))


@posix_only
def test_a_helper_whose_controller_is_gone_exits(project: Path) -> None:
    """The helper reads names until its stdin closes: a controller killed outright leaves no
    helper behind."""
    cache = ParseCache(project / "cache" / "parses")
    preparser = PreParser(cache, None, arcs=False, relative_files=False)
    preparser.offer([str(project / "mod.py")])
    helper = preparser._proc
    assert helper is not None
    assert helper.stdin is not None
    helper.stdin.close()  # what the end of the controller's process does
    assert helper.wait(timeout=60) == 0
    preparser.stop()


@posix_only
def test_a_first_run_reports_what_a_run_without_cache_reports(
    pytester: pytest.Pytester, shapes: Path
) -> None:
    """With xdist, a run with an empty cache has the helper parse; its report is the same."""
    args = ("--distcov", "-n", "2", "--distcov-report=term-missing", "--distcov-branch")
    cold = run_pytest(pytester, *args, "--cache-clear")
    assert cold.ret == 0, cold.stdout.str()
    off = run_pytest(pytester, *args, "-p", "no:cacheprovider")
    assert off.ret == 0, off.stdout.str()

    def table(result: pytest.RunResult) -> list[str]:
        lines = result.stdout.lines
        start = next(i for i, line in enumerate(lines) if line.startswith("Name"))
        return lines[start : next(i for i in range(start, len(lines)) if "TOTAL" in lines[i]) + 1]

    assert len(table(cold)) > 4
    assert table(cold) == table(off)
    assert not [p for p in os.listdir(pytester.path) if p.startswith(".coverage.")]


def _pipe_capacity() -> int:
    """Bytes a pipe holds before a blocking write waits (Linux: F_GETPIPE_SZ; else 64 KiB)."""
    import fcntl

    read_end, write_end = os.pipe()
    try:
        return int(fcntl.fcntl(write_end, getattr(fcntl, "F_GETPIPE_SZ", 1032)))
    except OSError:
        return 1 << 16
    finally:
        os.close(read_end)
        os.close(write_end)


@posix_only
def test_a_stopped_helper_never_blocks_the_controller(tmp_path: Path) -> None:
    """The helper is frozen (SIGSTOP, as a process at nice 19 is on a saturated machine) while
    the controller offers it several pipes' worth of file names: every offer returns at once
    (the rest is queued), and once the helper runs again every file reaches the cache."""
    import signal
    import threading

    count = 3000
    root = tmp_path / ("deep-directory-name-" * 4)
    root.mkdir()
    names = []
    for i in range(count):
        path = root / f"module_with_a_long_name_{i:05d}.py"
        path.write_text(f"VALUE = {i}\n\ndef f(x):\n    return x + {i}\n")
        names.append(str(path))
    assert sum(len(n) + 1 for n in names) > 2 * _pipe_capacity()  # more than a pipe holds

    preparser = PreParser(ParseCache(tmp_path / "parses"), None, arcs=True, relative_files=False)
    preparser.offer(names[:1])
    helper = preparser._proc
    assert helper is not None
    os.kill(helper.pid, signal.SIGSTOP)
    try:
        offering = threading.Thread(
            target=lambda: [preparser.offer(names[i : i + 100]) for i in range(1, count, 100)],
            daemon=True,
        )
        offering.start()
        offering.join(timeout=120)  # a generous bound: a blocked write would never return
        assert not offering.is_alive(), "offer() blocked on the stopped helper's pipe"
        assert preparser._outbox, "the names that did not fit in the pipe should be queued"
    finally:
        os.kill(helper.pid, signal.SIGCONT)
    try:
        _wait_for(preparser, count)
        assert preparser.received == count
        assert not preparser._outbox
        assert all(preparser.cache.knows(n) for n in names)
    finally:
        preparser.stop()
    assert helper.poll() is not None  # stopped and reaped


@posix_only
def test_a_helper_that_dies_changes_nothing(project: Path) -> None:
    """Killed (the OOM killer, say) with names still queued for it: offering and pumping go on
    without an error, and the report parses what it did not send."""
    import signal

    cache = ParseCache(project / "cache" / "parses")
    preparser = PreParser(cache, _exclude(), arcs=False, relative_files=False)
    preparser.offer([str(project / "mod.py")])
    helper = preparser._proc
    assert helper is not None
    os.kill(helper.pid, signal.SIGKILL)
    helper.wait(timeout=60)
    preparser._outbox += b"x" * (1 << 20)  # more than the dead pipe could ever take
    preparser.offer([str(project / "other.py")])
    preparser.pump()
    assert preparser._broken
    assert not preparser._outbox
    preparser.stop()

"""The monitor engine's phases (Python 3.12+), at the level of the engine object."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
from coverage import Coverage

pytestmark = pytest.mark.skipif(sys.version_info < (3, 12), reason="sys.monitoring: 3.12+")


def test_a_line_another_thread_adds_to_an_ended_phase_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line callback of another thread may look its code's set up before a phase ends and
    add to it after the phase was read (its event is then disabled: it never fires again in
    that phase). The next phase end reads the set again and keeps the line."""
    from pytest_distcov.engine.monitor import LineMonitor

    (tmp_path / "late_mod.py").write_text("def f(x):\n    if x:\n        return 1\n    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "late_mod", raising=False)
    monitor = LineMonitor(Coverage(data_file=None, source=[str(tmp_path)]))
    monitor.start()
    try:
        module = importlib.import_module("late_mod")
        assert module.f(1) == 1
        monitor._end_phase()
        ((_label, first),) = monitor._unjournaled
        name = next(n for n in first if n.endswith("late_mod.py"))
        assert first[name] == {1, 2, 3}
        found, _ = monitor._read[id(module.f.__code__)]
        found.add(4)  # as the other thread's callback does, late
        monitor._end_phase()
        assert monitor._unjournaled[-1][1][name] == {4}
        monitor._end_phase()  # read once: not again
        assert all(name not in named for _, named in monitor._unjournaled[2:])
    finally:
        monitor.stop()
        sys.modules.pop("late_mod", None)


def test_a_record_another_thread_starts_as_a_phase_ends_is_left_for_the_next(
    tmp_path: Path,
) -> None:
    """A line callback of another thread that finds no record for its code makes one; made
    between the phase's copy of the records and their removal, it stays for the next phase."""
    from pytest_distcov.engine.monitor import LineMonitor

    monitor = LineMonitor(Coverage(data_file=None, source=[str(tmp_path)]))
    newcomer = 12345

    class Racing(dict[int, set[int]]):
        """The records, with another thread's new one arriving while they are copied."""

        def keys(self) -> list[int]:  # type: ignore[override]
            found = list(super().keys())
            self[newcomer] = {7}
            return found

        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter(self.keys())

    monitor._current = Racing({999: {1}})
    monitor._end_phase()
    assert monitor._current.get(newcomer) == {7}
    assert 999 not in monitor._current


_UNWINDING = """\
import contextlib


def raises(x):
    y = x + 1
    raise ValueError(y)


def gen(n):
    yield n
    raise KeyError(n)


def comp(text):
    return [int(c) for c in text]


def fin(x):
    try:
        return x.missing
    finally:
        x = None


def within(x):
    with contextlib.suppress(KeyError):
        return x.missing


def waiting():
    yield 1
    yield 2


def deep(n):
    if n:
        return deep(n - 1)
    raise RuntimeError


def bare(x):
    try:
        return int(x)
    except ValueError:
        raise


def run():
    for call in (
        lambda: raises(1),
        lambda: list(gen(1)),
        lambda: comp("12a"),
        lambda: fin(None),
        lambda: within(None),
        lambda: deep(3),
        lambda: waiting().throw(ValueError),
        lambda: bare("a"),
    ):
        try:
            call()
        except Exception:
            pass
    g = waiting()
    next(g)
    try:
        g.throw(ValueError)
    except ValueError:
        pass
    g = waiting()
    next(g)
    g.close()
"""


def _on_two_tools(
    measured: dict[int, types.CodeType],
    callbacks: dict[int, tuple[object, object]],
    setup: str,
    run: Callable[[], object],
) -> set[int]:
    """Run ``run`` with each event's two callbacks on two free sys.monitoring tools (and, by
    ``setup``, line events on ``measured`` or a trace function); the lines seen by the line
    events. Every tool taken is freed."""
    monitoring = sys.monitoring  # type: ignore[attr-defined]
    events = monitoring.events
    lines_seen: set[int] = set()

    def on_line(code: types.CodeType, line: int) -> object:
        lines_seen.add(line)
        return monitoring.DISABLE

    def tracer(frame: types.FrameType, event: str, arg: object) -> object:
        return tracer

    tools = [t for t in range(6) if monitoring.get_tool(t) is None][:2]
    assert len(tools) == 2, "two free sys.monitoring tool ids"
    taken: list[int] = []
    try:
        for tool in tools:
            monitoring.use_tool_id(tool, "pytest-distcov test")
            taken.append(tool)
        for event, pair in callbacks.items():
            for tool, callback in zip(tools, pair, strict=True):
                monitoring.register_callback(tool, event, callback)
        for tool in tools:
            monitoring.set_events(tool, events.PY_UNWIND | events.PY_THROW)
        if setup == "line events":
            monitoring.register_callback(tools[0], events.LINE, on_line)
            for item in measured.values():
                monitoring.set_local_events(tools[0], item, events.LINE)
        previous = sys.gettrace()  # (the suite's own coverage, if any: put back)
        if setup == "trace function":
            sys.settrace(tracer)
        try:
            run()
        finally:
            sys.settrace(previous)
    finally:
        for tool in taken:
            monitoring.set_events(tool, 0)
            for item in measured.values():
                monitoring.set_local_events(tool, item, 0)
            for event in (*callbacks, events.LINE):
                monitoring.register_callback(tool, event, None)
            monitoring.free_tool_id(tool)
    return lines_seen


@pytest.mark.parametrize("setup", ["alone", "line events", "trace function"])
def test_the_frame_events_lines_are_the_frames_own(tmp_path: Path, setup: str) -> None:
    """PY_UNWIND and PY_THROW (with per-test contexts) record the line of the frame an
    exception leaves or enters by its last instruction, from a table made once per code
    object: it must be the frame's ``f_lineno`` in every shape (a generator's implicit
    handler, a comprehension, ``finally``, ``with``, recursion, ``throw``, ``close``), and a
    marker's line is never recorded. Alone; with line events on the measured code, each
    disabled as it fires (as the engine runs it: from 3.13 ``f_lineno`` then reads the
    monitoring's line data); and under a trace function (a debugger's, coverage.py's tracer
    for an unmarked file), which sets ``f_trace`` on the frames."""
    from pytest_distcov.engine.branches import _frame_line_callback
    from pytest_distcov.engine.nearlines import codes_of

    monitoring = sys.monitoring  # type: ignore[attr-defined]
    events = monitoring.events
    code = compile(_UNWINDING, str(tmp_path / "unwinding.py"), "exec")
    namespace: dict[str, object] = {}
    exec(code, namespace)
    measured = {id(c): c for c in codes_of(code)}
    marker = 11  # gen's `raise KeyError(n)`, as if it were a marker's line
    marks = {code.co_filename: {marker: ()}}
    got: dict[str, dict[int, set[int]]] = {"unwind": {}, "throw": {}}
    want: dict[str, dict[int, set[int]]] = {"unwind": {}, "throw": {}}

    def reference(kind: str, sign: int) -> object:
        def on_event(code: types.CodeType, offset: int, exc: BaseException) -> None:
            if id(code) in measured:
                line = sys._getframe(1).f_lineno
                if line is not None and line > 0 and line != marker:
                    want[kind].setdefault(id(code), set()).add(sign * line)

        return on_event

    tables: dict[int, list[int | None]] = {}  # (one for both events, as the engine has)
    callbacks = {  # (two tools: each event calls both, on the same frame)
        events.PY_UNWIND: (
            _frame_line_callback(measured, marks, got["unwind"], tables, exit_arc=True),
            reference("unwind", -1),
        ),
        events.PY_THROW: (
            _frame_line_callback(measured, marks, got["throw"], tables, exit_arc=False),
            reference("throw", 1),
        ),
    }
    lines_seen = _on_two_tools(measured, callbacks, setup, namespace["run"])  # type: ignore[arg-type]
    assert got == want
    assert bool(lines_seen) == (setup == "line events")
    unwound = {line for lines in got["unwind"].values() for line in lines}
    lines = _UNWINDING.splitlines()

    def line_of(text: str) -> int:
        return lines.index(text) + 1

    left = ["    raise ValueError(y)", "    return [int(c) for c in text]"]
    left.append("    raise RuntimeError")
    left.append("        raise")  # (bare's: the first instruction of its line)
    assert {-line_of(text) for text in left} <= unwound
    assert -line_of("        x = None") in unwound  # (fin's exception leaves from its finally)
    assert line_of("    raise KeyError(n)") == marker
    assert -marker not in unwound
    assert {line_of("    yield 1")} <= {line for lines in got["throw"].values() for line in lines}

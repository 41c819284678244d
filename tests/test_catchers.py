"""The catchers (engine/catchers.py) in marked code, on every Python: what their hook may
swallow, and what must go on as it would in unmarked code."""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable

import pytest

from pytest_distcov.engine.catchers import ExceptionArcs, Table, add_catchers, bind
from pytest_distcov.engine.marks import plan

SOURCE = "def last(x):\n    if x.v:\n        return 1\n"


def _marked(hook: Callable[[Table, bool], None]) -> types.FunctionType:
    """``last`` compiled with its catcher, the catcher calling ``hook``."""
    marks = plan(SOURCE, "/m.py")
    add_catchers(marks)
    with warnings.catch_warnings():  # ("'str' object is not callable": the hook's stand-in)
        warnings.simplefilter("ignore", SyntaxWarning)
        code = compile(marks.tree, "/m.py", "exec", dont_inherit=True)
    module = bind(code, hook)
    space: dict[str, object] = {}
    exec(module, space)
    func = space["last"]
    assert isinstance(func, types.FunctionType)
    return func


class _Boom:
    @property
    def v(self) -> bool:
        raise KeyError("boom")


def test_the_hook_records_the_arc_an_exception_took() -> None:
    """An exception raised on the branch line, leaving the function: its arc to the exit."""
    arcs = ExceptionArcs(lambda: True)
    last = _marked(arcs.hook)
    with pytest.raises(KeyError, match="boom") as info:
        last(_Boom())
    assert info.value.__context__ is None
    named: dict[str, set[object]] = {}
    arcs.take(named, lambda filename: filename)
    assert named == {"/m.py": {(2, -1)}}


def test_an_error_of_the_hook_itself_is_swallowed() -> None:
    """At the recursion limit (or out of memory) calling the hook raises: the user's
    exception goes on alone."""

    def failing(table: Table, exit: bool) -> None:
        raise RecursionError

    with pytest.raises(KeyError, match="boom") as info:
        _marked(failing)(_Boom())
    assert info.value.__context__ is None


def test_a_bug_of_the_hook_is_swallowed_and_noted() -> None:
    """A bug of the hook's own (here: ``recording`` raising ValueError) never reaches the
    user's exception, but the type of its first one is kept for the run's notes; the
    recursion limit or memory (the call itself failing, not a bug) leaves no note."""
    calls = 0

    def buggy() -> bool:
        nonlocal calls
        calls += 1
        raise ValueError(f"bug number {calls}")

    arcs = ExceptionArcs(buggy)
    assert arcs.failure_note() == ""
    for _ in range(2):
        with pytest.raises(KeyError, match="boom") as info:
            _marked(arcs.hook)(_Boom())
        assert info.value.__context__ is None
    assert calls == 2
    assert arcs.failed == ["ValueError"]
    assert "(ValueError)" in arcs.failure_note()
    assert "may be missing" in arcs.failure_note()

    for limit in (RecursionError, MemoryError):

        def at_the_limit(error: type[BaseException] = limit) -> bool:
            raise error

        limited = ExceptionArcs(at_the_limit)
        with pytest.raises(KeyError, match="boom"):
            _marked(limited.hook)(_Boom())
        assert limited.failed == []


def test_what_a_signal_handler_raises_while_the_hook_runs_goes_on() -> None:
    """A timeout a signal handler raises in the middle of the hook (here: from the hook's
    first call) is not swallowed, by the hook or by the catcher: it goes on, the user's
    exception as its context, as it would where the signal came in unmarked code."""

    def interrupted() -> bool:
        raise TimeoutError("the alarm")

    arcs = ExceptionArcs(interrupted)
    with pytest.raises(TimeoutError, match="the alarm") as info:
        _marked(arcs.hook)(_Boom())
    assert isinstance(info.value.__context__, KeyError)

"""Exception arcs of marked code: handlers in the code, not a callback for every exception.

coverage.py's C tracer records an arc from the last line a frame ran to the next line event
it sees. When an exception is raised on a branch line ``R`` (its condition, a loop's
iterator, a ``case``'s pattern or guard), that next event is on the first line of the
innermost handler around ``R`` that has lines of its own, or the code's exit:

* the code's exit, ``(R, -first)``, when nothing in the code handles it (the exception
  leaves the code);
* a ``with`` statement's line ``W``: its ``__exit__`` runs there, and coverage.py's report
  turns ``(R, W)`` into the arc to the statement after the ``with`` (its "with jump
  fixers"), whether the exception is caught later in the same code or not;
* a ``finally`` clause's first line, ``(R, F)``;
* an ``except`` clause's line (an ``except`` or ``finally`` body, where ``R`` can be, has no
  line of its own on the way out: the handler around the ``try`` statement counts).

Where that arc is one of ``R``'s branches (coverage.py's parser lists the way out of ``R``
that goes there too), the report counts that branch as taken; the markers never see it
(:mod:`.marks`: a marker fires when a way out starts, and the exception takes none). Before
Python 3.12 nothing tells an engine without a trace function where an exception went; from
3.12 ``PY_UNWIND`` does, but only as a global event, whose callback every exception leaving
any frame calls (millions of times in a suite that parses with exceptions). So each such
handler's protected body is wrapped, in the marked tree, in a ``try`` with a bare
``except`` that calls a hook and raises again (on lines of their own past the file's end,
as the markers' are):

* the hook is a constant of the code, put in place of :data:`HOOK` after compiling
  (:func:`bind`), so no name of the module or of builtins is looked up or added;
* it gets a table of the header lines of every branch line that handler is the first for,
  with the arcs to record for each: the line the exception was raised on in this frame is
  the traceback's (``tb_lineno``: the condition's own line, or where a call in it was made);
  a ``case`` also stands for the arcs of the cases tried before it, whose marker is in its
  body, where the exception never gets;
* a bare ``raise`` raises the same exception again, with its traceback unchanged (its
  ``tb_lineno`` entries; the frame's own ``f_lineno`` is the handler's line past the end while
  it runs, as a live-frame dump shows), even where calling the hook fails (at the recursion
  limit): that error is swallowed (:data:`SWALLOW`).

Every ``finally`` body also starts and ends with a ``pass`` on a line of its own (standing for
no arc): its first line then starts a line, where probes are, in the copy an exception runs
too, and no marker is the last statement of that copy (see :func:`add_catchers`).

A wrapper is added only where a table is not empty; it costs nothing while no exception
passes (Python 3.11+ has zero-cost ``try``; 3.10 one instruction at the start and end of the
body) and a call of the hook for each exception that does. Both marker engines use them: the
probes' (3.10, 3.11) and, without per-test contexts, the line events' (3.12+).
"""

from __future__ import annotations

import ast
import collections
import dis
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .marks import MarkPlan, Unmarkable

__all__ = ["HOOK", "SWALLOW", "ExceptionArcs", "Table", "add_catchers", "at_yield", "bind"]

Arc = tuple[int, int]
#: (line an exception may be raised on, the branch line it belongs to, the arc's end)
Table = tuple[tuple[int, int, int], ...]
#: The constant the marked tree calls, replaced by the engine's hook after compiling.
HOOK = "\x00pytest-distcov: exception arcs\x00"
#: The constant a handler catches around its call of the hook, replaced by :data:`HOOK_ERRORS`:
#: at the recursion limit (or out of memory) the call itself raises, and the user's exception
#: must go on unchanged, not chained to that one.
SWALLOW = "\x00pytest-distcov: the hook's own error\x00"
#: What calling the hook can raise by itself: the recursion limit, memory, and a bug of its own
#: (which must not replace the user's exception either). Nothing else is caught: a timeout a
#: signal handler raises while the hook runs goes on as it would in unmarked code.
HOOK_ERRORS = (RecursionError, MemoryError, AttributeError, LookupError, TypeError, ValueError)

_N = TypeVar("_N", bound=ast.AST)


@dataclass
class _Catch:
    """A handler (or the code's exit) with lines of its own, and the body it protects."""

    #: where the C tracer's next line event goes when an exception reaches it
    dest: int
    #: the code's exit: an exception thrown into a generator at a ``yield`` leaves no arc
    exit: bool
    #: the statements it protects (wrapped in place)
    body: list[ast.stmt]
    #: statements at the start of ``body`` that stay outside (a docstring, future imports)
    keep: int = 0
    #: line -> the arcs an exception raised there takes
    table: dict[int, set[Arc]] = field(default_factory=dict)


def _first_line(stmt: ast.stmt) -> int:
    decorators: list[ast.expr] = getattr(stmt, "decorator_list", None) or []
    return min([stmt.lineno, *(d.lineno for d in decorators)])


def _header_end(node: ast.AST) -> int | None:
    """The last line of a branching statement's own part (its condition, its iterator)."""
    if isinstance(node, (ast.If, ast.While)):
        return node.test.end_lineno
    if isinstance(node, (ast.For, ast.AsyncFor)):
        return node.iter.end_lineno
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.lineno  # (a one-line definition: its body is on this line)
    return None


def _prefix(body: list[ast.stmt], *, module: bool) -> int:
    """How many statements at the start of a scope's body stay outside its wrapper."""
    keep = 0
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        keep = int(isinstance(first.value.value, str))  # a docstring is one only when first
    if module:
        while (
            keep < len(body)
            and isinstance(body[keep], ast.ImportFrom)
            and getattr(body[keep], "module", None) == "__future__"
        ):
            keep += 1
    return keep


def add_catchers(marks: MarkPlan) -> None:
    """Wrap, in ``marks.tree``, each handler's protected body that an exception can leave
    with an arc that is one of its branch lines' (see the module's docstring); and start
    each ``finally`` body with a line of its own."""
    walker = _Walker(marks)
    walker.scope(marks.tree.body, 1, module=True)
    for catch in walker.catches:
        if catch.table:
            _wrap(marks, catch)
    for node in ast.walk(marks.tree):
        final = getattr(node, "finalbody", None)
        if final:
            # A finally body is compiled twice, the copy an exception runs right after the
            # other: its first line does not start a line there, and a probe (put where
            # lines start) would never see it run. A statement of its own line before it
            # makes it start one in both copies. And Python 3.10 gives the instruction that
            # raises again at the end of that copy the line of the last statement compiled,
            # where every way through the body gets: a marker there would fire for each. A
            # statement of its own line after it is that last one.
            final.insert(0, marks.add(()))
            final.append(marks.add(()))


class _Walker:
    """Finds, for each branch line, the first handler with lines of its own around it."""

    def __init__(self, marks: MarkPlan) -> None:
        self.marks = marks
        #: branch line -> where its markers' arcs go
        self.ways: dict[int, set[int]] = {}
        for arcs in marks.arcs:
            for start, end in arcs:
                self.ways.setdefault(start, set()).add(end)
        self.catches: list[_Catch] = []

    def note(self, line: int, last: int | None, catch: _Catch, reached: Iterable[Arc] = ()) -> None:
        arcs = set(reached)
        if line in self.marks.branches and catch.dest in self.ways.get(line, ()):
            arcs.add((line, catch.dest))
        if arcs:
            for raised in range(line, (last or line) + 1):
                catch.table.setdefault(raised, set()).update(arcs)

    def scope(self, body: list[ast.stmt], first: int, *, module: bool = False) -> None:
        catch = _Catch(-first, exit=True, body=body, keep=_prefix(body, module=module))
        self.catches.append(catch)
        self.walk(body, catch)

    def region(self, body: list[ast.stmt], dest: int) -> _Catch:
        catch = _Catch(dest, exit=False, body=body)
        self.catches.append(catch)
        return catch

    def walk(self, stmts: Iterable[ast.stmt], catch: _Catch) -> None:
        for stmt in stmts:
            self.note(stmt.lineno, _header_end(stmt), catch)
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.scope(stmt.body, _first_line(stmt))
            elif isinstance(stmt, (ast.If, ast.While, ast.For, ast.AsyncFor)):
                self.walk(stmt.body, catch)
                self.walk(stmt.orelse, catch)
            elif isinstance(stmt, ast.Match):
                self.match(stmt, catch)
            elif isinstance(stmt, (ast.With, ast.AsyncWith)):
                self.walk(stmt.body, self.region(stmt.body, stmt.lineno))
            elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
                self.try_(stmt, catch)

    def match(self, stmt: ast.Match, catch: _Catch) -> None:
        for case in stmt.cases:
            pattern = case.pattern
            if pattern.lineno >= self.marks.base:
                continue  # (the catch-all case the markers added)
            last = max(pattern.end_lineno or 0, getattr(case.guard, "end_lineno", 0) or 0)
            self.note(pattern.lineno, last, catch, _reached(case, self.marks))
            self.walk(case.body, catch)

    def try_(self, stmt: ast.stmt, catch: _Catch) -> None:
        body: list[ast.stmt] = getattr(stmt, "body", [])
        handlers: list[ast.ExceptHandler] = getattr(stmt, "handlers", [])
        orelse: list[ast.stmt] = getattr(stmt, "orelse", [])
        final: list[ast.stmt] = getattr(stmt, "finalbody", [])
        if type(stmt).__name__ == "TryStar" and _branches_in(stmt, self.marks):
            raise Unmarkable(f"line {stmt.lineno}: branches inside a try with except*")
        if handlers:
            self.walk(body, self.region(body, handlers[0].lineno))
        else:
            self.walk(body, self.region(body, _first_line(final[0])))
        for part in [orelse, *(h.body for h in handlers)]:
            self.walk(part, self.region(part, _first_line(final[0])) if final else catch)
        self.walk(final, catch)


def _reached(case: ast.match_case, marks: MarkPlan) -> list[Arc]:
    """The arcs a ``case`` being tried at all stands for: every earlier case failed. Its
    body's marker stands for them and its own way in (:func:`.marks._mark_match`); an
    exception raised by its pattern or guard never gets there, where coverage.py's tracer
    has recorded them with the case's line."""
    first = case.body[0] if case.body else None
    line = getattr(first, "lineno", 0)
    if not isinstance(first, ast.Pass) or line < marks.base:
        return []
    return [arc for arc in marks.arcs[line - marks.base] if arc[0] != case.pattern.lineno]


def _branches_in(node: ast.AST, marks: MarkPlan) -> bool:
    return any(getattr(n, "lineno", 0) in marks.branches for n in ast.walk(node))


def _wrap(marks: MarkPlan, catch: _Catch) -> None:
    body = catch.body[catch.keep :]
    if not body:
        return
    line = marks.base + len(marks.arcs)
    marks.arcs.append(())  # (a line of its own, standing for no arc)
    table = tuple(
        (raised, arc[0], arc[1])
        for raised, arcs in sorted(catch.table.items())
        for arc in sorted(arcs)
    )

    def at(node: _N) -> _N:
        node.lineno = node.end_lineno = line  # type: ignore[attr-defined]
        node.col_offset, node.end_col_offset = 0, 4  # type: ignore[attr-defined]
        return node

    call = at(
        ast.Call(
            func=at(ast.Constant(HOOK)),
            # (a tuple of constants is a constant too)
            args=[at(ast.Constant(table)), at(ast.Constant(catch.exit))],  # type: ignore[arg-type]
            keywords=[],
        )
    )
    # On 3.12+ the handler that swallows the hook's own error has no line, nor has the
    # ``raise`` after it: line events start at an exception handler and after it, and that
    # way is taken only where calling the hook failed, at the recursion limit, where a line
    # event's callback cannot be called either (its error would go on, the user's as its
    # context). The compiler gives the ``raise`` on the usual way the catcher's line (that of
    # the instruction before it), so a frame left that way reports that line; one left the
    # other way reports none (``f_lineno`` None).
    hidden = at if sys.version_info < (3, 12) else _nowhere
    ignored = hidden(ast.Constant(SWALLOW))
    swallow = hidden(ast.ExceptHandler(type=ignored, name=None, body=[hidden(ast.Pass())]))
    guarded = at(ast.Try(body=[at(ast.Expr(call))], handlers=[swallow], orelse=[], finalbody=[]))
    again = [guarded, hidden(ast.Raise())]
    handler = at(ast.ExceptHandler(type=None, name=None, body=again))
    catch.body[catch.keep :] = [at(ast.Try(body=body, handlers=[handler], orelse=[], finalbody=[]))]


def _nowhere(node: _N) -> _N:
    """``node`` with no location: its code has no line number (3.12+)."""
    node.lineno = node.end_lineno = -1  # type: ignore[attr-defined]
    node.col_offset = node.end_col_offset = -1  # type: ignore[attr-defined]
    return node


def bind(code: types.CodeType, hook: Callable[[Table, bool], None]) -> types.CodeType:
    """``code`` with :data:`HOOK` replaced by ``hook`` (and :data:`SWALLOW` by :data:`HOOK_ERRORS`)
    in it and all the code nested in it."""
    consts = code.co_consts
    new: list[object] | None = None
    for i, const in enumerate(consts):
        if type(const) is types.CodeType:
            replaced: object = bind(const, hook)
        elif type(const) is str and const == HOOK:
            replaced = hook
        elif type(const) is str and const == SWALLOW:
            replaced = HOOK_ERRORS
        else:
            continue
        if replaced is not const:
            if new is None:
                new = list(consts)
            new[i] = replaced
    return code if new is None else code.replace(co_consts=tuple(new))


_YIELD_VALUE = dis.opmap.get("YIELD_VALUE", -1)
_YIELD_FROM = dis.opmap.get("YIELD_FROM", -1)
_RESUME = dis.opmap.get("RESUME", -1)


def at_yield(code: bytes, lasti: int) -> bool:
    """True if a frame whose last instruction was at ``lasti`` is left at a ``yield`` (an
    exception thrown into a generator or coroutine there): coverage.py's tracer then sees no
    real return, and records no arc to the code's exit (its ``real_return``)."""
    if lasti < 0 or lasti >= len(code):
        return False
    if sys.version_info >= (3, 11):
        if code[lasti] == _RESUME:  # (3.13+: the instruction after the yield)
            return lasti >= 2 and code[lasti - 2] == _YIELD_VALUE
        return len(code) != lasti + 2 and code[lasti + 2] == _RESUME
    if code[lasti] == _YIELD_VALUE:
        return True
    return len(code) > lasti + 2 and code[lasti + 2] == _YIELD_FROM


#: Where an exception thrown into a generator (``throw()``, ``close()``) at a ``yield`` shows
#: coverage.py's tracer no line there, so that no arc is recorded for it: on 3.11 whatever
#: handler the exception reaches ("all"); on 3.10, 3.12 and 3.13 only where it leaves the
#: code ("exit"); from 3.14 never ("none"), the tracer records that arc as any other.
AT_YIELD = (
    "exit"
    if sys.version_info < (3, 11)
    else "all"
    if sys.version_info < (3, 12)
    else "exit"
    if sys.version_info < (3, 14)
    else "none"
)


class ExceptionArcs:
    """The arcs the catchers' hook found an exception took (see the module's docstring),
    kept for the engine's next phase: a deque the hook appends to and :meth:`take` takes
    from, without a lock (a signal handler or a finalizer may run the hook in the middle of
    either). Without contexts an arc counts once for the run (``seen``)."""

    def __init__(self, recording: Callable[[], bool], at_yield_rule: str = AT_YIELD) -> None:
        self._raised: collections.deque[tuple[str, Arc]] = collections.deque()
        self._seen: set[tuple[str, Arc]] = set()
        #: the type of the hook's first error of its own (a bug, or one a signal handler
        #: raised while it ran; not the recursion limit or memory): the exception it was
        #: handling, and perhaps later ones, went unrecorded
        self.failed: list[str] = []
        self.hook = _exception_hook(self._raised, self._seen, recording, at_yield_rule, self.failed)

    def note_into(self, notes: list[str]) -> None:
        """The failure's note into ``notes``, once (nothing where the hook never failed)."""
        if self.failed and self.failure_note() not in notes:
            notes.append(self.failure_note())

    def failure_note(self) -> str:
        """A note for the run where the hook failed ('' where it never did)."""
        if not self.failed:
            return ""
        return (
            f"recording where an exception went failed ({self.failed[0]}): arcs that"
            " exceptions took may be missing from the data; unless a signal handler of the"
            " suite raised it, please report this as a bug of pytest-distcov"
        )

    def take(self, named: dict[str, Any], name_for: Callable[[str], str | None]) -> None:
        """Add the arcs found since the last call to ``named``, by measured file name (a
        file's items joined into a new set: the engine's are not changed in place)."""
        raised = self._raised
        found: dict[str, set[Arc]] = {}
        while True:
            try:
                filename, arc = raised.popleft()
            except IndexError:
                break
            name = name_for(filename)
            if name is not None:
                found.setdefault(name, set()).add(arc)
        for name, arcs in found.items():
            named[name] = named[name] | arcs if name in named else arcs


def _exception_hook(
    raised: collections.deque[tuple[str, Arc]],
    seen: set[tuple[str, Arc]],
    recording: Callable[[], bool],
    at_yield_rule: str,
    failed: list[str],
) -> Callable[[Table, bool], None]:
    """The hook a catcher's handler calls: if the exception being handled was raised in the
    calling frame on a line of ``table``, that line's arc into ``raised`` (once: ``seen``).
    It raises nothing of its own (:data:`HOOK_ERRORS` at most) and takes no lock: it runs in
    the user's code, on the way of their exception, perhaps in a signal handler that
    interrupted it. What a signal handler raises while it runs goes on (a timeout must not be
    lost); an arc is appended before it counts as seen, so that such an interruption loses
    none (at worst one is appended twice). A bug of its own is swallowed too, but its first
    one is kept in ``failed`` for the run's notes."""
    getframe = sys._getframe
    exc_info = sys.exc_info
    every_yield = at_yield_rule == "all"
    exit_yield = at_yield_rule == "exit"

    def on_exception(table: Table, exit: bool) -> None:
        try:
            if not recording():
                return
            frame = getframe(1)
            tb = exc_info()[2]
            while tb is not None and tb.tb_frame is not frame:
                tb = tb.tb_next
            if tb is None:
                return
            line = tb.tb_lineno
            for raised_on, start, end in table:
                if raised_on != line:
                    continue
                found = (frame.f_code.co_filename, (start, end))
                if found in seen:
                    continue
                if (every_yield or (exit_yield and exit and end < 0)) and at_yield(
                    frame.f_code.co_code, tb.tb_lasti
                ):
                    continue  # (the tracer sees no line there: no arc)
                raised.append(found)
                seen.add(found)
        except (RecursionError, MemoryError):  # never in the way of the user's exception
            pass
        except HOOK_ERRORS as exc:  # a bug of ours: noted, never in the user's way either
            if not failed:
                # (not contextlib.suppress: entering it is a call, which can fail by itself)
                # (its type alone: the exception's own __str__ could raise anything)
                try:  # noqa: SIM105
                    failed.append(type(exc).__name__)
                except HOOK_ERRORS:
                    pass

    return on_exception

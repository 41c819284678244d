"""Branch markers: a module's source rewritten so that line events alone tell its branches.

coverage.py's branches are the arcs from the lines its parser gives more than one exit (an
``if``, a loop's header, a ``case``). For each such line this module inserts a marker statement
(``pass``, with a line number of its own past the end of the file, which
:mod:`.nearlines` may move to a blank line near it) at the start of each way out
of it: the body, and an ``else`` (added when missing) for the other way. A marker that fires
means its arc was taken; which arc is coverage.py's parser's answer, never our own idea of "the
next statement". A ``case`` body's marker also means that every earlier ``case`` failed (a
``case _`` with a marker is added when no case is irrefutable).

Where a branch line cannot be mapped to exactly one arc per marker (a construct this module does
not know, a destination the parser does not list), the file is not marked: :func:`plan` says
why, and the caller measures that file another way. The real lines' events are unchanged: each
marker only adds a statement of its own.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_distcov.covapi.parser import Exits

__all__ = ["MarkPlan", "Unmarkable", "plan"]

Arc = tuple[int, int]


class Unmarkable(Exception):
    """A file whose branches cannot be marked exactly: measure it another way."""


@dataclass
class MarkPlan:
    """A marked module: its tree to compile, and what each marker line means."""

    tree: ast.Module
    #: marker lines start here (past the file's last line; see :attr:`nodes`)
    base: int
    #: marker line - base -> the arcs it stands for
    arcs: list[tuple[Arc, ...]] = field(default_factory=list)
    #: every branch line of the file -> its possible destinations (coverage.py's parser)
    branches: dict[int, frozenset[int]] = field(default_factory=dict)
    #: the nodes on the markers' lines (each marker's ``pass``, a catch-all case's pattern)
    nodes: list[ast.Pass | ast.MatchAs] = field(default_factory=list)

    def add(self, arcs: Iterable[Arc]) -> ast.Pass:
        line = self.base + len(self.arcs)
        self.arcs.append(tuple(arcs))
        node = ast.Pass(lineno=line, col_offset=0, end_lineno=line, end_col_offset=4)
        self.nodes.append(node)
        return node

    def on_marker_line(self, node: ast.MatchAs) -> ast.MatchAs:
        """``node``, on the line of the marker added next: recorded with the markers'."""
        self.nodes.append(node)
        return node


def _first_line(stmt: ast.stmt) -> int:
    """The line coverage.py gives a statement: a decorated definition starts at its first
    decorator."""
    decorators: list[ast.expr] = getattr(stmt, "decorator_list", None) or []
    return min([stmt.lineno, *(d.lineno for d in decorators)])


def _irrefutable(case: ast.match_case) -> bool:
    pattern = case.pattern
    while isinstance(pattern, ast.MatchAs) and pattern.pattern is not None:
        pattern = pattern.pattern
    return case.guard is None and isinstance(pattern, ast.MatchAs) and pattern.pattern is None


def _exits(source: str, filename: str) -> Exits:
    """coverage.py's parser's possible exits of each line, its exit counts, and its AST."""
    from pytest_distcov.covapi.parser import exits_of

    return exits_of(source, filename)


def _same_line_body(node: ast.If, line: int) -> tuple[int, int] | None:
    """The columns of an ``if``'s body when it is all on the ``if``'s line."""
    body = node.body
    if all(s.lineno == line and s.end_lineno == line for s in body):
        end = body[-1].end_col_offset
        assert end is not None
        return body[0].col_offset, end
    return None


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
_WITHS = (ast.With, ast.AsyncWith)
#: ``try`` with ``except*`` (3.11+)
_TRY_STAR: tuple[type[ast.stmt], ...] = (ast.TryStar,) if hasattr(ast, "TryStar") else ()
#: what guards the statements inside it: an exception leaving them goes there first
_GUARDS: tuple[type[ast.stmt], ...] = (ast.Try, *_TRY_STAR, *_WITHS)


def _with_stacks(
    tree: ast.Module,
) -> tuple[dict[int, tuple[ast.With | ast.AsyncWith, ...]], list[ast.stmt]]:
    """id(node) -> the ``with`` statements of its own scope around it, outermost first, for
    the module and every statement (expressions hold none: a lambda's body is one); and every
    statement."""
    stacks: dict[int, tuple[ast.With | ast.AsyncWith, ...]] = {id(tree): ()}
    found: list[ast.stmt] = []
    pending: list[tuple[list[ast.stmt], tuple[ast.With | ast.AsyncWith, ...]]] = [(tree.body, ())]
    while pending:
        stmts, withs = pending.pop()
        for stmt in stmts:
            stacks[id(stmt)] = withs
            found.append(stmt)
            inner = () if isinstance(stmt, _SCOPES) else withs
            for name in ("body", "orelse", "finalbody"):
                value = getattr(stmt, name, None)
                if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                    if name == "body" and isinstance(stmt, _WITHS):
                        pending.append((value, (*withs, stmt)))
                    else:
                        pending.append((value, inner))
            for part in (*getattr(stmt, "handlers", ()), *getattr(stmt, "cases", ())):
                pending.append((part.body, withs))
    return stacks, found


def _through_with(arc: Arc, withs: tuple[ast.With | ast.AsyncWith, ...]) -> Arc:
    """The arc a trace function records for ``arc``: a jump out of a ``with`` block (a return,
    break or continue, a loop's end, a branch's way past the block) first goes to the ``with``
    line, whose exit runs; coverage.py's report then treats that arc as it treats the
    tracer's (``PythonParser.translate_arcs``)."""
    line, dest = arc
    if withs:
        inner = withs[-1]
        end = inner.end_lineno or inner.lineno
        if not inner.lineno <= dest <= end:
            return (line, inner.lineno)
    return arc


def plan(source: str, filename: str) -> MarkPlan:  # noqa: PLR0915 - one pass, one state
    """Mark ``source``'s branches, or raise :class:`Unmarkable` saying why."""
    exits, counts, parsed = _exits(source, filename)
    branches = {line: frozenset(exits.get(line, ())) for line, n in counts.items() if n > 1}
    tree = parsed if parsed is not None else ast.parse(source, filename)  # (one parse, not two)
    nlines = source.count("\n") + 1
    marks = MarkPlan(tree, base=nlines + 1, branches=branches)
    marked: set[int] = set()
    stacks, statements = _with_stacks(tree)

    def mark(node: ast.AST, arcs: Iterable[Arc]) -> ast.Pass:
        withs = stacks[id(node)]
        return marks.add(_through_with(arc, withs) for arc in arcs)

    #: one-line ``if`` bodies, blanked (``pass``) in a variant of the source: there the line's
    #: only exit is where its false way goes
    blank: dict[int, tuple[int, int]] = {}

    def two_ways(line: int, body: list[ast.stmt], what: str) -> tuple[int, int]:
        dests = branches[line]
        # the body's first statement that runs (``x: int`` in a function does not)
        start, end = _first_line(body[0]), max(s.end_lineno or s.lineno for s in body)
        inside = {d for d in dests if start <= d <= end}
        others = dests - inside
        if len(inside) != 1 or len(others) != 1:
            raise Unmarkable(
                f"line {line} ({what}) has exits {sorted(dests)}, not one into its body"
                f" (lines {start}-{end}) and one other"
            )
        return next(iter(inside)), next(iter(others))

    def parent_lists(node: ast.AST) -> Iterable[list[ast.stmt]]:
        for name in ("body", "orelse", "finalbody"):
            value = getattr(node, name, None)
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                yield value
        for handler in getattr(node, "handlers", ()):
            yield handler.body

    one_line_ifs: list[tuple[ast.If, int]] = []
    for node in [tree, *statements]:
        if isinstance(node, (ast.If, ast.While, ast.For, ast.AsyncFor)):
            line = node.lineno
            if line not in branches:
                continue
            if line in marked:
                raise Unmarkable(f"line {line} holds two branching statements")
            marked.add(line)
            if isinstance(node, ast.If) and _first_line(node.body[0]) == line:
                span = _same_line_body(node, line)
                if span is None:
                    raise Unmarkable(f"line {line} (if): a body that starts on its line")
                if node.orelse:  # the false way goes to the else's (or elif's) first line
                    other = _first_line(node.orelse[0])
                    one_line_ifs.append((node, other))
                else:
                    blank[line] = span
                    one_line_ifs.append((node, 0))
                continue
            into, other = two_ways(line, node.body, type(node).__name__.lower())
            node.body.insert(0, mark(node, [(line, into)]))
            node.orelse.insert(0, mark(node, [(line, other)]))
        elif isinstance(node, ast.Match):
            _mark_match(
                node,
                branches=branches,
                marks=marks,
                marked=marked,
                two_ways=two_ways,
                withs=stacks[id(node)],
            )
        for stmts in parent_lists(node):
            for i in range(len(stmts) - 1, -1, -1):
                stmt = stmts[i]
                if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    continue
                line = stmt.lineno
                if line not in branches:
                    continue
                marked.add(line)
                leave = -_first_line(stmt)
                dests = branches[line]
                others = dests - {leave}
                if leave not in dests or len(others) != 1:
                    raise Unmarkable(
                        f"line {line} (a one-line definition) has exits {sorted(dests)}"
                    )
                body = stmt.body
                at = 1 if body and _is_docstring(body[0]) else 0
                body.insert(at, marks.add([(line, leave)]))  # in the body's own scope
                stmts.insert(i + 1, mark(stmt, [(line, next(iter(others)))]))
    if one_line_ifs:
        falls = _false_ways(source, filename, blank)
        for node, known in one_line_ifs:
            line = node.lineno
            other = known or falls.get(line, 0)
            taken = branches[line] - {other}
            if other not in branches[line] or len(taken) != 1:
                raise Unmarkable(f"line {line} (if, one line) has exits {sorted(branches[line])}")
            node.body.insert(0, mark(node, [(line, next(iter(taken)))]))
            node.orelse.insert(0, mark(node, [(line, other)]))
    left = set(branches) - marked
    if left:
        raise Unmarkable(f"branch lines {sorted(left)[:5]} are of no construct marked here")
    _check_finally_ends(marks)
    return marks


def _check_finally_ends(marks: MarkPlan) -> None:
    """Raise :class:`Unmarkable` for a marker inside a ``finally`` whose arc leaves it by its
    end (``finally:`` / ``if lock: lock.release()``). The compiler copies a ``finally`` into
    each way out of its ``try`` (the end of it, a ``return``, a ``break``, an exception),
    and the marker with it: only the copy at the end of the ``try`` goes where the arc says;
    the C tracer records the others' ways out (a ``return``'s exit) instead. An arc to the
    code's exit is every copy's way out too, unless the ``try`` is inside another ``try`` or
    a ``with`` of its scope (an exception the copy raises again goes there first)."""
    markers = {id(node): node.lineno for node in marks.nodes if isinstance(node, ast.Pass)}
    # (statements, the innermost finally's lines and whether its try is inside a try or a
    # with of its scope, whether these statements are)
    Walk = tuple[list[ast.stmt], tuple[int, int, bool] | None, bool]
    pending: list[Walk] = [(marks.tree.body, None, False)]
    while pending:
        stmts, span, guarded = pending.pop()
        for stmt in stmts:
            line = markers.get(id(stmt))
            if line is not None and span is not None:
                first, last, exits_guarded = span
                for start, dest in marks.arcs[line - marks.base]:
                    if (dest > 0 and not first <= dest <= last) or (dest <= 0 and exits_guarded):
                        raise Unmarkable(
                            f"line {start}: a branch leaving the finally of lines"
                            f" {first}-{last} by its end"
                        )
            scope = isinstance(stmt, _SCOPES)
            inner = None if scope else span
            within = not scope and (guarded or isinstance(stmt, _GUARDS))
            for name in ("body", "orelse"):
                value = getattr(stmt, name, None)
                if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                    pending.append((value, inner, within))
            final: list[ast.stmt] = getattr(stmt, "finalbody", None) or []
            real = [s for s in final if id(s) not in markers]
            if real:  # (a one-line definition's marker may follow its last statement)
                end = max(s.end_lineno or s.lineno for s in real)
                pending.append((final, (_first_line(real[0]), end, guarded), within))
            for part in (*getattr(stmt, "handlers", ()), *getattr(stmt, "cases", ())):
                pending.append((part.body, inner, within))


def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _false_ways(source: str, filename: str, blank: dict[int, tuple[int, int]]) -> dict[int, int]:
    """Where each one-line ``if`` of ``blank`` goes when false: its only exit once its body is
    ``pass`` (the rest of the file, and so every line number, unchanged)."""
    if not blank:
        return {}
    lines = source.splitlines(keepends=True)
    for line, (start, end) in blank.items():
        text = lines[line - 1].encode()
        lines[line - 1] = (text[:start] + b"pass" + text[end:]).decode()
    exits, _, _ = _exits("".join(lines), filename)
    return {line: next(iter(exits[line])) for line in blank if len(exits.get(line, ())) == 1}


def _mark_match(
    node: ast.Match,
    *,
    branches: dict[int, frozenset[int]],
    marks: MarkPlan,
    marked: set[int],
    two_ways: Callable[[int, list[ast.stmt], str], tuple[int, int]],
    withs: tuple[ast.With | ast.AsyncWith, ...],
) -> None:
    cases = node.cases
    lines = [c.pattern.lineno for c in cases]
    if len(set(lines)) != len(lines):
        raise Unmarkable(f"line {lines[0]}: two cases on one line")
    failed: list[Arc] = []  # arcs taken when every case so far failed
    for k, case in enumerate(cases):
        line = lines[k]
        if line in branches:
            marked.add(line)
            into, other = two_ways(line, case.body, "case")
            case.body.insert(0, marks.add(_through_with(a, withs) for a in [*failed, (line, into)]))
            failed.append((line, other))
        elif _irrefutable(case):
            case.body.insert(0, marks.add(_through_with(a, withs) for a in failed))
            failed = []
            break
        else:
            raise Unmarkable(f"line {line} (case) is not a branch of coverage.py's")
    if failed:  # no case matched: the arcs of every failed case
        line = marks.base + len(marks.arcs)
        default = ast.match_case(
            pattern=marks.on_marker_line(
                ast.MatchAs(
                    pattern=None,
                    name=None,
                    lineno=line,
                    col_offset=0,
                    end_lineno=line,
                    end_col_offset=1,
                )
            ),
            guard=None,
            body=[marks.add(_through_with(a, withs) for a in failed)],
        )
        cases.append(default)

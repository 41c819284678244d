"""Branch markers on lines near their code (CPython 3.12 and 3.13): line events at full speed.

CPython 3.12 and 3.13 keep the line of each instrumented instruction as one signed byte,
relative to ``co_firstlineno + offset // 16`` (the offset in code units); an instruction whose
line is outside ``-126..127`` of that has its line looked up in the code object's line table
at every event, a walk from the table's start (``compute_line_delta`` in CPython's
``Python/instrumentation.c``). A branch marker's line past the end of the file
(:mod:`.marks`) is outside that window in every code object but those at the file's end: on
dateutil's modules, 1,484 of the 1,673 code units on markers' lines were, and with per-test
contexts each marker fires once per test phase. Python 3.14 keeps the whole delta.

:func:`relocate` compiles a marked module again with each marker that stands for arcs on a
line of the file whose text is blank or a comment (or a line of a string that looks so) and
that no instruction has, inside the window of every instruction on the marker's line, where
there is one: each marker a line of its own. The second compile must give the same
instructions, exception tables and line ranges (the markers' lines mapped) as the first, or
the first is kept. Instructions the compiler puts on a marker's line (a loop's jump back, a
function's implicit return) move with it: a traceback or a debugger stopped there (a Ctrl-C
at a loop's end) shows that blank or comment line, where it showed none before.
"""

from __future__ import annotations

import bisect
import types
from collections.abc import Iterator, Sequence

from .marks import MarkPlan

__all__ = ["codes_of", "relocate", "same_but_lines"]

Arc = tuple[int, int]

#: The lines around ``co_firstlineno + offset // 16`` that CPython 3.12 and 3.13 keep in the
#: instruction's own byte (``-126 <= delta <= 127``).
_BELOW, _ABOVE = 126, 127


def relocate(
    marks: MarkPlan, first: types.CodeType, text: str, filename: str
) -> tuple[types.CodeType, dict[int, int]]:
    """``first`` (``marks.tree`` compiled from ``text``) compiled again with markers near
    their code, and each moved marker's old line -> new line; ``first`` and no moves where
    none can move or the second compile differs."""
    blank = [n for n, line in enumerate(text.split("\n"), 1) if _blank(line)]
    moves = _moves(first, marks.base, marks.arcs, blank)
    if not moves:
        return first, {}
    _move(marks, moves)
    second = compile(marks.tree, filename, "exec", dont_inherit=True)
    if not same_but_lines(first, second, moves):
        _move(marks, {new: old for old, new in moves.items()})  # (the plan as it was)
        return first, {}
    return second, moves


def _move(marks: MarkPlan, moves: dict[int, int]) -> None:
    for node in marks.nodes:
        new = moves.get(node.lineno)
        if new is not None:
            node.lineno = node.end_lineno = new


def _blank(line: str) -> bool:
    """A line of nothing but blanks or a comment (or a line of a string that looks so)."""
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def _moves(
    first: types.CodeType, base: int, arcs: Sequence[tuple[Arc, ...]], blank: list[int]
) -> dict[int, int]:
    """Each marker's new line, for the markers that have one: a line of ``blank`` inside the
    window every instruction with its line allows, that no instruction has."""
    taken: set[int] = set()
    windows: dict[int, tuple[int, int]] = {}
    for code in codes_of(first):
        top = code.co_firstlineno
        for start, end, line in code.co_lines():
            if line is None:
                continue
            if line < base:
                taken.add(line)
                continue
            if line - base >= len(arcs) or not arcs[line - base]:
                continue  # (a catcher's own line, standing for no arc: it seldom runs)
            units = start // 2, end // 2 - 1
            low, high = top + (units[1] >> 4) - _BELOW, top + (units[0] >> 4) + _ABOVE
            known = windows.get(line)
            if known is not None:
                low, high = max(low, known[0]), min(high, known[1])
            windows[line] = (low, high)
    free = [line for line in blank if line < base and line not in taken]
    moves: dict[int, int] = {}
    # Earliest end of window first, each the first free line of its window: as many markers
    # as can have a line do.
    for old, (low, high) in sorted(windows.items(), key=lambda item: (item[1][1], item[0])):
        at = bisect.bisect_left(free, max(low, 1))
        if at < len(free) and free[at] <= high:
            moves[old] = free.pop(at)
    return moves


def same_but_lines(first: types.CodeType, second: types.CodeType, moves: dict[int, int]) -> bool:
    """Whether ``second`` is ``first`` with the lines in ``moves`` moved, and nothing else:
    the same code objects, instructions, exception tables and line ranges."""
    ones, others = list(codes_of(first)), list(codes_of(second))
    if len(ones) != len(others):
        return False
    for one, other in zip(ones, others, strict=True):
        if one.co_code != other.co_code or one.co_firstlineno != other.co_firstlineno:
            return False
        for name in ("co_exceptiontable", "co_qualname"):  # (3.11+)
            if getattr(one, name) != getattr(other, name):
                return False
        mapped = [(s, e, moves.get(n, n) if n is not None else n) for s, e, n in one.co_lines()]
        if mapped != list(other.co_lines()):
            return False
    return True


def codes_of(code: types.CodeType) -> Iterator[types.CodeType]:
    """``code`` and every code object nested in it."""
    pending = [code]
    while pending:
        item = pending.pop()
        yield item
        pending.extend(c for c in item.co_consts if type(c) is types.CodeType)

"""Branch markers near their code (engine/nearlines.py).

On Python 3.12 and 3.13 a marker whose line is far from its instruction (a marker's line is
past the end of the file) has its line looked up in the line table at every event: the
branch engine moves each marker that can be moved to a free line inside its window. These
tests check the move on compiled code (any Python the engine runs on) and that a measured
run with per-test contexts still reports what pytest-cov's does.
"""

from __future__ import annotations

import ast
import sys
import types
from pathlib import Path

import pytest
from _pytest.assertion.rewrite import rewrite_asserts

from pytest_distcov.engine.marks import MarkPlan, plan
from pytest_distcov.engine.nearlines import codes_of, relocate, same_but_lines

from .helpers import RUN_TIMEOUT, run_pytest
from .test_contexts import assert_same_labels, reported_contexts

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 12), reason="the branch engine runs on Python 3.12+"
)

#: Lines of plain statements: no blank line, no comment, so no line among them is free.
FILLER = "".join(f"z{i} = {i}\n" for i in range(300))

#: A function with branches near a blank line and a comment, then the filler: the markers'
#: lines past the end of the file are far from the function.
NEAR_FREE = (
    "def pick(x):\n"
    "    # which way\n"
    "\n"
    "    if x > 1:\n"
    "        y = 1\n"
    "\n"
    "    else:\n"
    "        y = 2\n"
    "    for i in range(x):\n"
    "        y += i\n"
    "    return y\n"
    "\n"
    "\n" + FILLER
)


def _marked(source: str) -> tuple[MarkPlan, types.CodeType]:
    marks = plan(source, "m.py")
    return marks, compile(marks.tree, "m.py", "exec", dont_inherit=True)


def _deltas(code: types.CodeType, lines: set[int]) -> list[int]:
    """What CPython 3.12 and 3.13 compute for each instruction with one of ``lines``: its line
    less ``co_firstlineno + offset // 16`` (kept in a byte from -126 to 127)."""
    out = []
    for item in codes_of(code):
        for start, end, line in item.co_lines():
            if line in lines:
                out.extend(
                    line - item.co_firstlineno - (unit >> 4) for unit in range(start // 2, end // 2)
                )
    return out


def _in_window(delta: int) -> bool:
    return -126 <= delta <= 127


def test_markers_move_to_free_lines_inside_their_window() -> None:
    marks, first = _marked(NEAR_FREE)
    markers = {marks.base + i for i, arcs in enumerate(marks.arcs) if arcs}
    assert len(markers) == 4  # the if's two ways, the loop's two
    assert not any(_in_window(d) for d in _deltas(first, markers))  # far, before the move
    second, moves = relocate(marks, first, NEAR_FREE, "m.py")
    assert set(moves) == markers
    new = set(moves.values())
    assert len(new) == len(moves)  # a line of its own each
    text = NEAR_FREE.splitlines()
    assert all(text[n - 1].strip() in ("", "# which way") for n in new)  # blank or comment
    plain = compile(NEAR_FREE, "m.py", "exec")
    real = {line for c in codes_of(plain) for _, _, line in c.co_lines()}
    assert not new & real
    deltas = _deltas(second, new)
    assert deltas
    assert all(_in_window(d) for d in deltas)
    assert same_but_lines(first, second, moves)
    assert not same_but_lines(first, second, {})  # (the lines did move)


def test_a_marker_with_no_free_line_in_its_window_keeps_its_line() -> None:
    """Free lines only far from the second function (a blank block, then 300 plain lines
    above it, 300 below): its markers stay past the end of the file; the first function,
    near the blank block, has its own moved."""
    near = "def near(x):\n    if x:\n        return 1\n    return 2\n"
    far = "def far(x):\n    if x > 1:\n        x = 1\n    return x\n"
    source = near + "\n" * 5 + FILLER + far + FILLER.rstrip("\n")
    marks, first = _marked(source)
    second, moves = relocate(marks, first, source, "m.py")
    by_name = {c.co_name: c for c in codes_of(first)}
    in_near, in_far = ({n for _, _, n in by_name[f].co_lines()} for f in ("near", "far"))
    markers = {marks.base + i for i, arcs in enumerate(marks.arcs) if arcs}
    assert len(markers & in_near) == len(markers & in_far) == 2
    assert set(moves) == markers & in_near
    assert all(5 <= n <= 9 for n in moves.values())  # the blank block
    assert markers & in_far <= {line for c in codes_of(second) for _, _, line in c.co_lines()}
    assert same_but_lines(first, second, moves)


def test_a_second_compile_that_differs_keeps_the_first() -> None:
    """``relocate`` keeps the code it was given when the code compiled again is not it with
    the markers' lines moved (here: given another module's code as the first compile)."""
    marks, _ = _marked(NEAR_FREE)
    other = compile(NEAR_FREE.replace("y = 2", "y = 3"), "m.py", "exec")
    code, moves = relocate(marks, other, NEAR_FREE, "m.py")
    assert code is other
    assert moves == {}
    one, two = compile("x = 1\n", "m.py", "exec"), compile("x = 1\n\ny = 2\n", "m.py", "exec")
    assert not same_but_lines(one, two, {})
    assert same_but_lines(one, compile("x = 1\n", "m.py", "exec"), {})
    assert not same_but_lines(one, compile("\nx = 1\n", "m.py", "exec"), {})  # a line moved
    assert same_but_lines(one, compile("\nx = 1\n", "m.py", "exec"), {1: 2})


def test_nothing_moves_where_every_line_is_taken() -> None:
    source = "def f(x):\n    if x:\n        return 1\n    return 2"  # (no line after it)
    marks, first = _marked(source)
    code, moves = relocate(marks, first, source, "m.py")
    assert code is first
    assert moves == {}


#: A module whose branches sit far above the end of the file, and tests that take each way in
#: phases of their own (a fixture's setup and teardown too).
FAR_TESTS = """\
import pytest

from far import pick


@pytest.fixture
def twice():
    assert pick(0) == 2
    yield
    assert pick(2) == 2


def test_one():
    assert pick(2) == 2


def test_other(twice):
    assert pick(0) == 2
"""


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="markers move on Python 3.12 and 3.13")
@pytest.mark.parametrize("workers", ["0", "2"])
def test_moved_markers_report_the_tests_pytest_cov_reports(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    """Per-test contexts with branches on a module whose markers moved: every line and
    branch of the report names the same tests as a serial pytest-cov run's on coverage.py's
    C tracer."""
    monkeypatch.delenv("DISTCOV_ENGINE", raising=False)
    pytester.makepyfile(far=NEAR_FREE, test_far=FAR_TESTS)
    pytester.makeini("[pytest]\naddopts = -p no:randomly -p no:cacheprovider\n")
    monkeypatch.setenv("COVERAGE_CORE", "ctrace")
    monkeypatch.setenv("COVERAGE_FILE", str(pytester.path / "ref.coverage"))
    args = [sys.executable, "-m", "pytest", "-p", "no:distcov", "-p", "no:xdist", "--cov=far"]
    reference = pytester.run(
        *args, "--cov-context=test", "--cov-branch", "--cov-report=", timeout=RUN_TIMEOUT
    )
    assert reference.ret == 0, reference.stdout.str() + reference.stderr.str()
    monkeypatch.delenv("COVERAGE_CORE")
    monkeypatch.delenv("COVERAGE_FILE")
    result = run_pytest(
        pytester,
        "--distcov",
        "--distcov-source=far",
        "--distcov-branch",
        "--distcov-context=test",
        "-n",
        workers,
    )
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*sys.monitoring line events with branch markers*"])
    root = pytester.path
    got = reported_contexts(root / ".coverage", root)
    want = reported_contexts(root / "ref.coverage", root)
    assert_same_labels(got, want)
    assert any(isinstance(item, tuple) for item in want["far.py"])  # branches


def test_the_engine_marks_with_moved_markers_where_it_should(tmp_path: Path) -> None:
    """The branch engine moves markers on 3.12 and 3.13 with per-test contexts, and leaves
    them past the end of the file on 3.14+ (whose events keep every line's delta) and
    without contexts (a marker fires once a run then)."""
    from coverage import Coverage

    from pytest_distcov.engine.branches import BranchMonitor

    path = tmp_path / "far.py"
    path.write_text(NEAR_FREE)
    code = compile(NEAR_FREE, str(path), "exec")
    engine = BranchMonitor(Coverage(data_file=None, branch=True), contexts=True)
    marked = engine._marked(code, rewritten=False)
    table = engine._marks[str(path)]
    moved = [line for line, arcs in table.items() if arcs and line <= NEAR_FREE.count("\n")]
    assert engine.near_lines() == (sys.version_info < (3, 14))
    assert not BranchMonitor(Coverage(data_file=None, branch=True)).near_lines()
    assert len(moved) == (4 if engine.near_lines() else 0)
    lines = {line for c in codes_of(marked) for _, _, line in c.co_lines() if line is not None}
    assert set(moved) <= lines


#: A helper whose asserts pytest's rewriter makes long: its branch's markers move to other
#: blank lines in the rewritten code than in the plain one.
BOTH_WAYS = (
    "def helper(x):\n\n"
    + "    assert x is not None, x\n" * 40
    + "    if x:\n        return 1\n\n    return 2\n"
)


#: helper-54's: marked plainly first, a marker moved to line 3; marked as pytest rewrites it,
#: another marker would have moved there (the rewritten code is longer).
COLLIDING = (
    "def helper(x):\n    y = 0\n\n"
    + "    assert x is not None, x\n" * 7
    + "    y += 1\n" * 133
    + "    if x:\n        y = 1\n    else:\n        y = 2\n\n    return y\n"
    + "# c\n" * 150
)


@pytest.mark.parametrize(
    ("source", "ways", "plain_first"),
    [
        (BOTH_WAYS, {(43, 44), (43, 46)}, False),
        (BOTH_WAYS, {(43, 44), (43, 46)}, True),
        (COLLIDING, {(144, 145), (144, 147)}, True),
        (COLLIDING, {(144, 145), (144, 147)}, False),
    ],
)
def test_a_file_marked_plainly_and_as_pytest_rewrites_it_keeps_both_ways(
    tmp_path: Path, source: str, ways: set[tuple[int, int]], plain_first: bool
) -> None:
    """The same source imported under two names, once through pytest's assertion rewriter,
    in either order: the second marking keeps its markers past the end of the file, where
    they join the first's (a moved marker's line stands for nothing in the other); a changed
    source is refused."""
    from coverage import Coverage

    from pytest_distcov.engine.branches import BranchMonitor, Unmarkable

    path = tmp_path / "test_both.py"
    path.write_text(source)
    engine = BranchMonitor(Coverage(data_file=None, branch=True), contexts=True)
    tree = ast.parse(source)
    rewrite_asserts(tree, source.encode(), str(path), None)
    rewritten = compile(tree, str(path), "exec", dont_inherit=True)
    plain = compile(source, str(path), "exec")
    order = [(plain, False), (rewritten, True)]
    if not plain_first:
        order.reverse()
    first = engine._marked(order[0][0], rewritten=order[0][1])
    one = dict(engine._marks[str(path)])
    second = engine._marked(order[1][0], rewritten=order[1][1])
    both = engine._marks[str(path)]
    assert str(path) not in engine.unmarked
    assert one.items() <= both.items()
    moved = {line for line in one if line <= source.count("\n")}  # (inside the file)
    if engine.near_lines() and source is COLLIDING and plain_first:
        assert 3 in moved  # (the line the rewritten code's marker would have taken)
    # the second's markers past the end of the file: those of the moved ones are new lines
    assert len(both) == len(one) + len(moved)
    for code in (first, second):  # each code's markers read through the one table
        lines = {n for c in codes_of(code) for _, _, n in c.co_lines() if n is not None}
        assert ways <= engine.arcs_of(str(path), lines)  # (the if)
    path.write_text(source.replace("return", "return 3 +"))
    with pytest.raises(Unmarkable, match="source changed"):
        engine._marked(compile(path.read_text(), str(path), "exec"), rewritten=False)

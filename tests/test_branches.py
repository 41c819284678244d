"""The branch engine (Python 3.12+): its reports equal coverage.py's C tracer's.

Branch markers record arcs of their own (``(-1, L)`` for a line, the parser's arc for a way
out of a branch line), not the tracer's transitions, so the data files differ by design; what
users look at must not: coverage.py's JSON report of each file (executed and missing
statements, executed and missing branches) is compared with that of a serial
``coverage run --branch -m pytest`` of the same tests, or, where the engines start later than
``coverage run`` does, with ``--distcov-engine=coverage`` (coverage.py's C tracer started at the
same point). Both run the C tracer (``COVERAGE_CORE=ctrace``): from Python 3.14 coverage.py's
default core is sysmon, whose branch events report some branches otherwise.
"""

from __future__ import annotations

import py_compile
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from .helpers import assert_same_report, report_view, run_pytest, serial_reference

pytestmark = pytest.mark.skipif(
    sys.version_info[:2] < (3, 12), reason="branch markers are used on Python 3.12+"
)

#: the engine this suite's runs use unless they choose one (tests/conftest.py: coverage)
AUTO = ("--distcov", "--distcov-branch", "--distcov-engine=auto")
#: the reference: coverage.py's C tracer (from 3.14 its default core is sysmon)
TRACER = "ctrace"
HEADER = "distcov: measuring lines and branches*sys.monitoring line events with branch markers*"

#: Every construct the markers handle, and some they must leave alone: loops with else,
#: break and continue, try/except/finally, with blocks left by return, match with guards and
#: no irrefutable case, async generators, one-line bodies and definitions, lambdas.
TRICKY = '''\
import asyncio


def gen(n):
    for i in range(n):
        if i % 2:
            yield i
        else:
            continue
    else:
        yield -1


def tryer(x):
    try:
        if x > 1:
            raise ValueError(x)
        elif x == 1:
            return "one"
    except ValueError as e:
        if e.args[0] > 5:
            return "big"
    finally:
        if x == 0:
            pass
        x = x  # (its false way stays in the finally: test_a_branch_leaving_a_finally...)
    while x > 0:
        x -= 2
        if x == 3:
            break
    else:
        return "done"
    return "broke"


def withs(path, flag):
    with open(path) as fh:
        for line in fh:
            if flag: return line
    return None


def matcher(v):
    match v:
        case 0 | 1:
            return "small"
        case [a, *rest] if a:
            return "list"
        case {"k": kk}:
            return kk
        case str() as s if len(s) > 3:
            return s


async def agen(n):
    for i in range(n):
        if i:
            yield i


async def amain():
    out = []
    async for i in agen(4):
        if i > 2: break
        out.append(i)
    return out


class C:
    """Doc."""
    def m(self, x): return x if x else None
    def n(self): "doc only"


def one(x): return x


def nested(xs):
    total = 0
    for x in xs:
        for y in xs:
            if x == y:
                continue
            if x > y and y:
                total += 1
            elif x < 0:
                total -= 1
    while total:
        total //= 2
        if total == 1: break
    return total if total else 0


def lam(xs):
    return sorted(xs, key=lambda v: -v if v else 0)


def never(x):
    if x:
        return 1
    return 2
'''

TRICKY_TESTS = """\
import asyncio
import os

import pytest

import tricky as t


def test_gen():
    assert list(t.gen(5)) == [1, 3, -1]
    assert list(t.gen(0)) == [-1]


@pytest.mark.parametrize("v", [0, 1, 2, 9, -3, 7])
def test_tryer(v):
    try:
        t.tryer(v)
    except ValueError:
        assert v in (2, 9, 7) or v > 1


def test_withs(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("a\\nb\\n")
    assert t.withs(path, True) == "a\\n"
    assert t.withs(path, False) is None


@pytest.mark.parametrize("v", [0, [1, 2], [0], {"k": 3}, "hello", "hi", 3.5])
def test_matcher(v):
    result = t.matcher(v)
    if isinstance(v, str) and len(v) > 3:
        assert result == v
    else:
        assert result != "impossible"


def test_async():
    assert asyncio.run(t.amain()) == [1, 2]


def test_small():
    c = t.C()
    assert c.m(1) == 1 and c.m(0) is None and c.n() is None
    assert t.one(1) == 1
    assert t.nested([1, 2, -1, 0]) in (0, 1, 2, 3)
    assert t.nested([]) == 0
    assert t.lam([3, 0, 1]) == [3, 1, 0]
    for i in range(3):
        if i == 5:
            break
    else:
        assert os.sep
"""

CONFTEST = """\
import pytest


@pytest.fixture(autouse=True)
def tidy(request):
    if request.node.name.startswith("test_never"):
        pytest.skip("never")
    yield
"""


def _run_engine(pytester: pytest.Pytester, engine: str, *args: str) -> pytest.RunResult:
    """A branch run with ``engine``: ``coverage`` measures with the C tracer, the reference."""
    with pytest.MonkeyPatch.context() as patch:
        if engine == "coverage":
            patch.setenv("COVERAGE_CORE", TRACER)
        return run_pytest(
            pytester, *args, "--distcov", "--distcov-branch", f"--distcov-engine={engine}"
        )


def _project(pytester: pytest.Pytester, **more: str) -> None:
    pytester.makepyfile(tricky=TRICKY, test_tricky=TRICKY_TESTS, conftest=CONFTEST, **more)
    pytester.makeini("[pytest]\naddopts = -p no:randomly -p no:cacheprovider\n")


@pytest.mark.parametrize("mode", [["-p", "no:xdist"], ["-n", "2"]], ids=["in-process", "n2"])
def test_tricky_code_reports_as_coverage_run_does(
    pytester: pytest.Pytester, mode: list[str]
) -> None:
    """The module, its test module (marked, then its asserts rewritten as pytest rewrites them)
    and the conftest: every file's report equals a serial ``coverage run --branch``'s."""
    _project(pytester)
    reference = serial_reference(pytester, branch=True, core=TRACER)
    result = run_pytest(pytester, *AUTO, *mode)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([HEADER])
    assert "coverage.py's tracer instead" not in result.stdout.str()
    assert_same_report(pytester.path / ".coverage", reference, pytester.path)


#: A ``case`` whose pattern starts on a line of its own (coverage.py's parser names the
#: ``case`` line, the AST the pattern's) and an ``if`` the compiler folds: no marker can
#: stand for either, so the file is measured by coverage.py's tracer.
UNMARKABLE = """\
def kind(v):
    match v:
        case (
            1
            | 2
        ):
            return "small"
        case 3:
            return "three"
        case _:
            return "other"


def pick(flag, other):
    if 0 and flag:
        return "never"
    elif other:
        return "other"
    return "none"
"""


def test_a_file_that_cannot_be_marked_is_measured_by_coverage_py(
    pytester: pytest.Pytester,
) -> None:
    """One ``distcov:`` note names how many files and why the first; the report of that file,
    and of the rest, equals a serial ``coverage run --branch``'s."""
    _project(
        pytester,
        odd=UNMARKABLE,
        test_odd=(
            "import odd\n\n\ndef test_odd():\n"
            "    assert [odd.kind(v) for v in (1, 3, 'x')] == ['small', 'three', 'other']\n"
            "    assert odd.pick(1, 0) == 'none'\n"
        ),
    )
    from pytest_distcov.engine.marks import Unmarkable, plan

    with pytest.raises(Unmarkable):
        plan(UNMARKABLE, "odd.py")
    reference = serial_reference(pytester, branch=True, core=TRACER)
    result = run_pytest(pytester, *AUTO, "-n", "2")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(
        [HEADER, "*branch markers: 1 file measured with coverage.py's tracer instead*odd.py*"]
    )
    assert_same_report(pytester.path / ".coverage", reference, pytester.path)


#: Branches at the end of a ``finally``, left by its end: the compiler copies the ``finally``
#: into the ``return``'s and the exception's ways out too, each with its markers, where the C
#: tracer records the way out of the function instead of the arc past the ``try``.
FINALLY_ENDS = """\
def tries(x):
    try:
        if x:
            raise ValueError
    except ValueError:
        return 1
    finally:
        if x == 3:
            x = 0
    return x


def g(x):
    try:
        raise ValueError
    finally:
        if x == 3:
            x = 0
    return x
"""

#: helper-55's: a way to the function's exit from a ``finally`` whose ``try`` is inside
#: another ``try`` (its exception's copy goes to the ``except`` first); a one-line ``def``
#: last in a ``finally`` (its marker follows it there).
FINALLY_OUTER = """\
def a(x):
    try:
        try:
            if x:
                raise ValueError
        finally:
            if x == 3:
                x = 0
    except ValueError:
        return 1
"""
FINALLY_ONE_LINE_DEF = """\
def g(x):
    try:
        if x:
            raise ValueError
    finally:
        if x == 3:
            x = 0
        def h(): return 1
    return x
"""

#: Branches inside a ``finally`` whose ways stay in it, or leave the function: markable.
FINALLY_INSIDE = """\
def inside(x):
    try:
        return x
    finally:
        if x:
            x = 1
        x = 2


def last(x):
    try:
        return x
    finally:
        if x:
            x = 1
"""


@pytest.mark.parametrize("mode", [["-p", "no:xdist"], ["-n", "2"]], ids=["in-process", "n2"])
@pytest.mark.parametrize("contexts", [[], ["--distcov-context=test"]], ids=["lines", "contexts"])
def test_a_branch_leaving_a_finally_by_its_end_is_left_to_coverage_py(
    pytester: pytest.Pytester, mode: list[str], contexts: list[str]
) -> None:
    """helper-53's case: marked, ``return x`` (line 10) and the branch 8->10 counted as run
    where the ``finally`` ran for the ``return 1``; the file is coverage.py's tracer's, and
    the report equals a serial ``coverage run --branch``'s. A ``finally`` whose branches stay
    in it or leave the function is marked."""
    from pytest_distcov.engine.marks import Unmarkable, plan

    with pytest.raises(Unmarkable, match="line 8: a branch leaving the finally of lines 8-9"):
        plan(FINALLY_ENDS, "fin.py")
    with pytest.raises(Unmarkable, match="line 7: a branch leaving the finally of lines 7-8"):
        plan(FINALLY_OUTER, "outer.py")
    with pytest.raises(Unmarkable, match="line 8: a branch leaving the finally of lines 6-8"):
        plan(FINALLY_ONE_LINE_DEF, "onedef.py")
    assert plan(FINALLY_INSIDE, "inside.py").arcs
    _project(
        pytester,
        fin=FINALLY_ENDS,
        outer=FINALLY_OUTER,
        onedef=FINALLY_ONE_LINE_DEF,
        inside=FINALLY_INSIDE,
        test_fin=(
            "import pytest\n\nimport fin\nimport inside\nimport onedef\nimport outer\n\n\n"
            "def test_fin():\n"
            "    assert fin.tries(1) == 1\n"
            "    with pytest.raises(ValueError):\n        fin.g(1)\n"
            "    assert inside.inside(0) == 0 and inside.last(1) == 1\n"
            "    assert outer.a(1) == 1\n"
            "    with pytest.raises(ValueError):\n        onedef.g(1)\n"
        ),
    )
    reference = serial_reference(pytester, branch=True, core=TRACER)
    result = run_pytest(pytester, *AUTO, *mode, *contexts)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(
        [HEADER, "*branch markers: 3 files measured with coverage.py's tracer instead*"]
    )
    assert_same_report(pytester.path / ".coverage", reference, pytester.path)


def test_functions_imported_before_measuring_run_marked_code(pytester: pytest.Pytester) -> None:
    """A measured module imported before the engine starts (a ``-p`` plugin): its functions
    get their marked twins; what they run equals what coverage.py's C tracer, started at the
    same point, records."""
    _project(
        pytester,
        early=(
            "def pick(x):\n    if x > 0:\n        return 'pos'\n"
            "    for i in range(x, 0):\n        if i == -2:\n            break\n"
            "    return 'neg'\n"
        ),
        test_early=(
            "import early\n\n\ndef test_early():\n"
            "    assert early.pick(1) == 'pos' and early.pick(-1) == 'neg'\n"
        ),
    )
    runs = {}
    for engine in ("auto", "coverage"):
        result = _run_engine(pytester, engine, "-p", "early")
        assert result.ret == 0, result.stdout.str()
        assert "coverage.py's tracer instead" not in result.stdout.str()
        runs[engine] = (pytester.path / ".coverage").rename(pytester.path / f"{engine}.coverage")
    assert_same_report(runs["auto"], runs["coverage"], pytester.path)


def test_coverage_engine_and_a_core_keep_the_tracer(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--distcov-engine=coverage``, or a core the user chose, measures branches with
    coverage.py's C tracer, and the header says why."""
    _project(pytester)
    result = run_pytest(pytester, "--distcov", "--distcov-branch", "--distcov-engine=coverage")
    assert result.ret == 0
    default = "ctrace" if sys.version_info < (3, 14) else "sysmon"  # (coverage.py's own choice)
    result.stdout.fnmatch_lines([f"distcov: measuring lines and branches*the {default} core*"])
    monkeypatch.setenv("COVERAGE_CORE", "ctrace")
    result = run_pytest(pytester, *AUTO)
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "distcov: measuring lines and branches*the ctrace core*",
            "*core = ctrace (or COVERAGE_CORE) chooses coverage.py*",
        ]
    )


def test_dynamic_contexts_keep_the_tracer(pytester: pytest.Pytester) -> None:
    """``[run] dynamic_context`` labels lines as the tracer runs: the markers cannot, so the
    run measures with coverage.py's tracer and says why, and the contexts are recorded."""
    _project(pytester)
    pytester.path.joinpath(".coveragerc").write_text(
        "[run]\nbranch = true\ndynamic_context = test_function\n"
    )
    result = run_pytest(pytester, *AUTO)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "distcov: measuring lines and branches * the ctrace core*",
            "distcov: branch coverage with [[]run[]] dynamic_context needs coverage.py's tracer*",
        ]
    )
    from coverage import CoverageData

    data = CoverageData(str(pytester.path / ".coverage"))
    data.read()
    try:
        assert any("test_gen" in c for c in data.measured_contexts())
    finally:
        data.close(force=True)


def test_a_file_measured_with_branch_markers_keeps_its_own_path(tmp_path: Path) -> None:
    """Marked code runs under the file's own name: tracebacks and ``__file__`` are unchanged."""
    from pytest_distcov.engine.marks import plan

    source = "def f(x):\n    if x:\n        raise ValueError(x)\n    return 0\n"
    path = tmp_path / "m.py"
    path.write_text(source)
    marks = plan(source, str(path))
    code = compile(marks.tree, str(path), "exec", dont_inherit=True)
    space: dict[str, object] = {}
    exec(code, space)
    func = space["f"]
    assert callable(func)
    with pytest.raises(ValueError, match="1") as info:
        func(1)
    assert info.traceback[-1].lineno == 2  # (0-based: line 3)
    assert str(info.traceback[-1].path) == str(path)


def test_marked_modules_are_kept_for_the_next_run(pytester: pytest.Pytester) -> None:
    """The second run loads each marked module from pytest's cache directory and reports
    exactly what the first did, and what coverage.py does."""
    _project(pytester)
    pytester.makeini("[pytest]\naddopts = -p no:randomly\n")
    reference = serial_reference(pytester, branch=True, core=TRACER)
    marks = pytester.path / ".pytest_cache" / "d" / "distcov" / "marks"
    stamps = {}
    for run in ("first", "second"):
        result = run_pytest(pytester, *AUTO, "-n", "2")
        assert result.ret == 0, result.stdout.str()
        result.stdout.fnmatch_lines([HEADER])
        assert_same_report(pytester.path / ".coverage", reference, pytester.path)
        stamps[run] = {p.name: p.stat().st_mtime_ns for p in marks.glob("*.marks")}
    # tricky.py marked; the test module marked and rewritten, and as pytest compiles it
    assert len(stamps["first"]) >= 3, stamps["first"]
    assert stamps["second"].keys() == stamps["first"].keys()  # loaded, not marked again


def test_a_test_module_is_marked_again_when_the_assertion_pass_hook_changes(
    pytester: pytest.Pytester,
) -> None:
    """pytest rewrites asserts differently with ``enable_assertion_pass_hook``: the marked
    test modules the cache keeps are kept apart for each setting, and each run reports what
    coverage.py does."""
    _project(pytester)
    marks = pytester.path / ".pytest_cache" / "d" / "distcov" / "marks"
    reference = serial_reference(pytester, branch=True, core=TRACER)
    seen: list[set[str]] = []
    for hook in ("false", "true", "false"):
        pytester.makeini(
            f"[pytest]\naddopts = -p no:randomly\nenable_assertion_pass_hook = {hook}\n"
        )
        result = run_pytest(pytester, *AUTO)
        assert result.ret == 0, result.stdout.str()
        result.stdout.fnmatch_lines([HEADER])
        assert_same_report(pytester.path / ".coverage", reference, pytester.path)
        seen.append({p.name for p in marks.glob("*.marks")})
    assert seen[1] > seen[0]  # the test module's entries for the other setting
    assert seen[2] == seen[1]  # and the first setting's, loaded again


def test_a_mark_cache_entry_that_is_not_one_is_ignored(tmp_path: Path) -> None:
    from pytest_distcov.engine.branches import MarkCache

    cache = MarkCache(tmp_path / "marks")
    code = compile("x = 1\n", "/m.py", "exec")
    key = cache.key("/m.py", b"x = 1\n")
    cache.store(key, ({3: ((1, 2),)}, code))
    assert cache.load(key, "/m.py") == ({3: ((1, 2),)}, code)
    assert cache.load(key, "/other.py") is None  # another file's code
    import marshal

    from pytest_distcov.engine.branches import _CACHE_FORMAT as F

    entry = tmp_path / "marks" / f"{key}.marks"
    for bad in (
        b"junk",
        marshal.dumps((F, {"3": ((1, 2),)}, code)),
        marshal.dumps((F, {3: ((1,),)}, code)),
        marshal.dumps((F, {3: ((1, "2"),)}, code)),
        marshal.dumps((F, {3: [(1, 2)]}, code)),
        marshal.dumps((F, [((1, 2),)], code)),
        marshal.dumps((F, {}, "code")),
        marshal.dumps((F - 1, 3, (((1, 2),),), code)),  # the format before (a first line)
    ):
        entry.write_bytes(bad)
        assert cache.load(key, "/m.py") is None
    assert cache.key("/m.py", b"x = 2\n") != key


#: Code that marked code must not replace, each run with ``-p PLUGIN`` (imported before
#: measuring starts): name -> (plugin, files). The file is measured by coverage.py's tracer
#: instead, and the tests, which check what the code does, pass as without measuring.
KEEP_AS_IT_IS = {
    # two lambdas on one line: no name and first line tells them apart
    "lambdas-on-one-line": (
        "early",
        {
            "early": (
                'OPS = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b}\n'
                "inc, dec = (lambda v: v + 1), (lambda v: v - 1)\n"
            ),
            "test_early": (
                "import early\n\n\ndef test_ops():\n"
                '    assert early.OPS["add"](2, 1) == 3 and early.OPS["sub"](2, 1) == 1\n'
                "    assert early.inc(1) == 2 and early.dec(1) == 0\n"
            ),
        },
    ),
    # a plugin's asserts, rewritten by pytest: its functions are not what the source compiles to
    "a-plugin-pytest-rewrote": (
        "early",
        {
            "early": (
                "def check_pair(a, b):\n    if a is None:\n        return\n    assert a == b\n"
            ),
            "test_early": (
                "import pytest\nimport early\n\n\ndef test_message():\n"
                "    with pytest.raises(AssertionError) as info:\n"
                "        early.check_pair(1, 2)\n"
                '    assert "1 == 2" in str(info.value)\n'
            ),
        },
    ),
    # an import hook that rewrites a module (as typeguard's does), installed before measuring
    "an-import-hook": (
        "hookplug",
        {
            "hookplug": (
                "import ast, sys\nimport importlib.machinery as m\n\n\n"
                "class Checking(ast.NodeTransformer):\n"
                "    def visit_FunctionDef(self, node):\n"
                '        check = ast.parse("if not isinstance(x, int): raise LookupError(x)")'
                ".body[0]\n"
                "        for n in ast.walk(check):\n"
                "            n.lineno = n.end_lineno = node.lineno\n"
                "            n.col_offset = n.end_col_offset = 0\n"
                "        node.body.insert(0, check)\n"
                "        return node\n\n\n"
                "class Loader(m.SourceFileLoader):\n"
                "    def source_to_code(self, data, path, *args, **kwargs):\n"
                "        tree = Checking().visit(ast.parse(data))\n"
                '        return compile(tree, path, "exec", dont_inherit=True)\n\n\n'
                "class Finder:\n"
                "    def find_spec(self, name, path, target=None):\n"
                '        if name != "mod":\n'
                "            return None\n"
                "        spec = m.PathFinder.find_spec(name, path, target)\n"
                "        spec.loader = Loader(name, spec.origin)\n"
                "        return spec\n\n\n"
                "sys.meta_path.insert(0, Finder())\n"
            ),
            "mod": "def half(x):\n    if x % 2:\n        return None\n    return x // 2\n",
            "test_mod": (
                "import pytest\nimport mod\n\n\ndef test_checked():\n"
                "    assert mod.half(4) == 2\n"
                "    with pytest.raises(LookupError):\n"
                '        mod.half("a")\n'
            ),
        },
    ),
}


@pytest.mark.parametrize("case", KEEP_AS_IT_IS)
def test_code_that_is_not_its_source_is_left_to_coverage_py(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    plugin, files = KEEP_AS_IT_IS[case]
    # (no .pyc from the first run: the hook's loader must run in both)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    pytester.makepyfile(**files)
    pytester.makeini("[pytest]\naddopts = -p no:randomly -p no:cacheprovider\n")
    pytester.syspathinsert()
    runs = {}
    for engine in ("auto", "coverage"):
        result = _run_engine(pytester, engine, "-p", plugin)
        assert result.ret == 0, result.stdout.str()
        runs[engine] = (pytester.path / ".coverage").rename(pytester.path / f"{engine}.coverage")
    result.stdout.no_fnmatch_line("*could not be marked again*")
    assert_same_report(runs["auto"], runs["coverage"], pytester.path)


def test_exceptions_leaving_branch_lines_count_as_the_tracer_counts_them(
    pytester: pytest.Pytester,
) -> None:
    """coverage.py's C tracer records an arc from the line an exception leaves a function on
    to the function's exit; where that line's other way leaves the function too, its report
    counts that way as taken. The markers do the same (catchers; with contexts, PY_UNWIND)."""
    pytester.makepyfile(
        mod=(
            "def check(x):\n    if x.value > 0:\n        return True\n\n\n"
            "def walk(it):\n    for item in it:\n        print(item)\n\n\n"
            "def gen(flag):\n    if flag: yield 1\n\n\n"
            "def loop(x):\n    while x.more():\n        x.step()\n\n\n"
            "def gcheck(x):\n    if x.value > 0:\n        yield True\n\n\n"
            "async def acheck(x):\n    if x.value > 0:\n        return True\n\n\n"
            "def fin(x, y):\n    try:\n        x.value\n    finally:\n"
            "        if y:\n            y.append(1)\n\n\n"
            "def reraise(x):\n    try:\n        x.value\n    except AttributeError:\n"
            "        if x is None:\n            raise\n\n\n"
            "def within(x, path):\n    with open(path):\n        if x.value:\n"
            "            return 1\n\n\n"
            "def multi(x):\n    if (x.count(1) or\n            x.value):\n        return 1\n"
        ),
        test_mod=(
            "import pytest\nimport mod\n\n\ndef bad():\n    yield 1\n    raise ValueError\n\n\n"
            "def test_raising():\n"
            "    with pytest.raises(AttributeError):\n        mod.check(None)\n"
            "    with pytest.raises(ValueError):\n        mod.walk(bad())\n"
            "    with pytest.raises(AttributeError):\n        mod.loop(None)\n"
            "    g = mod.gen(True)\n    next(g)\n    g.close()\n"
            "    with pytest.raises(AttributeError):\n        next(mod.gcheck(None))\n"
            "    import asyncio\n"
            "    with pytest.raises(AttributeError):\n        asyncio.run(mod.acheck(None))\n"
            "    with pytest.raises(AttributeError):\n        mod.fin(None, [])\n"
            "    with pytest.raises(AttributeError):\n        mod.reraise(None)\n"
            "    with pytest.raises(AttributeError):\n        mod.within(None, __file__)\n"
            "    with pytest.raises(AttributeError):\n        mod.multi([])\n"
        ),
    )
    pytester.makeini("[pytest]\naddopts = -p no:randomly -p no:cacheprovider\n")
    reference = serial_reference(pytester, branch=True, core=TRACER)
    result = run_pytest(pytester, *AUTO)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([HEADER])
    assert_same_report(pytester.path / ".coverage", reference, pytester.path)
    executed = report_view(pytester.path / ".coverage", pytester.path)
    mod = next(v for k, v in executed.items() if k.endswith("mod.py"))
    # each taken only by an exception leaving the function (a plain one, a generator, a
    # coroutine, a finally's branch line, a condition written over two lines, left on its
    # second)
    assert {(2, -1), (21, -20), (26, -25), (34, -30), (53, -52)} <= {
        tuple(b) for b in mod["executed_branches"]
    }


def test_marking_a_module_shows_no_syntax_warning(pytester: pytest.Pytester) -> None:
    """An import from a ``.pyc`` shows no SyntaxWarning; a module marked from its source
    shows none either (a test that records warnings would see them)."""
    pytester.makepyfile(
        mod='import re\n\nPATTERN = re.compile("\\d+")\n\n\ndef digits(s):\n    if s:\n'
        "        return PATTERN.findall(s)\n    return []\n",
        test_mod=(
            "import warnings\n\n\ndef test_quiet():\n"
            "    with warnings.catch_warnings(record=True) as seen:\n"
            '        warnings.simplefilter("always")\n'
            "        import mod\n"
            '    assert mod.digits("a1") == ["1"]\n'
            "    assert [str(w.message) for w in seen] == []\n"
        ),
    )
    pytester.makeini("[pytest]\naddopts = -p no:randomly -p no:cacheprovider\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        py_compile.compile(str(pytester.path / "mod.py"), doraise=True)  # its .pyc, as usual
    result = run_pytest(pytester, *AUTO)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([HEADER])


def test_a_cache_file_a_killed_run_left_half_written_goes_once_stale(tmp_path: Path) -> None:
    import os
    import time

    from pytest_distcov.engine.branches import MarkCache

    directory = tmp_path / "marks"
    directory.mkdir()
    old, fresh = directory / "a.marks.1.2.tmp", directory / "b.marks.1.2.tmp"
    for path in (old, fresh):
        path.write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    MarkCache(directory).prune()
    assert not old.exists()
    assert fresh.exists()  # (another process may be writing it now)


def test_silencing_syntax_warnings_leaves_the_users_own_filter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Marking silences SyntaxWarning with one filter of its own, taken out again; a user's
    identical filter (``-W ignore::SyntaxWarning``) is left where it was."""
    from pytest_distcov.engine.branches import _quiet

    entry = ("ignore", None, SyntaxWarning, None, 0)
    monkeypatch.setattr(warnings, "filters", [])
    with _quiet():
        assert entry in warnings.filters
    assert entry not in warnings.filters
    warnings.filterwarnings("ignore", category=SyntaxWarning)
    before = list(warnings.filters)
    with _quiet():
        pass
    assert warnings.filters == before


def _report_equals_the_tracers(pytester: pytest.Pytester) -> None:
    """The project's report measured by the marker engine (without xdist) equals a serial
    ``coverage run --branch``'s on the C tracer, file by file; the output in ``out.txt``."""
    pytester.makeini("[pytest]\naddopts = -p no:randomly -p no:cacheprovider\n")
    reference = serial_reference(pytester, branch=True, core=TRACER)
    result = run_pytest(pytester, *AUTO, "-p", "no:xdist")
    pytester.path.joinpath("out.txt").write_text(result.stdout.str())
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([HEADER])
    assert_same_report(pytester.path / ".coverage", reference, pytester.path)


#: An exception raised on a branch line, in each place where coverage.py's tracer counts a
#: branch for it (the code's exit, a ``with`` left or caught later, a ``finally``) and some
#: where it does not (an ``except`` that does not match, a generator closed at a ``yield``).
RAISING = """\
class Boom:
    @property
    def v(self):
        raise KeyError("boom")

    def __iter__(self):
        raise KeyError("it")


def direct(x):
    if x.v:
        return 1


def no_match(x):
    try:
        if x.v:
            return 1
    except ValueError:
        pass


def in_finally_try(x):
    try:
        y = 1
        if x.v:
            y = 2
    finally:
        y = 3
    return y


def both(x):
    try:
        y = 1
        if x.v:
            y = 2
    except ValueError:
        y = 4
    finally:
        y = 3
    return y


def in_with(x, cm):
    with cm:
        if x.v:
            return 1


def with_caught(x, cm):
    try:
        with cm:
            y = 1
            if x.v:
                y = 2
        z = 5
    except KeyError:
        pass


def in_handler(x):
    try:
        raise ValueError
    except ValueError as e:
        if x.v:
            return 1


def in_finally(x):
    try:
        pass
    finally:
        if x.v:
            x = 1


def loop(x):
    for i in x:
        pass


def spread(x):
    if (x
            .v):
        return 1


def gen(x):
    if (yield):
        return 1


def match(x):
    match x:
        case 1:
            return 1
        case {"k": v} if v.v:
            return 2
"""

RAISING_TESTS = """\
import contextlib

import pytest

import raising as r


def test_raising():
    b = r.Boom()
    for f in (r.direct, r.no_match, r.in_finally_try, r.both, r.in_handler, r.in_finally,
              r.loop, r.spread):
        with pytest.raises(KeyError):
            f(b)
    with pytest.raises(KeyError):
        r.in_with(b, contextlib.nullcontext())
    r.with_caught(b, contextlib.nullcontext())
    with pytest.raises(KeyError):
        r.match({"k": b})
    g = r.gen(b)
    next(g)
    g.close()
    g = r.gen(b)
    next(g)
    with pytest.raises(KeyError):
        g.throw(KeyError)


def test_late():
    with pytest.raises(KeyError):
        import late
    with pytest.raises(KeyError):
        import toplevel
"""

#: a class body and a module left by an exception raised on their last branch line
LATE = "from raising import Boom\n\n\nclass Late:\n    if Boom().v:\n        pass\n"
TOPLEVEL = "from raising import Boom\n\nif Boom().v:\n    pass\n"


def test_exceptions_on_branch_lines_count_as_the_tracer_counts_them(
    pytester: pytest.Pytester,
) -> None:
    """The branches an exception takes for coverage.py's tracer are the ones reported, and
    no others: each of these is taken only by an exception."""
    pytester.makepyfile(raising=RAISING, late=LATE, toplevel=TOPLEVEL, test_raising=RAISING_TESTS)
    _report_equals_the_tracers(pytester)
    assert "coverage.py's tracer instead" not in pytester.path.joinpath("out.txt").read_text()
    executed = report_view(pytester.path / ".coverage", pytester.path)
    raising = next(v for k, v in executed.items() if k.endswith("raising.py"))
    taken = {tuple(b) for b in raising["executed_branches"]}
    # the code's exit, a finally, a with left and one caught in the same code, an except
    # body and a finally body, a loop, a condition over two lines, a case's guard
    exits = {(11, -10), (26, 29), (47, -45), (55, 57), (66, -62), (74, -70), (79, -78)}
    assert exits | {(84, -83), (98, -94)} <= taken
    # an except that does not match; a generator closed at its yield (from 3.14 the tracer
    # records that one)
    assert (17, -15) not in taken
    assert ((90, -89) in taken) == (sys.version_info >= (3, 14))
    for name, branch in (("late", [5, -4]), ("toplevel", [3, -1])):  # a class, a module
        assert (
            branch
            in next(v for k, v in executed.items() if k.endswith(f"{name}.py"))["executed_branches"]
        )


def test_throwing_into_a_generator_at_a_yield_in_a_branch_condition(
    pytester: pytest.Pytester,
) -> None:
    """``throw()`` and ``close()`` at a ``yield`` that is a loop's condition, caught by a
    ``with`` or run through a ``finally``: recorded as the tracer records it (on 3.11 it sees
    no line there at all)."""
    pytester.makepyfile(
        g=(
            "class S:\n    def __enter__(self):\n        return self\n\n"
            "    def __exit__(self, *a):\n        return True\n\n\n"
            "def gen_with(cm):\n    with cm:\n        while (yield):\n            pass\n"
            "    yield 5\n\n\n"
            "def closer(log):\n    try:\n        while (yield):\n            pass\n"
            "    finally:\n        log.append(1)\n"
        ),
        test_g=(
            "import g\n\n\ndef test_g():\n    it = g.gen_with(g.S())\n    next(it)\n"
            "    assert it.throw(KeyError) == 5\n    log = []\n    c = g.closer(log)\n"
            "    next(c)\n    c.close()\n    assert log == [1]\n"
        ),
    )
    _report_equals_the_tracers(pytester)


def test_the_recursion_limit_reached_in_marked_code_raises_the_users_error_alone(
    pytester: pytest.Pytester,
) -> None:
    """At the recursion limit the catcher's call of its hook fails too: that error is
    swallowed, and the user's RecursionError goes on unchained, its traceback's lines all in
    the file (not a catcher's, past its end). (An exception first goes through the catcher at
    a shallow depth: on 3.12+ the first one to reach it fires its line event, whose callback
    cannot be called at the limit, as for any line first run there: README. The way that
    swallows the hook's error has no line, so no event of its own.)"""
    pytester.makepyfile(
        rec="def rec(n):\n    if n > 0:\n        return rec(n + 1)\n",
        test_rec=(
            "import traceback\n\nimport rec\n\n\ndef test_rec():\n"
            "    try:\n        rec.rec(None)\n    except TypeError:\n        pass\n"
            "    try:\n        rec.rec(1)\n    except RecursionError as e:\n"
            "        error = e\n"
            "    assert error.__context__ is None\n"
            "    lines = {f.lineno for f in traceback.extract_tb(error.__traceback__)"
            " if f.filename.endswith('/rec.py')}\n"
            "    assert lines and max(lines) <= 3, lines\n"
        ),
    )
    pytester.makeini("[pytest]\naddopts = -p no:randomly -p no:cacheprovider\n")
    result = run_pytest(pytester, *AUTO, "-p", "no:xdist")
    result.stdout.fnmatch_lines([HEADER, "*1 passed*"])
    assert result.ret == 0, result.stdout.str()


def test_a_signal_handler_raising_through_a_catcher_inside_the_hook_does_not_hang(
    pytester: pytest.Pytester,
) -> None:
    """A signal handler that runs marked code which raises through a catcher, while the
    hook is already running in the same thread: the hook takes no lock, so this ends."""
    pytester.makepyfile(
        m=(
            "class B:\n    @property\n    def v(self):\n        raise KeyError\n\n\n"
            "def f(x):\n    if x.v:\n        return 1\n\n\n"
            "def handler(signum, frame):\n    try:\n        f(B())\n    except KeyError:\n"
            "        pass\n"
        ),
        test_d=(
            "import signal, time\n\nimport m\n\n\ndef test_d():\n"
            "    signal.signal(signal.SIGALRM, m.handler)\n"
            "    signal.setitimer(signal.ITIMER_REAL, 2e-4, 2e-4)\n"
            "    try:\n        end = time.time() + 2\n        b = m.B()\n"
            "        while time.time() < end:\n            try:\n                m.f(b)\n"
            "            except KeyError:\n                pass\n"
            "    finally:\n        signal.setitimer(signal.ITIMER_REAL, 0)\n"
        ),
    )
    pytester.makeini("[pytest]\naddopts = -p no:randomly -p no:cacheprovider\n")
    result = pytester.runpytest_subprocess(*AUTO, "-p", "no:xdist", timeout=120)
    result.stdout.fnmatch_lines([HEADER, "*1 passed*"])
    assert result.ret == 0, result.stdout.str()


def test_a_phases_arcs_name_every_line_it_ran_and_each_way_it_took() -> None:
    """What a phase records of a marked file: its markers' arcs, and ``(-1, L)`` for each
    line no arc starts or ends on. The lines coverage.py counts as run (both ends of every
    arc, above 0) are exactly the lines the phase ran and its arcs' ends; a file that ran no
    marker records every line."""
    from coverage import Coverage

    from pytest_distcov.engine.branches import BranchMonitor

    source = "def f(x):\n    if x:\n        y = 1\n    return 2\n"
    engine = BranchMonitor(Coverage(data_file=None, branch=True))
    base = 10
    table = engine._marks["/m.py"] = {base: ((2, 3),), base + 1: ((2, 4),)}
    assert source.count("\n") < base
    for lines, want in (
        ({1, 2, 3, 4, base}, {(2, 3), (-1, 1), (-1, 4)}),
        ({1, 2, 4, base + 1}, {(2, 4), (-1, 1)}),
        ({1, 2}, {(-1, 1), (-1, 2)}),
        ({1, 2, 3, 4, base, base + 1}, {(2, 3), (2, 4), (-1, 1)}),
    ):
        arcs = engine.arcs_of("/m.py", lines)
        assert arcs == want, lines
        ran = {line for arc in arcs for line in arc if line > 0}
        assert ran == {line for line in lines if line < base} | {
            n for i in lines if i >= base for arc in table[i] for n in arc if n > 0
        }
    assert engine.arcs_of("/other.py", {1}) is None


def assert_a_failing_hook_is_noted_once(engine: Any) -> None:
    """Where ``engine``'s catchers' hook failed, the next phase's data puts one note in the
    engine's notes (shared with the probe engine's test)."""
    caught = engine._caught
    assert caught is not None
    engine.add_more({})
    assert not any("exception went" in n for n in engine.notes)
    caught.failed.append("TypeError")
    engine.add_more({})
    engine.add_more({})
    assert [n for n in engine.notes if "exception went" in n] == [caught.failure_note()]


def test_a_failing_exception_hook_is_noted_once_in_the_engines_notes() -> None:
    """Where the catchers' hook failed, the next phase's data puts one note in the engine's
    notes (the measuring engine takes them at its next flush, and a worker sends them with
    its next chunk): the run says arcs may be missing."""
    from coverage import Coverage

    from pytest_distcov.engine.branches import BranchMonitor

    assert_a_failing_hook_is_noted_once(BranchMonitor(Coverage(data_file=None, branch=True)))


def test_the_cache_keeps_every_entry_a_run_used_beyond_its_bound(tmp_path: Path) -> None:
    """More entries than the bound, all used by this process: none is pruned (the next run
    would mark those modules again); entries nobody used go down to what was used."""
    import os
    import time

    from pytest_distcov.engine.branches import MarkCache

    directory = tmp_path / "marks"
    controller = MarkCache(directory)  # (xdist's controller prunes too, having used none)
    cache = MarkCache(directory)
    code = compile("x = 1\n", "/p/m.py", "exec")
    for n in range(12):
        cache.store(f"k{n}", ({}, code))
    cache.prune(keep=5)
    assert len(list(directory.glob("*.marks"))) == 12  # all 12 used by this process
    controller.prune(keep=5)
    assert len(list(directory.glob("*.marks"))) == 12  # used by the run since it started
    old = time.time() - 60
    for n in range(30):  # 18 more, and all of them, used by another run long ago
        path = directory / f"k{n}.marks"
        if n >= 12:
            path.write_bytes((directory / "k0.marks").read_bytes())
        os.utime(path, (old, old))
    fresh = MarkCache(directory)
    assert fresh.load("k3", "/p/m.py") is not None
    fresh.prune(keep=5)
    kept = {p.name for p in directory.glob("*.marks")}
    assert len(kept) == 5
    assert "k3.marks" in kept

"""The probe engine (3.10/3.11, pytest-distcov[fast]): what users see equals the C tracer's.

Probes see where lines start; coverage.py's tracer also sees continuation lines. Both fold into
the same statements in coverage.py's reports, so these tests compare coverage's JSON reports
(statements and branches executed and missing, file by file) rather than raw data files.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from coverage.inorout import InOrOut

from pytest_distcov.engine.probes import probes_available

from .helpers import assert_same_report, run_pytest, serial_reference
from .test_real_suite import fetch_sdist, unpack_suite

WHY_NOT = probes_available()
needs_probes = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT or "probes available")

#: Everything in one module that probes must see as coverage.py's tracer does. `early` is
#: imported by a -p plugin before measuring starts; `late` by the test module, after.
LIBRARY = """
import importlib.resources
import pkgutil
import threading

LOADED = True


def double(x):
    return (
        x
        * 2
    )


def in_thread():
    out = []
    thread = threading.Thread(target=lambda: out.append(_thread_body()))
    thread.start()
    thread.join()
    return out[0]


def _thread_body():
    return "thread"


def payload():
    return pkgutil.get_data(__name__, "payload.txt")


def resource():
    return importlib.resources.files(__name__).joinpath("payload.txt").read_bytes()


def only_paused():
    return "paused"


def paused_then_measured(flag):
    if flag:
        return "a"
    return "b"


def deco(func):
    def wrapper(*args):
        return func(*args)

    return wrapper


@deco
def decorated(x):
    return x + 1


def make_closure():
    def inner():
        return "inner"

    return inner


class Thing:
    def method(self):
        return 1

    @staticmethod
    def static():
        return 2

    @property
    def prop(self):
        return 3


def gen():
    yield 1
    yield 2


def never():
    return "never"
"""

TESTS = """
import pytest

import early
import late


@pytest.mark.no_cover
def test_a_paused():
    for m in (early, late):
        m.only_paused()
        m.paused_then_measured(True)
        m.make_closure()()


def test_b_measured():
    for m in (early, late):
        assert m.paused_then_measured(True) == "a"
        assert m.double(2) == 4
        assert m.in_thread() == "thread"
        assert m.Thing().method() + m.Thing.static() + m.Thing().prop == 6
        assert m.decorated(1) == 2
        assert m.make_closure()() == "inner"
        assert list(m.gen()) == [1, 2]
        assert m.payload() == b"payload\\n"
        assert m.resource() == b"payload\\n"


def test_c_fixture(no_cover):
    early.paused_then_measured(False)
"""


def _project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("early", "late"):
        package = pytester.mkpydir(name)
        (package / "__init__.py").write_text(LIBRARY)
        (package / "payload.txt").write_text("payload\n")
    pytester.makepyfile(early_plugin="import early\n", test_behaviour=TESTS)
    pytester.makeini("[pytest]\n")
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    return pytester.path


def _run(pytester: pytest.Pytester, engine: str, *args: str) -> Path:
    result = run_pytest(
        pytester,
        "-p",
        "early_plugin",
        "--distcov",
        "--distcov-source=early",
        "--distcov-source=late",
        f"--distcov-engine={engine}",
        "--distcov-report=",
        *args,
    )
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    want = "SlipCover's probes" if engine == "probes" else "the ctrace core"
    result.stdout.fnmatch_lines([f"distcov: measuring lines of * with {want} *"])
    saved = pytester.path / f".coverage-{engine}-{'-'.join(args) or 'plain'}"
    shutil.move(pytester.path / ".coverage", saved)
    return saved


@needs_probes
def test_probes_report_what_the_c_tracer_reports(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pre-imported and later modules, no_cover (marker and fixture), threads, closures,
    decorators, properties, generators, multi-line statements, and pkgutil.get_data through
    the probing loader: the report equals the C tracer's, in-process and with xdist."""
    project = _project(pytester, monkeypatch)
    reference = _run(pytester, "coverage", "-p", "no:xdist")
    for mode in (["-p", "no:xdist"], ["-n", "2"]):
        got = _run(pytester, "probes", *mode)
        assert_same_report(got, reference, project)
    # The reference is not trivially empty: what ran only paused is missing, as is never().
    from .helpers import report_view

    late = report_view(reference, project)[str(project / "late" / "__init__.py")]
    assert 37 in late["missing_lines"]  # only_paused's body
    assert 41 in late["executed_lines"]  # paused_then_measured: run again, measured
    assert 84 in late["missing_lines"]  # never()


@needs_probes
def test_auto_chooses_probes_for_lines_and_for_branches(
    shapes: Path, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISTCOV_ENGINE")
    result = run_pytest(pytester, "--distcov", "-n", "2")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "distcov: measuring lines of *shapes with SlipCover's probes in 2 workers",
            "*distcov: 2 workers, SlipCover's probes, data in*",
        ]
    )
    reference = serial_reference(pytester, source="shapes")
    assert_same_report(shapes / ".coverage", reference, shapes)

    # branch coverage: probes in marked code (test_branch_probes.py), whose arcs are not the
    # tracer's transitions: the reports are compared
    result = run_pytest(pytester, "--distcov", "-n", "2", "--distcov-branch")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "distcov: measuring lines and branches of *shapes with SlipCover's probes with"
            " branch markers in 2 workers",
        ]
    )
    reference = serial_reference(pytester, source="shapes", branch=True)
    assert_same_report(shapes / ".coverage", reference, shapes)


OBSTACLES = {
    "context": (["--distcov-context=test"], "", "per-test contexts (--distcov-context)"),
    "dynamic": ([], "dynamic_context = test_function", "[run] dynamic_context"),
    "patch": ([], "patch = subprocess, execv", "[run] patch = execv"),
    "concurrency": ([], "concurrency = multiprocessing", "[run] concurrency = multiprocessing"),
    "core": ([], "core = ctrace", "[run] core = ctrace"),
}


@needs_probes
@pytest.mark.parametrize("case", OBSTACLES)
def test_settings_probes_cannot_honour(
    shapes: Path, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """An explicit --distcov-engine=probes names the setting; auto says why it falls back."""
    args, run_setting, named = OBSTACLES[case]
    named = named.replace("[", "[[]")  # fnmatch: a literal [
    if run_setting:
        pytester.path.joinpath(".coveragerc").write_text(f"[run]\n{run_setting}\n")
    result = run_pytest(pytester, "--distcov", "-p", "no:xdist", "--distcov-engine=probes", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: distcov: --distcov-engine=probes cannot measure this run: {named}*"]
    )
    assert "Traceback" not in result.stderr.str()
    monkeypatch.delenv("DISTCOV_ENGINE")
    result = run_pytest(pytester, "--distcov", "-p", "no:xdist", *args)
    assert result.ret == 0, result.stdout.str()
    assert "SlipCover's probes" not in result.stdout.str()
    if case != "core":  # the user's own choice of core is no news
        result.stdout.fnmatch_lines([f"distcov: {named}*: using the ctrace core"])


@pytest.mark.parametrize(
    "where", ["--distcov-engine=fast", "ini", "env"], ids=["option", "ini", "environment"]
)
def test_bad_engine_value_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    args = ["--distcov"]
    if where == "ini":
        pytester.makeini("[pytest]\ndistcov_engine = fast\n")
        named = "distcov_engine in *tox.ini"
    elif where == "env":
        monkeypatch.setenv("DISTCOV_ENGINE", "fast")
        named = "the DISTCOV_ENGINE environment variable"
    else:
        args.append(where)
        named = "--distcov-engine"
    result = run_pytest(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: distcov: invalid value 'fast' for {named}: expected auto, coverage or probes"]
    )


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Python 3.12+ behaviour")
def test_probes_on_new_pythons_use_coverage_cores(shapes: Path, pytester: pytest.Pytester) -> None:
    result = run_pytest(pytester, "--distcov", "-n", "2", "--distcov-engine=probes")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "distcov: measuring lines of *shapes with the sysmon core in 2 workers",
            "distcov: the probe engine is for Python 3.10 and 3.11*: using the sysmon core",
        ]
    )


@needs_probes
def test_killed_worker_keeps_finished_tests_with_probes(
    pytester: pytest.Pytester, private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's file gets each test's new lines as the test finishes: a SIGKILL loses
    nothing finished (the crash test of test_crash.py, measured by probes)."""
    from .helpers import diff_data
    from .test_crash import F3_BODY, _run_killer
    from .test_crash import _project as crash_project

    crash_project(pytester)
    reference = serial_reference(pytester, "-k", "not test_3_kill", source="work")
    monkeypatch.setenv("DISTCOV_ENGINE", "probes")
    result = _run_killer(pytester, stream_interval=3600)
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines(
        ["*SlipCover's probes*", "*distcov: worker gw* crashed*1 data file*"]
    )
    diff = diff_data(pytester.path / ".coverage", reference)
    assert not diff.only_right, diff
    assert not diff.files_only_right, diff
    assert set(diff.only_left.get(str(pytester.path / "work.py"), [])) <= F3_BODY, diff


REAL_SUITES = {
    "more-itertools": (
        "more-itertools==10.7.0",
        "more_itertools",
        ("tests/test_recipes.py", "-k", "not test_primes and not test_large"),
    ),
    "pyparsing": (
        "pyparsing==3.2.3",
        "pyparsing",
        ("tests/test_simple_unit.py", "tests/test_util.py"),
    ),
}


# Not marked slow: probes run on 3.10 and 3.11 only, and 3.10 runs the quick tier (tox.ini).
@needs_probes
@pytest.mark.parametrize("name", REAL_SUITES)
def test_real_suites_report_what_serial_coverage_reports(
    pytester: pytest.Pytester,
    pytestconfig: pytest.Config,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
) -> None:
    requirement, package, tests = REAL_SUITES[name]
    project = unpack_suite(pytester, fetch_sdist(pytestconfig, tmp_path_factory, requirement))
    reference = serial_reference(pytester, *tests, source=package)
    for mode in (["-n", "0"], ["-n", "2"]):
        result = run_pytest(
            pytester,
            "--distcov",
            f"--distcov-source={package}",
            "--distcov-engine=probes",
            "--distcov-report=",
            *mode,
            *tests,
        )
        assert result.ret == 0, result.stdout.str()[-3000:]
        result.stdout.fnmatch_lines(["distcov: measuring lines of * with SlipCover's probes *"])
        assert_same_report(project / ".coverage", reference, project)


@needs_probes
def test_code_slipcover_cannot_rewrite_still_runs_and_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SlipCover's bytecode editor failing on a module must not break the user's import; the
    module runs without probes and the run's notes say which file is not measured."""
    from coverage import Coverage

    from pytest_distcov.engine.probes import Probes

    monkeypatch.chdir(tmp_path)
    probes = Probes(Coverage(data_file=str(tmp_path / ".coverage")))

    def broken(code: object, parent: object = None) -> object:
        raise ValueError("bad bytecode")

    monkeypatch.setattr(probes.sci, "instrument", broken)
    namespace: dict[str, object] = {"__name__": "m"}
    probes.execute(compile("x = 1\n", str(tmp_path / "m.py"), "exec"), namespace)
    assert namespace["x"] == 1
    assert probes.notes == [
        f"could not put probes into {tmp_path / 'm.py'} (ValueError('bad bytecode')): not measured"
    ]


HOT_MODULE = """
def hot(x, late=False):
    if late:
        return x - 1
    return x + 1


# hot's probes fire often enough while the module still executes that SlipCover removes them
# then, before the module's functions are known: twice, so hot is two versions behind
TOTAL = sum(hot(i) for i in range(200))
TOTAL += sum(hot(i, late=True) for i in range(200))
MADE = []


def make():
    def inner(x):
        return x * 2

    return inner


def use(n):
    f = make()  # a closure that no module holds, only this frame
    MADE.append(f)
    return sum(f(i) for i in range(n))
"""


@needs_probes
def test_spent_probes_leave_every_function_that_keeps_running(tmp_path: Path) -> None:
    """Functions whose probes are removed get the code without them, also a function made
    while its module was still executing (it holds a version two behind the newest) and a
    closure that only a running frame holds. Otherwise every call keeps paying for probes
    (64 million probe calls instead of 1.8 million on pyparsing's suite)."""
    from coverage import Coverage

    from pytest_distcov.engine.probes import Probes

    probes = Probes(Coverage(data_file=str(tmp_path / ".coverage")))
    namespace: dict[str, Any] = {"__name__": "hot_module"}
    probes.execute(compile(HOT_MODULE, str(tmp_path / "hot_module.py"), "exec"), namespace)
    assert namespace["use"](200) == 39800
    sci = probes.sci
    made_later = namespace["MADE"][0]
    for func in (namespace["hot"], made_later):
        info = sci.probed(func.__code__)
        assert info is not None, func
        assert info.version >= 1, func  # its probes were removed
        assert info.successor is None, func  # and it runs the newest version
    executed = {2, 3, 4, 5, 10, 11, 12, 15, 16, 17, 19, 22, 23, 24, 25}
    assert probes.take() == {str(tmp_path / "hot_module.py"): executed}


IMPORT_SCRIPT = """
import importlib
import sys
import warnings
from pathlib import Path

from coverage import Coverage

from pytest_distcov.engine.probes import Probes

root = Path(sys.argv[1])
sys.path.insert(0, str(root))
probes = Probes(Coverage(source=["srcpkg"], data_file=str(root / ".coverage")))
probes.start()
import srcpkg.hot as hot

assert hot.use(200) == 39800
for func in (hot.hot, hot.MADE[0]):
    info = probes.sci.probed(func.__code__)
    assert info is not None and info.version >= 1 and info.successor is None, func
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import srcpkg.old

    importlib.reload(srcpkg.old)
print([Path(w.filename).name for w in caught])
print(sorted(probes.finish().lines(str(root / "srcpkg" / "old.py"))))
"""


@needs_probes
def test_modules_imported_with_probes_run_under_importlibs_own_frames(tmp_path: Path) -> None:
    """A module imported through the probe finder runs under importlib's own exec_module: a
    warning it gives with stacklevel=2 at import time names its importer (and, reloaded,
    importlib), as without probes (jsonschema's suite checks this; with a frame of ours in
    between, the warning named probes.py). The functions it defines still lose their spent
    probes, those made while it was still executing too."""
    package = tmp_path / "srcpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "hot.py").write_text(HOT_MODULE)
    (package / "old.py").write_text(
        "import warnings\n\nwarnings.warn('old', DeprecationWarning, stacklevel=2)\n"
    )
    script = tmp_path / "importer.py"
    script.write_text(IMPORT_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["['importer.py', '__init__.py']", "[1, 3]"]


SYS_PATH_SCRIPT = """
import sys
from pathlib import Path

from coverage import Coverage
from coverage.inorout import InOrOut

from pytest_distcov.engine.probes import Probes

root = Path(sys.argv[1])
recomputed = []
# coverage.py 7.13.3+ looks at sys.path again when it changes; before, it never did.
original = getattr(InOrOut, "set_matchers_depending_on_syspath", None)


def counting(self):
    recomputed.append(len(recomputed))
    return original(self)


if original is not None:
    InOrOut.set_matchers_depending_on_syspath = counting
sys.path.insert(0, str(root))
probes = Probes(Coverage(source=["srcpkg"], data_file=str(root / ".coverage")))
probes.start()
before = len(recomputed)
sys.path.append(str(root / "elsewhere"))  # as pytest's import modes do for test directories
import srcpkg.mod

assert srcpkg.mod.double(2) == 4
data = probes.finish()
count = len(recomputed) - before if original is not None else "-"
print(count, sorted(data.lines(str(root / "srcpkg" / "mod.py"))))
"""


@needs_probes
def test_a_changed_sys_path_is_looked_at_once(tmp_path: Path) -> None:
    """After sys.path changes, coverage.py looks up the source packages again, with importlib;
    the probe finder must stay out of that lookup, or coverage.py asks it again, recursively
    until RecursionError (120 recomputations of the third-party paths a worker on
    python-dateutil, instead of 3)."""
    package = tmp_path / "srcpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("def double(x):\n    return 2 * x\n")
    out = subprocess.run(
        [sys.executable, "-c", SYS_PATH_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    looked, lines = out.stdout.split(maxsplit=1)
    assert lines == "[1, 2]\n"
    assert looked == ("1" if hasattr(InOrOut, "set_matchers_depending_on_syspath") else "-")


PAUSED_MODULE = """
def both(flag):
    if flag:
        return 1
    return 0


def outer(x):
    def inner():
        return x

    return inner()
"""


@needs_probes
@pytest.mark.parametrize("layout", ["known", "unknown"])
def test_resume_renews_probes_only_for_lines_first_run_while_paused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    """Lines run while paused are not recorded, and must get fresh probes so that a later
    measured run records them as coverage.py would. Lines recorded before need none: renewing
    is a heap walk and new probes (python-dateutil runs its xfail tests paused, and they run
    the same code again and again). New probes are swapped into the code's constants; where
    the constants are not laid out as expected (another SlipCover), the code is instrumented
    afresh instead."""
    from coverage import Coverage

    from pytest_distcov.engine import probes as probes_module
    from pytest_distcov.engine.probes import Probes

    if layout == "unknown":
        monkeypatch.setattr(probes_module, "_CAPSULE", type(None))

    probes = Probes(Coverage(data_file=str(tmp_path / ".coverage")))
    namespace: dict[str, Any] = {"__name__": "paused_module"}
    filename = str(tmp_path / "paused_module.py")
    probes.execute(compile(PAUSED_MODULE, filename, "exec"), namespace)
    both, outer = namespace["both"], namespace["outer"]
    both(False)
    probes.pause()  # records what ran so far
    assert sorted(probes.data.lines(filename) or []) == [2, 3, 5, 8]
    before = both.__code__
    both(True)  # line 4 first runs while paused
    assert outer(1) == 1  # and all of outer, and of the closure it makes
    probes.resume()
    renewed = both.__code__
    assert renewed is not before  # fresh probes, for every line of both
    probes.pause()
    both(False)  # lines 3 and 5 hit their fresh probes, but they are recorded already
    probes.resume()
    assert both.__code__ is renewed  # nothing to renew
    assert probes.take() == {}  # what ran while paused is not recorded
    both(True)
    assert outer(2) == 2  # a closure made from renewed code has fresh probes too
    assert probes.take() == {filename: {4, 9, 10, 12}}


REIMPORTED_MODULE = """
import sys


class Shape:
    SIDES = 4

    def area(self, side):
        return side * side


def scale(x):
    if x > 1:
        return x * 10
    return x
"""


@needs_probes
def test_a_module_imported_again_gets_fresh_probes_without_instrumenting_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests that drop a module from sys.modules and import it again (python-dateutil's do:
    on one worker its tz.py was instrumented 4 times) run its code again: it must be measured
    as freshly instrumented code would be, even where its first run was not measured (a
    paused test), but the bytecode need not be rewritten again."""
    import slipcover
    from coverage import Coverage

    from pytest_distcov.engine.probes import Probes

    probes = Probes(Coverage(data_file=str(tmp_path / ".coverage")))
    filename = str(tmp_path / "again.py")
    rewrites: list[str] = []
    rewrite = slipcover.Slipcover.instrument

    def counting(self: Any, co: Any, parent: Any = None) -> Any:
        rewrites.append(co.co_name)
        return rewrite(self, co, parent)

    monkeypatch.setattr(slipcover.Slipcover, "instrument", counting)
    probes.pause()
    first: dict[str, Any] = {"__name__": "again"}
    probes.execute(compile(REIMPORTED_MODULE, filename, "exec"), first)
    assert first["Shape"]().area(3) == 9
    probes.resume()  # the first import ran paused: nothing recorded
    assert probes.take() == {}
    assert sorted(rewrites) == ["<module>", "Shape", "area", "scale"]
    again: dict[str, Any] = {"__name__": "again"}
    probes.execute(compile(REIMPORTED_MODULE, filename, "exec"), again)
    assert len(rewrites) == 4  # the instrumented code was reused
    assert again["Shape"]().area(2) == 4
    assert again["scale"](2) == 20
    assert probes.take() == {filename: {2, 5, 6, 8, 9, 12, 13, 14}}


REWRITTEN_CONFTEST = """
import pytest


@pytest.fixture
def value():
    return 3
"""
REWRITTEN_TESTS = """
def helper(x):
    if x:
        return "yes"
    return "no"


def test_one(value):
    assert helper(value) == "yes"
"""


@needs_probes
def test_test_modules_and_conftests_run_by_pytest_get_probes(pytester: pytest.Pytester) -> None:
    """pytest's assertion rewriter executes test modules and conftests itself (not through an
    import loader): with them measured, probes report them as the C tracer does."""
    pytester.makeconftest(REWRITTEN_CONFTEST)
    pytester.makepyfile(test_rewritten=REWRITTEN_TESTS)
    reports = {}
    for engine in ("coverage", "probes"):
        for mode in (["-p", "no:xdist"], ["-n", "2"]):
            result = run_pytest(
                pytester,
                "--distcov",
                f"--distcov-source={pytester.path}",
                f"--distcov-engine={engine}",
                "--distcov-report=",
                *mode,
            )
            assert result.ret == 0, result.stdout.str() + result.stderr.str()
            saved = pytester.path / f".coverage-{engine}-{mode[-1]}"
            shutil.move(pytester.path / ".coverage", saved)
            reports[engine, mode[-1]] = saved
    reference = reports["coverage", "no:xdist"]
    for got in reports.values():
        assert_same_report(got, reference, pytester.path)
    from .helpers import report_view

    view = report_view(reference, pytester.path)
    tests = view[str(pytester.path / "test_rewritten.py")]
    assert tests["executed_lines"] == [1, 2, 3, 7, 8]
    assert tests["missing_lines"] == [4]
    assert view[str(pytester.path / "conftest.py")]["executed_lines"] == [1, 4, 5, 6]


#: A real way to break coverage.py's file decisions: a module that puts None on sys.path
#: (Python's import system skips it; coverage.py 7.18 stats every sys.path entry and raises
#: TypeError, under its own tracer too). `later` is the first module imported after that.
BREAKS_SYS_PATH = """
import os
import sys

sys.path.insert(0, os.environ.get("UNSET_PLUGINS_DIR"))  # None: the variable is not set


def late(x):
    return x * 2
"""

EARLY = """
def early(x):
    if x:
        return 1
    return 2
"""

ORDERED_TESTS = """
from pkg.early import early


def test_1_early():
    assert early(1) == 1


def test_2_late():
    from pkg.late import late

    assert late(2) == 4


def test_3_later():
    from pkg.later import later

    assert later(2) == 3


def test_4_early_again():
    assert early(0) == 2
"""


#: Does the installed coverage.py raise on None in sys.path (the trigger above)? 7.18 does,
#: 7.13.2 (the floor) does not: asked of coverage.py itself, in a fresh interpreter.
NONE_ON_SYS_PATH = """
import sys, tempfile, coverage
cov = coverage.Coverage(source=[tempfile.gettempdir()], data_file=None)
cov.start()
sys.path.insert(0, None)
try:
    import colorsys
    print("ignored")
except TypeError:
    print("raises")
finally:
    sys.path.remove(None)
    cov.stop()
"""


@needs_probes
@pytest.mark.skipif(sys.version_info >= (3, 12), reason="probes are used on 3.10/3.11 only")
def test_coverage_failing_inside_the_import_finder_turns_probes_off_with_a_note(
    pytester: pytest.Pytester,
) -> None:
    """The user's import works; one note names the module; probes already in place still
    record (early's second branch, run after the failure), later modules are not measured."""
    from .helpers import run_python

    if run_python("-c", NONE_ON_SYS_PATH).strip() != "raises":
        pytest.skip("this coverage.py does not fail on None in sys.path (the test's trigger)")
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\npythonpath = ["."]\n')
    pkg = pytester.mkpydir("pkg")
    (pkg / "early.py").write_text(EARLY)
    (pkg / "late.py").write_text(BREAKS_SYS_PATH)
    (pkg / "later.py").write_text("def later(x):\n    return x + 1\n")
    pytester.makepyfile(test_ordered=ORDERED_TESTS)
    result = run_pytest(
        pytester,
        "-p",
        "no:randomly",
        # (hypothesis's plugin, where installed, reads sys.path at the summary: the None this
        # test puts there breaks it, whatever measures)
        "-p",
        "no:hypothesispytest",
        "--distcov",
        "--distcov-source=pkg",
        "--distcov-engine=probes",
        "--distcov-report=term-missing",
    )
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == 0, out
    result.assert_outcomes(passed=4)
    notes = [line for line in result.stdout.lines if "probes turned off" in line]
    assert len(notes) == 1, out
    assert fnmatch.fnmatch(
        notes[0],
        "distcov: probes turned off at `import pkg.later`: coverage.py failed to decide whether"
        " to measure it (TypeError: *NoneType); from there on this process measures only the"
        " modules imported before it, so the data lacks the code imported later",
    ), notes[0]
    result.stdout.fnmatch_lines(
        [
            "pkg?early.py * 4 * 0 * 100%*",  # both branches: probes in place kept recording
            "pkg?late.py * 5 * 0 * 100%*",
            "pkg?later.py * 2 * 2 * 0%*",  # imported after the failure: honestly not measured
        ]
    )


@needs_probes
@pytest.mark.parametrize("branch", [[], ["--distcov-branch"]], ids=["lines", "branches"])
def test_a_line_run_while_paused_keeps_its_fresh_probe(
    pytester: pytest.Pytester, branch: list[str]
) -> None:
    """A line first run while measuring is paused gets a fresh probe; probes that keep firing
    later (SlipCover then removes the probes of the lines seen) must not take it out before
    the line runs measured."""
    pytester.makepyfile(
        mod="def once():\n    return 1\n\n\ndef hot():\n    return 2\n",
        test_mod=(
            "import pytest\nimport mod\n\n\n@pytest.mark.no_cover\ndef test_paused():\n"
            "    assert mod.once() == 1\n\n\ndef test_measured():\n"
            "    assert sum(mod.hot() for _ in range(500)) == 1000\n"
            "    assert mod.once() == 1\n"
        ),
    )
    pytester.makeini("[pytest]\naddopts = -p no:randomly -p no:cacheprovider\n")
    runs = {}
    for engine in ("auto", "coverage"):
        result = run_pytest(pytester, "--distcov", f"--distcov-engine={engine}", *branch)
        assert result.ret == 0, result.stdout.str()
        runs[engine] = (pytester.path / ".coverage").rename(pytester.path / f"{engine}.coverage")
    result.stdout.no_fnmatch_line("*SlipCover's probes*")  # (the last run: coverage.py's)
    assert_same_report(runs["auto"], runs["coverage"], pytester.path)

"""Branch coverage on Python 3.10 and 3.11: probes in marked code report as coverage.py's C
tracer does.

The marking is the branch engine's (tests/test_branches.py runs the same projects on 3.12 and
3.13); what is particular here is that SlipCover's probes observe it, and that exceptions
raised on branch lines are recorded by handlers in the marked code (engine/catchers.py)
where coverage.py's tracer counts a branch for them. Every comparison is of coverage.py's
JSON report of each file against a serial ``coverage run --branch`` (or, where the engine
starts later than that, ``--distcov-engine=coverage`` started at the same point).
"""

from __future__ import annotations

import ast
import py_compile
import sys
import warnings

import pytest

from . import test_branches
from .helpers import assert_same_report, report_view, run_pytest

# The branch engine's own tests, run here with probes observing the markers (their HEADER is
# this engine's here: see _probe_header).
from .test_branches import (  # noqa: F401 - collected by pytest from this module too
    test_a_file_that_cannot_be_marked_is_measured_by_coverage_py,
    test_a_signal_handler_raising_through_a_catcher_inside_the_hook_does_not_hang,
    test_code_that_is_not_its_source_is_left_to_coverage_py,
    test_coverage_engine_and_a_core_keep_the_tracer,
    test_exceptions_leaving_branch_lines_count_as_the_tracer_counts_them,
    test_exceptions_on_branch_lines_count_as_the_tracer_counts_them,
    test_functions_imported_before_measuring_run_marked_code,
    test_marked_modules_are_kept_for_the_next_run,
    test_the_recursion_limit_reached_in_marked_code_raises_the_users_error_alone,
    test_throwing_into_a_generator_at_a_yield_in_a_branch_condition,
    test_tricky_code_reports_as_coverage_run_does,
)

pytestmark = pytest.mark.skipif(
    sys.version_info[:2] not in ((3, 10), (3, 11)),
    reason="probes observe branch markers on Python 3.10 and 3.11",
)

AUTO = ("--distcov", "--distcov-branch", "--distcov-engine=auto")
HEADER = "distcov: measuring lines and branches*SlipCover's probes with branch markers*"


@pytest.fixture(autouse=True)
def _probe_header(monkeypatch: pytest.MonkeyPatch) -> None:
    """The header the branch engine's tests expect is this engine's, in this module."""
    monkeypatch.setattr(test_branches, "HEADER", HEADER)


def test_a_paused_test_records_nothing_of_its_branches(pytester: pytest.Pytester) -> None:
    """``no_cover``: what a test runs while measuring is paused is not recorded, and a later
    measured run of the same code is, as with coverage.py's tracer."""
    pytester.makepyfile(
        mod="def f(x):\n    if x:\n        return 1\n    return 0\n",
        test_mod=(
            "import pytest\nimport mod\n\n\n@pytest.mark.no_cover\ndef test_paused():\n"
            "    assert mod.f(1) == 1\n\n\ndef test_measured():\n    assert mod.f(0) == 0\n"
        ),
    )
    pytester.makeini("[pytest]\naddopts = -p no:randomly -p no:cacheprovider\n")
    runs = {}
    for engine in ("auto", "coverage"):
        result = run_pytest(pytester, "--distcov", "--distcov-branch", f"--distcov-engine={engine}")
        assert result.ret == 0, result.stdout.str()
        runs[engine] = (pytester.path / ".coverage").rename(pytester.path / f"{engine}.coverage")
    assert_same_report(runs["auto"], runs["coverage"], pytester.path)
    mod = next(v for k, v in report_view(runs["auto"], pytester.path).items() if "mod" in k)
    assert [2, 3] in mod["missing_branches"]


def test_a_wrapper_only_where_an_exception_can_take_a_branch() -> None:
    """A function whose last statement is an ``if`` gets a handler (its false way is the
    exit an exception takes too); one whose branches lead elsewhere gets none; and the
    handler's lines are past the file's end."""
    from pytest_distcov.engine.catchers import HOOK, add_catchers
    from pytest_distcov.engine.marks import plan

    source = (
        "def last(x):\n    if x:\n        return 1\n\n\n"
        "def inner(x):\n    if x:\n        x = 2\n    return x\n"
    )
    marks = plan(source, "m.py")
    add_catchers(marks)
    last, inner = (n for n in marks.tree.body if isinstance(n, ast.FunctionDef))
    assert isinstance(last.body[0], ast.Try)
    hooks = [n for n in ast.walk(last) if isinstance(n, ast.Constant) and n.value == HOOK]
    assert len(hooks) == 1
    assert all(
        n.lineno >= marks.base
        for n in ast.walk(last.body[0])
        if hasattr(n, "lineno") and n not in set(ast.walk(last.body[0].body[0]))
    )
    assert not any(isinstance(n, ast.Try) for n in ast.walk(inner))


def test_marking_a_module_shows_no_deprecation_warning(pytester: pytest.Pytester) -> None:
    """Before Python 3.12 an invalid escape sequence is a DeprecationWarning at compile time:
    a module imported from its ``.pyc`` shows none, and marking it from its source neither."""
    source = 'import re\n\nPATTERN = re.compile("\\d+")\n'
    check = (
        "import warnings\n\n\ndef test_quiet():\n"
        "    with warnings.catch_warnings(record=True) as seen:\n"
        '        warnings.simplefilter("always")\n'
        "        import mod\n"
        "    assert mod.PATTERN and [str(w.message) for w in seen] == []\n"
    )
    pytester.makepyfile(mod=source, test_mod=check)
    pytester.makeini("[pytest]\naddopts = -p no:randomly -p no:cacheprovider\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        py_compile.compile(str(pytester.path / "mod.py"), doraise=True)
    result = run_pytest(pytester, *AUTO)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([HEADER])


def test_a_failing_exception_hook_is_noted_once_in_the_engines_notes() -> None:
    """As the monitor engine does on 3.12+ (tests/test_branches.py): where the catchers'
    hook failed, the next phase's data puts one note in the engine's notes."""
    from coverage import Coverage

    from pytest_distcov.engine.branch_probes import BranchProbes

    test_branches.assert_a_failing_hook_is_noted_once(
        BranchProbes(Coverage(data_file=None, branch=True))
    )

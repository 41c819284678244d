"""A worker killed mid-test keeps every line of every test that finished, on every worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import diff_data, measured, order_independent_arcs, run_pytest, serial_reference

WORK = """
def f1():
    return "one"


def f2():
    return "two"


def f3():
    x = "three"
    return x


def f4():
    return "four"


def g1():
    return "g1"


def g2():
    return "g2"
"""

#: Lines of f3, run by the test that is killed: the only lines a crash may add or lose.
F3_BODY = {9, 10, 11, -9}

KILLER = """
import os
import signal

import work


def test_1():
    assert work.f1() == "one"


def test_2():
    assert work.f2() == "two"


def test_3_kill():
    work.f3()
    if not os.path.exists("killed-once"):  # xdist may run this test again on a new worker
        open("killed-once", "w").close()
        {before_kill}
        os.kill(os.getpid(), signal.SIGKILL)


def test_4():
    assert work.f4() == "four"
"""

OTHER = """
import work


def test_g1():
    assert work.g1() == "g1"


def test_g2():
    assert work.g2() == "g2"
"""


def _project(pytester: pytest.Pytester, before_kill: str = "pass") -> None:
    pytester.makepyfile(work=WORK)
    pytester.makepyfile(
        test_a_killer=KILLER.replace("{before_kill}", before_kill),
        test_b_other=OTHER,
    )
    pytester.makeini("[pytest]\npythonpath = .\n")


def _run_killer(pytester: pytest.Pytester, *extra: str, stream_interval: float) -> pytest.RunResult:
    """Two workers; `--dist loadfile` keeps the killer file's tests on one worker, in order."""
    return run_pytest(
        pytester,
        "--distcov",
        "--distcov-source=work",
        f"--distcov-stream-interval={stream_interval}",
        "-n",
        "2",
        "--dist",
        "loadfile",
        "-p",
        "no:randomly",
        *extra,
    )


def test_killed_worker_keeps_finished_tests_from_its_data_file(
    pytester: pytest.Pytester, private_tmp: Path
) -> None:
    """Nothing is streamed before the kill (huge interval): only the durable file can save it."""
    _project(pytester)
    reference = serial_reference(pytester, "-k", "not test_3_kill", source="work")
    result = _run_killer(pytester, stream_interval=3600)
    out = result.stdout.str()
    assert result.ret == 1, out  # the killed test fails
    result.stdout.fnmatch_lines(
        ["*distcov: worker gw* crashed*recovering the data of its finished tests: 1 data file*"]
    )
    assert out.count("crashed") >= 1
    diff = diff_data(pytester.path / ".coverage", reference)
    # Everything the serial run (without the killer test) measured is there...
    assert not diff.only_right, diff
    assert not diff.files_only_right, diff
    # ... and the only extra lines are those of the test that was killed (f3's body).
    work_file = str(pytester.path / "work.py")
    assert set(diff.only_left.get(work_file, [])) <= F3_BODY, diff
    # The crashed worker's directory was read and removed; nothing is left behind.
    assert not list(private_tmp.glob("distcov-*"))


def test_streamed_chunks_survive_losing_the_worker_and_its_file(
    pytester: pytest.Pytester, private_tmp: Path
) -> None:
    """Chunks stream during the run: with the worker's durable file destroyed before the kill,
    what the finished tests covered still reaches the combined data."""
    _project(
        pytester,
        before_kill=(
            "import glob, shutil, tempfile; "
            "[shutil.rmtree(d) for d in glob.glob(tempfile.gettempdir() + "
            "'/distcov-' + os.environ['PYTEST_XDIST_WORKER'] + '-*')]"
        ),
    )
    result = _run_killer(pytester, stream_interval=0)
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines(["*distcov: worker gw* crashed*0 data files*"])
    lines = measured(pytester.path / ".coverage", arcs=False)[str(pytester.path / "work.py")]
    assert {2, 6} <= lines  # f1 and f2: tests 1 and 2 finished before the kill
    assert 15 in lines  # f4: rescheduled on the replacement worker
    assert {19, 23} <= lines  # the other worker's tests


def test_corrupt_worker_file_is_named_and_streamed_data_kept(
    pytester: pytest.Pytester, private_tmp: Path
) -> None:
    _project(
        pytester,
        before_kill=(
            "import glob, tempfile; "
            "[open(f, 'wb').write(b'not a database' * 100) for f in glob.glob(tempfile.gettempdir()"
            " + '/distcov-' + os.environ['PYTEST_XDIST_WORKER'] + '-*/.coverage.*')]"
        ),
    )
    result = _run_killer(pytester, stream_interval=0)
    out = result.stdout.str()
    assert "Traceback" not in out
    result.stdout.fnmatch_lines(
        ["*distcov: worker gw*: cannot read coverage data file*kept for inspection*"]
    )
    lines = measured(pytester.path / ".coverage", arcs=False)[str(pytester.path / "work.py")]
    assert {2, 6, 15, 19, 23} <= lines
    # The unreadable file is kept where it was, for inspection.
    assert list(private_tmp.glob("distcov-gw*/.coverage.gw*"))


def test_crash_summary_in_branch_mode_is_exact_too(
    pytester: pytest.Pytester, private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_independent_arcs(monkeypatch)  # two workers against one serial run
    _project(pytester)
    reference = serial_reference(pytester, "-k", "not test_3_kill", source="work", branch=True)
    result = _run_killer(pytester, "--distcov-branch", stream_interval=3600)
    assert result.ret == 1
    diff = diff_data(pytester.path / ".coverage", reference, arcs=True)
    assert not diff.only_right, diff
    assert not diff.files_only_right, diff
    extra = diff.only_left.get(str(pytester.path / "work.py"), [])
    assert all(a in F3_BODY or b in F3_BODY for a, b in extra), extra  # type: ignore[misc]

"""Runs that end early keep their coverage and leave nothing behind."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import measured, run_pytest

SLOW = """
import pathlib
import time

import pytest


@pytest.mark.parametrize("i", range(60))
def test_slow(i):
    pathlib.Path(f"started-{i}").touch()  # the test below interrupts once some have started
    time.sleep(0.2)
"""

#: pytest in a child that handles SIGINT by default, even if this process ignores it.
INTERRUPTIBLE_PYTEST = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
    " sys.argv[0] = 'pytest'; runpy.run_module('pytest', run_name='__main__')"
)


def test_exitfirst_keeps_data_and_cleans_up(
    pytester: pytest.Pytester, shapes: Path, private_tmp: Path
) -> None:
    (shapes / "tests" / "test_zz.py").write_text("def test_zfail():\n    assert False\n")
    plain = run_pytest(pytester, "-n", "2", "-x")
    result = run_pytest(pytester, "--distcov", "-n", "2", "-x")
    assert result.ret == plain.ret  # xdist's own status for -x (interrupted), unchanged
    result.stdout.fnmatch_lines(["TOTAL*"])
    assert measured(shapes / ".coverage", arcs=False)
    assert not list(private_tmp.iterdir())


@pytest.mark.parametrize("mode", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist", "in-process"])
def test_ctrl_c_keeps_data_and_cleans_up(
    pytester: pytest.Pytester, shapes: Path, private_tmp: Path, mode: list[str]
) -> None:
    (shapes / "tests" / "test_zslow.py").write_text(SLOW)
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTIBLE_PYTEST, "--distcov", "-p", "no:randomly", *mode],
        cwd=shapes,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Interrupt once ten slow tests have started: the quick tests (which xdist hands out before
    # them) have run by then, however loaded the machine is.
    deadline = time.monotonic() + 120
    while len(list(shapes.glob("started-*"))) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "KeyboardInterrupt" in out
    assert "TOTAL" in out
    assert "Traceback" not in out
    geometry = next(
        v
        for f, v in measured(shapes / ".coverage", arcs=False).items()
        if f.endswith("geometry.py")
    )
    assert len(geometry) > 50  # the tests that ran before the interrupt are all there
    assert not list(private_tmp.iterdir())


WORK = "\n\n".join(f"def f{i}():\n    return {i}\n" for i in range(1, 5))

#: The third test sends SIGTERM to the controller (CI's timeout or cancel), as from outside.
TERM_TESTS = """
import os
import signal

import work


def test_1():
    assert work.f1() == 1


def test_2():
    assert work.f2() == 2


def test_3_term():
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    open(f"pid-{worker or 'controller'}", "w").write(str(os.getpid()))
    work.f3()
    os.kill(os.getppid() if worker else os.getpid(), signal.SIGTERM)


def test_4():
    assert work.f4() == 4
"""

#: A second SIGTERM while the controller finishes (before it saves the data) is ignored.
TERM_AGAIN = """
import os
import signal


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):
        os.kill(os.getpid(), signal.SIGTERM)
"""


def _alive(pid: int) -> bool:
    """A process that still runs (a zombie has closed its files and holds no lock)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("mode", [["-n", "1"], ["-p", "no:xdist"]], ids=["xdist", "in-process"])
def test_sigterm_stops_as_ctrl_c_keeping_data_and_cleaning_up(
    pytester: pytest.Pytester, private_tmp: Path, mode: list[str]
) -> None:
    pytester.makepyfile(work=WORK, test_term=TERM_TESTS)
    pytester.makeconftest(TERM_AGAIN)
    pytester.makeini("[pytest]\npythonpath = .\n")
    result = run_pytest(pytester, "--distcov", "--distcov-source=work", "-p", "no:randomly", *mode)
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.INTERRUPTED, out + result.stderr.str()
    assert "Traceback" not in out
    result.stdout.fnmatch_lines(
        [
            "TOTAL*",
            "distcov: stopped by SIGTERM (as by Ctrl-C); the coverage of the tests that finished"
            " is kept; 1 more SIGTERM ignored while finishing",
            "*KeyboardInterrupt: SIGTERM: stopping as on Ctrl-C*",
        ]
    )
    lines = measured(pytester.path / ".coverage", arcs=False)[str(pytester.path / "work.py")]
    assert {2, 6, 10} <= lines  # f1, f2 (finished tests) and f3 (ran before the signal)
    for pid_file in pytester.path.glob("pid-gw*"):
        assert not _alive(int(pid_file.read_text())), "a worker survived"
    assert not list(private_tmp.glob("distcov-*"))


def test_a_sigterm_handler_of_the_project_is_left_alone(
    pytester: pytest.Pytester, private_tmp: Path
) -> None:
    pytester.makepyfile(work=WORK, test_term=TERM_TESTS)
    pytester.makeconftest(
        "import os, signal\n\nsignal.signal(signal.SIGTERM, lambda *_: os._exit(42))\n"
    )
    pytester.makeini("[pytest]\npythonpath = .\n")
    result = run_pytest(pytester, "--distcov", "--distcov-source=work", "-p", "no:xdist")
    assert result.ret == 42, result.stdout.str()


#: A worker kills the controller (SIGKILL: nothing can clean up after that).
KILL_CONTROLLER = """
import os
import signal
import time


def test_kill_controller():
    open(f"pid-{os.environ['PYTEST_XDIST_WORKER']}", "w").write(str(os.getpid()))
    time.sleep(0.5)  # the other worker writes its pid too
    os.kill(os.getppid(), signal.SIGKILL)


def test_other():
    open(f"pid-{os.environ['PYTEST_XDIST_WORKER']}", "w").write(str(os.getpid()))
    time.sleep(0.5)
"""


def _make_decoys(tmp: Path) -> tuple[list[str], int]:
    """What a later run must leave alone in the temp dir (names as this plugin's own), and a
    descriptor holding a live lock."""
    (tmp / "distcov-no-lock-file").mkdir()
    (tmp / "distcov-a-file").write_text("not a directory")
    held = tmp / "distcov-held-by-a-live-process"
    held.mkdir()
    fd = os.open(held / "distcov.lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_SH)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "distcov.lock").write_text("")  # nobody holds it, but it is behind a symlink
    (tmp / "distcov-symlink").symlink_to(elsewhere)
    names = ["distcov-no-lock-file", "distcov-a-file", held.name, elsewhere.name, "distcov-symlink"]
    return sorted(names), fd


def test_next_run_removes_the_directories_of_a_killed_run(
    pytester: pytest.Pytester, private_tmp: Path
) -> None:
    pytester.makepyfile(test_kill=KILL_CONTROLLER)
    killed = run_pytest(pytester, "--distcov", "-n", "2", "-p", "no:randomly")
    assert killed.ret == -signal.SIGKILL, killed.stdout.str()
    pids = [int(p.read_text()) for p in pytester.path.glob("pid-gw*")]
    assert len(pids) == 2
    deadline = time.monotonic() + 60
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)  # the workers end when they find their controller gone
    left = sorted(p.name.rsplit("-", 1)[0] for p in private_tmp.glob("distcov-*"))
    assert left == ["distcov-controller", "distcov-gw0", "distcov-gw1"]
    decoys, fd = _make_decoys(private_tmp)
    try:
        (pytester.path / "test_kill.py").unlink()
        pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
        result = run_pytest(pytester, "--distcov", "-p", "no:xdist")
    finally:
        os.close(fd)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["distcov: removed 3 temporary directories left by killed runs"])
    assert sorted(p.name for p in private_tmp.iterdir()) == decoys
    assert (private_tmp / "elsewhere" / "distcov.lock").exists()


WAITER = """
import os
import time


def test_0():
    pass


def test_wait():
    if not os.path.exists("pid-waiter"):  # killed by the other worker (not run again)
        worker = os.environ["PYTEST_XDIST_WORKER"]
        open("pid-waiter.new", "w").write(f"{os.getpid()} {worker}")
        os.rename("pid-waiter.new", "pid-waiter")
        time.sleep(60)
"""

#: Kills the other worker once the controller holds its directory, then starts another measured
#: run in the same temp dir, which must leave that directory alone.
KILL_AND_RUN_ANOTHER = """
import glob, os, signal, subprocess, sys, tempfile, time


def _wait_for(condition):
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _held_by(pid, inode):
    with open("/proc/locks") as fh:
        return any(
            f[4] == str(pid) and f[5].rsplit(":", 1)[1] == str(inode)
            for f in (line.split() for line in fh)
        )


def _dead(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_kill_the_other_worker_and_run_another():
    _wait_for(lambda: os.path.exists("pid-waiter"))
    pid, worker = open("pid-waiter").read().split()
    [datadir] = glob.glob(f"{tempfile.gettempdir()}/distcov-{worker}-*")
    inode = os.stat(f"{datadir}/distcov.lock").st_ino
    _wait_for(lambda: _held_by(os.getppid(), inode))  # the controller holds it too
    os.kill(int(pid), signal.SIGKILL)
    _wait_for(lambda: _dead(pid))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    other = subprocess.run(
        [sys.executable, "-m", "pytest", "--distcov", "-p", "no:xdist", "-p", "no:randomly",
         "-o", "python_files=check_*.py", "check_nested.py"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert other.returncode == 0, other.stdout + other.stderr
    assert "removed" not in other.stdout
    assert os.path.isdir(datadir)  # left for the controller, which recovers its data
"""


def test_a_crashed_workers_directory_outlives_it_until_the_controller_is_done(
    pytester: pytest.Pytester, private_tmp: Path
) -> None:
    """Another run starting in the same temp dir while a worker lies dead must leave its
    directory alone: the controller has not recovered the worker's data yet."""
    pytester.makepyfile(test_a=WAITER, test_b=KILL_AND_RUN_ANOTHER)
    (pytester.path / "check_nested.py").write_text("def test_nothing():\n    pass\n")
    result = run_pytest(pytester, "--distcov", "-n", "2", "--dist", "loadfile", "-p", "no:randomly")
    out = result.stdout.str()
    assert result.ret == 1, out  # the killed test fails
    assert "FAILED test_a.py::test_wait" in out, out
    assert "FAILED test_b.py" not in out, out  # its checks held
    result.stdout.fnmatch_lines(
        ["*distcov: worker gw* crashed*recovering the data of its finished tests: 1 data file*"]
    )
    assert not list(private_tmp.glob("distcov-*"))


#: Every test passes; SIGTERM comes first while the controller's session finishes (xdist tearing
#: its workers down, a project's own sessionfinish hook), before the data is saved.
TERM_LATE = """
def test_1():
    import work

    assert work.f1() == 1
"""


@pytest.mark.parametrize("mode", [["-n", "1"], ["-p", "no:xdist"]], ids=["xdist", "in-process"])
def test_a_sigterm_while_the_session_finishes_loses_nothing(
    pytester: pytest.Pytester, private_tmp: Path, mode: list[str]
) -> None:
    """Raised there, the interrupt would escape pytest before the data is saved: it is counted
    and ignored, and the run ends as it would have."""
    pytester.makepyfile(work=WORK, test_late=TERM_LATE)
    pytester.makeconftest(TERM_AGAIN)
    pytester.makeini("[pytest]\npythonpath = .\n")
    result = run_pytest(pytester, "--distcov", "--distcov-source=work", "-p", "no:randomly", *mode)
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.OK, out
    assert "Traceback" not in out
    result.stdout.fnmatch_lines(
        ["TOTAL*", "distcov: SIGTERM received while the run was finishing: ignored"]
    )
    lines = measured(pytester.path / ".coverage", arcs=False)[str(pytester.path / "work.py")]
    assert 2 in lines  # f1's body
    assert not [p for p in private_tmp.iterdir() if p.name.startswith("distcov-")]

"""--distcov-remote on real ssh hosts (tests/sshlab.py): hosts with nothing but a bare Python,
which cannot see this checkout or its virtualenv, so everything they run was shipped."""

from __future__ import annotations

import fcntl
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .helpers import (
    assert_same_data,
    assert_same_report,
    diff_data,
    measured,
    per_worker_reference,
    run_pytest,
    serial_reference,
    sysmon_branches,
)
from .sshlab import SshLab, host_python, other_minor_python
from .test_exactness import _measure_everything

pytestmark = pytest.mark.slow

HOSTS = ("h1", "h2", "h3")


@pytest.fixture
def lab(sshlab: SshLab) -> SshLab:
    for host in HOSTS:
        sshlab.add_host(host)
    return sshlab


def _remote_args(lab: SshLab, hosts: str, *, python: str | None = None) -> list[str]:
    return [
        "--distcov",
        f"--distcov-remote={hosts}",
        f"--distcov-ssh-config={lab.ssh_config}",
        f"--distcov-remote-python={python or host_python()}",
        "--distcov-remote-timeout=120",  # a loaded 2-core CI machine starts hosts slowly
        "-p",
        "no:randomly",
    ]


def _no_remote_paths(data_file: Path, project: Path) -> None:
    """Every measured file is this machine's own file under the project."""
    files = measured(data_file, arcs=False)
    assert files
    for path in files:
        assert Path(path).is_file(), path
        assert Path(path).is_relative_to(project), path


@pytest.mark.skipif(
    sys.version_info[:2] < (3, 12) and importlib.util.find_spec("slipcover") is None,
    reason="branch markers are used on 3.12+, and before where SlipCover's probes are",
)
def test_two_hosts_measuring_with_branch_markers_report_as_a_serial_local_run(
    pytester: pytest.Pytester, shapes: Path, lab: SshLab
) -> None:
    """The branch engine on hosts: marked modules there, their arcs mapped home; every file's
    report (lines and branches) equals a serial ``coverage run --branch``'s."""
    _measure_everything(shapes)
    reference = serial_reference(pytester, branch=True, core="ctrace")  # (3.14+: not sysmon)
    auto = ["--distcov-branch", "--distcov-engine=auto"]
    result = run_pytest(pytester, *_remote_args(lab, "h1,h2"), *auto)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(
        ["distcov: measuring lines and branches*branch markers in 2 workers", "*24 passed*"]
    )
    assert "coverage.py's tracer instead" not in result.stdout.str()
    assert_same_report(shapes / ".coverage", reference, shapes)
    _no_remote_paths(shapes / ".coverage", shapes)


@pytest.mark.parametrize(
    "branch",
    # lines: also on the dependency floors (min), where no other test meets a real host
    [pytest.param(False, id="lines", marks=pytest.mark.floors), pytest.param(True, id="branches")],
)
def test_two_hosts_equal_a_serial_local_run(
    pytester: pytest.Pytester, shapes: Path, lab: SshLab, branch: bool
) -> None:
    _measure_everything(shapes)  # conftest and test modules too: every path must come home
    reference = serial_reference(pytester, branch=branch)
    extra = ["--distcov-branch"] if branch else []
    result = run_pytest(pytester, *_remote_args(lab, "h1,2*h2"), "-v", *extra)
    out = result.stdout.str()
    assert result.ret == 0, out + result.stderr.str()
    result.stdout.fnmatch_lines(
        [
            "distcov: measuring * in 3 workers",
            "distcov: host h1 (h1, Python 3.*): 1 worker; * set up in * s",
            "distcov: host h2 (h2, Python 3.*): 2 workers; * set up in * s",
            "*24 passed*",
        ]
    )
    assert re.search(r"host h1 \(.*\): 1 worker; (shipped \d+ new file|nothing new)", out)
    if sysmon_branches(result):  # 3.14+: arcs depend on the tests each worker ran, in order
        reference = per_worker_reference(pytester, result)
    assert_same_data(shapes / ".coverage", reference, arcs=branch)
    _no_remote_paths(shapes / ".coverage", shapes)
    # coverage.py's own report finds every file: no "No source" for a remote path.
    report = pytester.run(sys.executable, "-m", "coverage", "report", "--data-file=.coverage")
    assert report.ret == 0, report.stdout.str() + report.stderr.str()
    assert "No source" not in report.stdout.str() + report.stderr.str()


def test_second_run_ships_only_what_changed(
    pytester: pytest.Pytester, shapes: Path, lab: SshLab
) -> None:
    first = run_pytest(pytester, *_remote_args(lab, "h3"))
    assert first.ret == 0, first.stdout.str()
    warm = run_pytest(pytester, *_remote_args(lab, "h3"))
    assert warm.ret == 0, warm.stdout.str()
    warm.stdout.fnmatch_lines(["distcov: host h3 *nothing new to ship (* files cached there)*"])
    # An edited source file is all that travels next time.
    geometry = shapes / "shapes" / "geometry.py"
    geometry.write_text(geometry.read_text() + "\n# edited\n")
    edited = run_pytest(pytester, *_remote_args(lab, "h3"))
    assert edited.ret == 0, edited.stdout.str()
    edited.stdout.fnmatch_lines(["distcov: host h3 *shipped 1 new file contents (*) of * files*"])


def test_local_and_remote_workers_together(
    pytester: pytest.Pytester, shapes: Path, lab: SshLab
) -> None:
    _measure_everything(shapes)
    reference = serial_reference(pytester)
    result = run_pytest(pytester, *_remote_args(lab, "h1"), "-n", "1")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["distcov: measuring * in 2 workers", "*24 passed*"])
    assert_same_data(shapes / ".coverage", reference)


WORK = "\n\n".join(f"def f{i}():\n    return {i}" for i in range(30)) + "\n"
TESTS = "import work\n\n" + "\n\n".join(
    f"def test_{i:02d}():\n    assert work.f{i}() == {i}" for i in range(30)
)

KILL_WORKER = """
import os, platform, signal, time
import pytest

#: The controller writes this file (in the host's /tmp, which it sees as CONTROLLER_SIDE) when it
#: takes test_05's setup report: it has then handled every message the worker sent before it,
#: test_04's completion among them, on which xdist may send the worker more tests. The worker
#: dies only after that, so xdist never writes to the dead worker's closed connection: that
#: ends xdist's loop with an INTERNALERROR (pytest-xdist issue #204, not ours to mend).
SEEN = "controller-saw-test_05-{token}"
CONTROLLER_SIDE = {controller_side!r}

def pytest_runtest_logreport(report):
    if "PYTEST_XDIST_WORKER" not in os.environ and report.when == "setup":
        if report.nodeid.endswith("::test_05"):
            open(os.path.join(CONTROLLER_SIDE, SEEN), "w").close()

@pytest.fixture(autouse=True)
def _kill_once(request):
    yield
    if platform.node() != "h1" or request.node.name != "test_05":
        return  # (the serial reference run, here)
    if not os.path.exists("killed-once"):
        open("killed-once", "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join("/tmp", SEEN)):
            if time.monotonic() > deadline:  # (the test driving the run fails on this file)
                open(os.path.join("/tmp", "gave-up-" + SEEN), "w").close()
                return
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGKILL)
"""

#: On host h3, the third test on that host's worker cuts every ssh connection to h3 (from the
#: controller's side, as a network failure would) and waits to be cut off. Only this lab's
#: connections (SSH_CONFIG is its ssh config): other tests may use their own h3 meanwhile.
VANISH = """
import platform, subprocess, time
import pytest

_seen = []

@pytest.fixture(autouse=True)
def _vanish_on_h3():
    if platform.node() == "h3":
        _seen.append(1)
        if len(_seen) == 3:
            time.sleep(1.0)  # let the streamed chunks of the finished tests leave
            subprocess.run(["pkill", "-f", "--", "-F SSH_CONFIG .*ServerAliveCountMax=3 h3 "])
            time.sleep(60)
    yield
"""


def _work_project(pytester: pytest.Pytester, conftest: str) -> None:
    pytester.makepyfile(work=WORK, test_work=TESTS)
    pytester.makeconftest(conftest)
    pytester.makeini("[pytest]\npythonpath = .\n")


def _crash_item(out: str) -> str:
    match = re.search(r"crashed while running '([^']+)'", out)
    assert match, out
    return match.group(1)


def test_worker_killed_on_a_host_keeps_its_finished_tests(
    pytester: pytest.Pytester, lab: SshLab
) -> None:
    """Nothing is streamed before the kill: the data must come back from the host's disk."""
    host = lab.root / "hostfs" / "h1"
    kill = KILL_WORKER.format(token=pytester.path.name, controller_side=str(host / "tmp"))
    _work_project(pytester, kill)
    result = run_pytest(
        pytester,
        *_remote_args(lab, "h1"),
        "--distcov-source=work",
        "--distcov-stream-interval=3600",
    )
    out = result.stdout.str()
    seen = host / "tmp" / f"controller-saw-test_05-{pytester.path.name}"
    assert not seen.with_name(f"gave-up-{seen.name}").exists(), "no setup report in 60 s"
    assert seen.exists(), out  # the controller took test_05's setup report
    seen.unlink()
    assert result.ret == 1, out
    assert "Traceback" not in out
    result.stdout.fnmatch_lines(
        [
            "*distcov: worker gw* on host h1 crashed (*); recovered the data of its finished"
            " tests from the host: 1 data file"
        ]
    )
    # test_05's body ran before the kill (in teardown): serial without it misses line 17 only.
    reference = serial_reference(pytester, "--deselect", "test_work.py::test_05", source="work")
    diff = diff_data(pytester.path / ".coverage", reference)
    assert not diff.only_right, diff
    assert not diff.files_only_right, diff
    assert set(diff.only_left.get(str(pytester.path / "work.py"), [])) <= {17}, diff
    # Remote files are cleaned up: no run directory and no worker directory left on the host.
    assert not list((host / "tmp").glob("distcov-*"))
    assert not list((host / "cache" / "pytest-distcov" / "runs").iterdir())


def test_host_that_vanishes_mid_run_keeps_what_it_streamed(
    pytester: pytest.Pytester, lab: SshLab
) -> None:
    _work_project(pytester, VANISH.replace("SSH_CONFIG", str(lab.ssh_config)))
    result = run_pytest(
        pytester,
        *_remote_args(lab, "h1,h3"),
        "--distcov-source=work",
        "--distcov-stream-interval=0",
    )
    out = result.stdout.str()
    assert result.ret == 1, out  # the test that was running on h3 fails as crashed
    assert "Traceback" not in out
    assert "INTERNALERROR" not in out
    result.stdout.fnmatch_lines(
        [
            "*distcov: worker gw* on host h3 went down (*) and the host does not answer:"
            " keeping the coverage it streamed until then*",
            "*distcov: host h3 is unreachable: its workers continue on h1*",
        ]
    )
    crashed = _crash_item(out)
    reference = serial_reference(pytester, "--deselect", crashed, source="work")
    assert_same_data(pytester.path / ".coverage", reference)


def test_c_tracer_that_cannot_load_falls_back_with_one_line(
    pytester: pytest.Pytester, shapes: Path, lab: SshLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host where coverage's C extension does not load (here: a damaged copy in its cache).

    Branch coverage makes the C tracer the core before Python 3.14; from 3.14 on, sysmon (which
    needs no C extension) measures branches, so the project's configuration asks for ctrace."""
    if sys.version_info >= (3, 14):
        (shapes / ".coveragerc").write_text("[run]\ncore = ctrace\n")
    args = [*_remote_args(lab, "h2"), "--distcov-branch"]
    first = run_pytest(pytester, *args)
    assert first.ret == 0, first.stdout.str()
    first.stdout.fnmatch_lines(["distcov: measuring * with the ctrace core *"])
    trees = lab.root / "hostfs" / "h2" / "cache" / "pytest-distcov" / "trees"
    tracers = list(trees.glob("*/coverage/tracer*.so"))
    assert tracers
    saved = [(t, t.read_bytes()) for t in tracers]
    try:
        for t in tracers:
            t.write_bytes(b"not an ELF file")
        _measure_everything(shapes)
        result = run_pytest(pytester, *args)
    finally:
        for t, content in saved:
            t.write_bytes(content)
    assert result.ret == 0, result.stdout.str()
    lines = [ln for ln in result.stdout.lines if "C extension cannot be loaded" in ln]
    assert len(lines) == 1, result.stdout.str()
    assert "host h2" in lines[0]
    assert "pure-Python tracer" in lines[0]
    # Exact against a serial run with the same core: coverage's two tracers record a few arcs
    # differently on some Pythons (3.13: the end of a `with` block), which is coverage's own.
    with monkeypatch.context() as env:
        env.setenv("COVERAGE_CORE", "pytrace")
        reference = serial_reference(pytester, branch=True)
    assert_same_data(shapes / ".coverage", reference, arcs=True)


#: Each worker writes the coverage.py core it measures with (the running Coverage's own
#: ``sys_info``) into its host's /tmp.
CORE_SEEN = """
import coverage, pytest

@pytest.fixture(autouse=True, scope="session")
def _core_seen():
    cov = coverage.Coverage.current()
    if cov is not None:
        with open("/tmp/core-seen-{token}", "w") as fh:
            fh.write(str(dict(cov.sys_info()).get("core")))
    yield
"""


def test_a_core_chosen_by_the_environment_is_the_hosts_core_too(
    pytester: pytest.Pytester, lab: SshLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``COVERAGE_CORE`` chooses the core the header names; ssh carries no environment, so the
    controller passes it on: the hosts measure with that core too."""
    _work_project(pytester, CORE_SEEN.replace("{token}", pytester.path.name))
    monkeypatch.setenv("COVERAGE_CORE", "pytrace")
    result = run_pytest(pytester, *_remote_args(lab, "h1"), "--distcov-source=work")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["distcov: measuring lines of work with the pytrace core *"])
    seen = lab.root / "hostfs" / "h1" / "tmp" / f"core-seen-{pytester.path.name}"
    assert seen.read_text() == "PyTracer"
    seen.unlink()


#: The second test tells the test driving the run that it started (in the host's /tmp), then
#: waits until its connection is gone (its parent, the host's sshd, exits).
HANG = """
import os, time
import work


def test_1():
    assert work.f1() == 1


def test_2_hang():
    open("/tmp/MARKER", "w").close()
    parent, deadline = os.getppid(), time.monotonic() + 60
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.1)
"""


def _unheld(lock: Path) -> bool:
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def test_next_run_removes_what_a_killed_run_left_on_a_host(
    pytester: pytest.Pytester, lab: SshLab, private_tmp: Path
) -> None:
    """The controller is SIGKILLed mid-run: the next run removes its directories, here and in
    the host's cache."""
    marker = f"started-{pytester.path.name}"
    pytester.makepyfile(work=WORK, test_work=HANG.replace("MARKER", marker))
    pytester.makeini("[pytest]\npythonpath = .\n")
    host = lab.add_host("h2")
    runs = host / "cache" / "pytest-distcov" / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    args = [*_remote_args(lab, "h2"), "--distcov-source=work"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", *args],
        cwd=pytester.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (host / "tmp" / marker).exists() and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before it was killed"
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    [killed] = set(runs.iterdir()) - before
    deadline = time.monotonic() + 60
    while not _unheld(killed / "distcov.lock") and time.monotonic() < deadline:
        time.sleep(0.1)  # the host's agent ends when its connection does
    assert any(killed.glob("distcov-gw0-*/.coverage.gw0"))  # the worker's data was there
    local = sorted(p.name.rsplit("-", 1)[0] for p in private_tmp.glob("distcov-*"))
    assert local == ["distcov-controller", "distcov-ssh"]
    pytester.makepyfile(test_work="import work\n\ndef test_1():\n    assert work.f1() == 1\n")
    result = run_pytest(pytester, *args)
    assert result.ret == 0, result.stdout.str()
    found = re.search(
        r"distcov: removed \d+ temporary directories left by killed runs \(2 here, (\d+) on h2\)",
        result.stdout.str(),
    )
    assert found, result.stdout.str()
    assert int(found.group(1)) >= 1  # other tests may have left some on h2 too
    assert not killed.exists()
    assert not list(private_tmp.glob("distcov-*"))


# -- bad input: one clear line naming the host, quickly, no traceback, no restarts -----------


def _assert_clean_failure(result: pytest.RunResult, *patterns: str) -> None:
    out = result.stdout.str() + result.stderr.str()
    assert result.ret != 0, out
    assert "Traceback" not in out
    assert "INTERNALERROR" not in out
    assert "created:" not in out  # no worker was ever started
    result.stderr.fnmatch_lines(list(patterns))


def _timed(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, float]:
    start = time.monotonic()
    result = run_pytest(pytester, *args)
    return result, time.monotonic() - start


def test_unknown_host(pytester: pytest.Pytester, shapes: Path, lab: SshLab) -> None:
    result, took = _timed(pytester, *_remote_args(lab, "h1,nosuchhost"))
    _assert_clean_failure(
        result, "ERROR: distcov: nosuchhost: ssh could not connect (unknown host, *"
    )
    assert "h1:" not in result.stderr.str()  # the good host is not blamed
    assert took < 45


def test_refused_key(pytester: pytest.Pytester, shapes: Path, lab: SshLab, tmp_path: Path) -> None:
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = tmp_path / "ssh_config"
    config.write_text(
        re.sub(r"IdentityFile \S+", f"IdentityFile {key}", lab.ssh_config.read_text())
    )
    args = _remote_args(lab, "h1")
    args = [a for a in args if not a.startswith("--distcov-ssh-config")]
    result, took = _timed(pytester, *args, f"--distcov-ssh-config={config}")
    _assert_clean_failure(result, "ERROR: distcov: h1: ssh could not connect (*refused key*")
    assert took < 45


def test_host_without_that_python(pytester: pytest.Pytester, shapes: Path, lab: SshLab) -> None:
    result, took = _timed(pytester, *_remote_args(lab, "h1", python="/opt/no/python3"))
    _assert_clean_failure(
        result,
        "ERROR: distcov: h1: connected, but could not start '/opt/no/python3' there *"
        "--distcov-remote-python*",
    )
    assert took < 45


def test_host_with_another_python_minor(
    pytester: pytest.Pytester, shapes: Path, lab: SshLab
) -> None:
    other = other_minor_python()
    if other is None:
        pytest.skip("no Python of another minor version on this machine")
    result = run_pytest(pytester, *_remote_args(lab, "h1", python=other))
    _assert_clean_failure(
        result,
        f"ERROR: distcov: h1 runs Python 3.* ({other}), the controller"
        f" {sys.version_info[0]}.{sys.version_info[1]}.*: workers need the same minor version;*",
    )


def test_nothing_remote_is_left_running(pytester: pytest.Pytester, lab: SshLab) -> None:
    """After a run, no process of it is left on this machine or on the hosts."""
    _work_project(pytester, "")
    result = run_pytest(pytester, *_remote_args(lab, "h1,h2"), "--distcov-source=work")
    assert result.ret == 0, result.stdout.str()
    time.sleep(1.0)
    if shutil.which("pgrep") is None:
        pytest.skip("pgrep is missing")
    left = subprocess.run(
        ["pgrep", "-f", "--", f"-F {lab.ssh_config}"], capture_output=True, text=True, check=False
    )
    assert left.stdout.strip() == "", left.stdout


BROKEN_ON_H1 = """
import os, platform
if platform.node() == "h1" and os.environ.get("PYTEST_XDIST_WORKER"):
    os._exit(3)  # a worker that cannot even start there, as with a broken environment
"""


def test_a_host_where_workers_cannot_start_is_not_retried_forever(
    pytester: pytest.Pytester, lab: SshLab
) -> None:
    _work_project(pytester, BROKEN_ON_H1)
    result = run_pytest(pytester, *_remote_args(lab, "h1"), "--distcov-source=work")
    out = result.stdout.str() + result.stderr.str()
    assert result.ret != 0, out
    assert "Traceback" not in out
    assert out.count("replacing crashed worker") <= 2, out  # --max-worker-restart: 2 x 1 worker
    assert "maximum crashed workers reached: 2" in out


def test_an_interpreter_that_has_everything_gets_only_the_project(
    pytester: pytest.Pytester, shapes: Path, lab: SshLab
) -> None:
    """--distcov-remote-python pointing at a Python with the same pytest, xdist, execnet,
    coverage and pytest-distcov (here: the environment a first run left on the host)."""
    first = run_pytest(pytester, *_remote_args(lab, "h3"))
    assert first.ret == 0, first.stdout.str()
    envs = sorted((lab.root / "hostfs" / "h3" / "cache" / "pytest-distcov" / "envs").iterdir())
    assert envs
    python = f"/root/.cache/pytest-distcov/envs/{envs[0].name}/bin/python3"
    _measure_everything(shapes)
    reference = serial_reference(pytester)
    result = run_pytest(pytester, *_remote_args(lab, "h3", python=python))
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(
        ["distcov: host h3 *: 1 worker; * files*, using the host's own packages; set up in *"]
    )
    line = next(ln for ln in result.stdout.lines if ln.startswith("distcov: host h3"))
    match = re.search(r"(\d+) files", line)
    assert match, line
    assert int(match.group(1)) < 50  # the project's files, not the packages
    assert_same_data(shapes / ".coverage", reference)


def test_a_file_that_changes_while_shipping_does_not_corrupt_the_host_cache(
    lab: SshLab, tmp_path: Path
) -> None:
    """A log the run writes into the project (here: written after the files were listed, as
    ssh's own stderr once was) is shipped as it is, and identical files keep their content."""
    from pytest_distcov.remote.fleet import Fleet
    from pytest_distcov.remote.shipping import build_bundle
    from pytest_distcov.settings.hosts import parse_hosts

    project = tmp_path / "proj"
    (project / "pkg").mkdir(parents=True)
    (project / "pkg" / "__init__.py").write_text("")
    (project / "run.log").write_text("")  # empty, like pkg/__init__.py: one content, two files
    (project / "notes.txt").write_text("as listed\n")
    bundle, _ = build_bundle(str(project), path=[])
    (project / "run.log").write_text("written during the run\n")
    (project / "notes.txt").write_text("changed after listing\n")
    lab.add_host("h4")
    hosts = parse_hosts(["h4"], python=host_python(), ssh_config=str(lab.ssh_config))
    fleet = Fleet(hosts, bundle)
    try:
        fleet.start()
        host = fleet.hosts[0]
        run_dir = host.trees["project"].replace("/root/.cache", str(lab.root / "hostfs/h4/cache"))
        # The empty content is still sound in pkg/__init__.py: run.log goes as it was listed.
        assert Path(run_dir, "run.log").read_text() == ""
        assert Path(run_dir, "pkg", "__init__.py").read_text() == ""
        # No file has notes.txt's listed content any more: it goes as it is now.
        assert Path(run_dir, "notes.txt").read_text() == "changed after listing\n"
    finally:
        fleet.close()


# -- host caches: private, owned, checked ---------------------------------------------------


def _host_cache(lab: SshLab, host: str) -> Path:
    """Where this machine sees ``host``'s cache root (/root/.cache/pytest-distcov there)."""
    return lab.add_host(host) / "cache" / "pytest-distcov"


def _fleet(lab: SshLab, host: str, bundle: Any) -> Any:
    from pytest_distcov.remote.fleet import Fleet
    from pytest_distcov.settings.hosts import parse_hosts

    lab.add_host(host)
    hosts = parse_hosts([host], python=host_python(), ssh_config=str(lab.ssh_config))
    return Fleet(hosts, bundle, timeout=120.0)


def _small_project(tmp_path: Path) -> Path:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "mod.py").write_text("X = 1\n")
    return project


def test_host_cache_and_run_directories_are_private(lab: SshLab, tmp_path: Path) -> None:
    from pytest_distcov.remote.shipping import build_bundle

    fleet = _fleet(lab, "h5", build_bundle(str(_small_project(tmp_path)), path=[])[0])
    try:
        fleet.start()
        cache = _host_cache(lab, "h5")
        run_dir = cache / "runs" / fleet.run_id
        for directory in (cache, cache / "objects", cache / "runs", run_dir, run_dir / "project"):
            assert directory.stat().st_mode & 0o777 == 0o700, directory
        objects = [p for p in (cache / "objects").rglob("*") if p.is_file()]
        assert objects
        assert all(p.stat().st_mode & 0o077 == 0 for p in objects), objects
    finally:
        fleet.close()


OTHER_USER = "distcov-other"


@pytest.fixture(scope="session")
def other_uid() -> int:
    """The uid of a second local user (made once, idempotently; the tests run as root)."""
    import pwd

    try:
        return pwd.getpwnam(OTHER_USER).pw_uid
    except KeyError:
        pass
    if shutil.which("useradd") is None:
        pytest.skip("useradd is missing")
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER],
        capture_output=True,
        check=False,  # another session may have made it meanwhile: looked up below either way
    )
    return pwd.getpwnam(OTHER_USER).pw_uid


@pytest.mark.parametrize("change", ["owner", "mode"])
def test_a_host_cache_root_others_can_change_is_refused(
    lab: SshLab, tmp_path: Path, change: str, other_uid: int
) -> None:
    """The lab's hosts log in as root, so the cache root is given to a second local user: the
    agent compares its owner with its own effective uid (the connecting user's), not with a
    fixed "root"."""
    from pytest_distcov.errors import RemoteError
    from pytest_distcov.remote.shipping import build_bundle

    cache = _host_cache(lab, "h6")
    cache.mkdir(mode=0o700, exist_ok=True)
    bundle = build_bundle(str(_small_project(tmp_path)), path=[])[0]
    try:
        if change == "owner":
            os.chown(cache, other_uid, -1)  # not the connecting user (root)
            expected = (
                f"h6: the cache directory /root/.cache/pytest-distcov belongs to uid {other_uid},"
                " not to the connecting user (uid 0): remove it*XDG_CACHE_HOME*"
            )
        else:
            cache.chmod(0o775)
            expected = (
                "h6: the cache directory /root/.cache/pytest-distcov is writable by group or"
                " others (mode 0775): chmod 700 it*"
            )
        fleet = _fleet(lab, "h6", bundle)
        with pytest.raises(RemoteError) as info:
            fleet.start()
        message = str(info.value)
        assert "\n" not in message
        assert re.fullmatch(
            expected.replace("(", r"\(").replace(")", r"\)").replace("*", ".*"), message
        ), message
        assert not (cache / "runs" / fleet.run_id).exists()  # refused before anything was made
    finally:
        os.chown(cache, 0, 0)
        cache.chmod(0o700)
    fleet = _fleet(lab, "h6", bundle)
    try:
        fleet.start()  # its own again: used
    finally:
        fleet.close()


def test_a_damaged_cached_object_is_sent_again_never_used(lab: SshLab, tmp_path: Path) -> None:
    from pytest_distcov.remote.shipping import build_bundle, digest_bytes

    project = _small_project(tmp_path)
    bundle = build_bundle(str(project), path=[])[0]
    fleet = _fleet(lab, "h7", bundle)
    try:
        fleet.start()
    finally:
        fleet.close()
    digest = digest_bytes(b"X = 1\n")
    stored = _host_cache(lab, "h7") / "objects" / digest[:2] / digest
    stored.write_text("X = 666\n")  # same size, other contents
    fleet = _fleet(lab, "h7", bundle)
    try:
        fleet.start()
        host = fleet.hosts[0]
        assert host.report.shipped_files == 1  # the damaged object, sent again
        copy = host.trees["project"].replace("/root/.cache", str(lab.root / "hostfs/h7/cache"))
        assert Path(copy, "mod.py").read_text() == "X = 1\n"
        assert stored.read_text() == "X = 1\n"
    finally:
        fleet.close()


def test_a_tree_or_environment_whose_marker_is_wrong_is_built_again(
    lab: SshLab, tmp_path: Path
) -> None:
    """A shared tree (and the environment made around a shipped site-packages) is trusted only
    when its completion marker holds its digest; else it is built again from sound objects."""
    import dataclasses

    from pytest_distcov.remote.shipping import build_bundle

    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "libmod.py").write_text("Y = 2\n")
    bundle = build_bundle(str(_small_project(tmp_path)), path=[str(lib)])[0]
    bundle = dataclasses.replace(bundle, site_tree="packages-1")
    tree = next(t for t in bundle.packages if t.name == "packages-1")
    cache = _host_cache(lab, "h8")
    fleet = _fleet(lab, "h8", bundle)
    try:
        fleet.start()
    finally:
        fleet.close()
    built = cache / "trees" / tree.digest
    assert (built / ".distcov-complete").read_text() == tree.digest
    (env,) = (cache / "envs").iterdir()
    for where in (built, env):
        (where / ".distcov-complete").write_text("0" * 32)
        (where / "planted").write_text("not from the controller\n")
    (built / "libmod.py").write_text("Y = 666\n")
    fleet = _fleet(lab, "h8", bundle)
    try:
        fleet.start()
        assert (built / "libmod.py").read_text() == "Y = 2\n"
        assert (built / ".distcov-complete").read_text() == tree.digest
        assert not (built / "planted").exists()
        assert not (env / "planted").exists()
        assert (env / "pyvenv.cfg").is_file()
        assert fleet.hosts[0].venv_python.startswith(
            f"/root/.cache/pytest-distcov/envs/{env.name}/"
        )
    finally:
        fleet.close()


# -- what is shipped ----------------------------------------------------------------------------

ON_THE_HOST = """
import os, platform


def test_what_the_host_got():
    assert platform.node() == "h9"
    assert not os.path.exists(".env")
    assert not os.path.exists("deploy/id_rsa")
    assert not os.path.lexists("leak.txt")
    assert open("certs/server.pem").read() == "opted in\\n"
"""


def test_secrets_and_outside_links_stay_here_unless_included(
    pytester: pytest.Pytester, lab: SshLab, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("private\n")
    pytester.makepyfile(test_host=ON_THE_HOST)
    (pytester.path / ".env").write_text("TOKEN=secret\n")
    (pytester.path / "deploy").mkdir()
    (pytester.path / "deploy" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (pytester.path / "certs").mkdir()
    (pytester.path / "certs" / "server.pem").write_text("opted in\n")
    (pytester.path / "leak.txt").symlink_to(outside)
    pytester.makeini("[pytest]\ndistcov_remote_include =\n    certs/*.pem\n")
    lab.add_host("h9")
    result = run_pytest(pytester, *_remote_args(lab, "h9"))
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(
        [
            "distcov: 2 files that look like secrets (*) not shipped to the hosts; name them in"
            " the distcov_remote_include ini list to ship them",
            "distcov: 1 symbolic link pointing outside the shipped trees not shipped to the hosts*",
            "*1 passed*",
        ]
    )


def test_a_host_cache_is_pruned_to_its_size_and_runs_go_on(
    pytester: pytest.Pytester, lab: SshLab
) -> None:
    """A host's cache beyond --distcov-remote-cache-size loses what was used longest ago (a
    tree no run uses), never what the run needs; the header says so in one line, and the
    run ships again what was pruned and passes."""
    _work_project(pytester, "")
    cache = _host_cache(lab, "h10")
    first = run_pytest(pytester, *_remote_args(lab, "h10"))
    assert first.ret == 0, first.stdout.str() + first.stderr.str()
    assert "cache pruned" not in first.stdout.str()  # 2 GiB by default
    unused = cache / "trees" / ("0" * 32)
    unused.mkdir()
    (unused / "big.bin").write_bytes(b"x" * 100_000)
    (unused / ".distcov-complete").write_text("0" * 32)
    then = time.time() - 3600
    os.utime(unused / ".distcov-complete", (then, then))
    in_use = sorted(p.name for p in (cache / "trees").iterdir() if p != unused)
    assert in_use
    second = run_pytest(pytester, *_remote_args(lab, "h10"), "--distcov-remote-cache-size=1K")
    out = second.stdout.str()
    assert second.ret == 0, out + second.stderr.str()
    second.stdout.fnmatch_lines(
        [
            "distcov: host h10 (h10, Python 3.*): 1 worker; shipped * new file contents *",
            "distcov: host h10: cache pruned to * MiB (removed 1 tree, * files)",
            "*30 passed*",
        ]
    )
    assert not unused.exists()
    assert sorted(p.name for p in (cache / "trees").iterdir()) == in_use
    assert not list((cache / "runs").iterdir())

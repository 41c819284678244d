"""--distcov-remote on real ssh hosts (tests/sshlab.py): hosts with nothing but a bare Python,
which cannot see this checkout or its virtualenv, so everything they run was shipped."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import assert_same_data, diff_data, measured, run_pytest, serial_reference
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


@pytest.mark.parametrize("branch", [False, True], ids=["lines", "branches"])
def test_two_hosts_equal_a_serial_local_run(
    pytester: pytest.Pytester, shapes: Path, lab: SshLab, branch: bool
) -> None:
    _measure_everything(shapes)  # conftest and test modules too: every path must come home
    reference = serial_reference(pytester, branch=branch)
    extra = ["--distcov-branch"] if branch else []
    result = run_pytest(pytester, *_remote_args(lab, "h1,2*h2"), *extra)
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
import os, signal
import pytest

@pytest.fixture(autouse=True)
def _kill_once(request):
    yield
    if request.node.name == "test_05" and not os.path.exists("killed-once"):
        open("killed-once", "w").close()
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
    _work_project(pytester, KILL_WORKER)
    result = run_pytest(
        pytester,
        *_remote_args(lab, "h1"),
        "--distcov-source=work",
        "--distcov-stream-interval=3600",
    )
    out = result.stdout.str()
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
    host = lab.root / "hostfs" / "h1"
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

    Branch coverage makes the C tracer the core on every Python this project supports (sysmon,
    which needs no C extension, measures branches only from 3.14)."""
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

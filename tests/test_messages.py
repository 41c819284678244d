"""Real xdist runs in which a worker sends what it should not (issue 21, points 4 and 5).

The worker's side is forged in the project under test, through the very channel the worker role
sends on (``config.workerinput["distcov_channel"]``, which the role keeps as ``channel``): a
conftest wraps the role's channel at session start and changes one of its real chunks, or a
test sends a message of its own on it. What is measured is ``work`` only, so that the forging
code is not part of the data the runs are compared on.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from coverage import CoverageData

from .helpers import assert_same_data, measured, run_pytest, serial_reference
from .sshlab import SshLab, host_python

WORK = """
def f1():
    return "one"


def f2():
    return "two"


def f3():
    return "three"


def g1():
    return "g1"
"""

TESTS_A = """
import work


def test_1():
    assert work.f1() == "one"


def test_2():
    assert work.f2() == "two"


def test_3():
    assert work.f3() == "three"
"""

TESTS_B = """
import work


def test_g1():
    assert work.g1() == "g1"
"""

#: Worker gw0 changes the first of its real chunks that holds lines of work.py: those lines
#: become ``5`` (not a list) or get a string among them. The rest of its chunks go as they are.
CORRUPTING_CONFTEST = """
import os

import pytest

# (a file, not only the environment: a worker on a remote host has its own environment)
MODE = os.environ.get("DISTCOV_TEST_FORGE") or open("forge-mode").read().strip()


class Corrupting:
    def __init__(self, channel):
        self.channel = channel
        self.done = False

    def send(self, message):
        if not self.done and message.get("kind") == "chunk":
            for ctx in message["data"]["contexts"].values():
                for path, lines in list(ctx["lines"].items()):
                    if not path.endswith("work.py"):
                        continue
                    if MODE in PATHS:  # files no worker measures: nothing else is wrong
                        # (in every chunk with work.py's lines: each file counts once)
                        for name in PATHS[MODE]:
                            ctx["lines"][name.replace("WORKDIR", os.path.dirname(path))] = [1]
                        continue
                    if MODE == "tracer":  # a file measured by a plugin no run here has
                        name = os.path.join(os.path.dirname(path), "page.tmpl")
                        ctx["lines"][name] = [1]
                        message["data"]["tracers"][name] = "evil.Plugin"
                        continue
                    self.done = True
                    if isinstance(lines, bytes):  # packed: little-endian 32-bit numbers
                        lines = [
                            int.from_bytes(lines[i : i + 4], "little")
                            for i in range(0, len(lines), 4)
                        ]
                    if MODE == "arcs":  # arcs beside the lines, in a run of lines only
                        ctx["arcs"] = {path: [[-1, 2], [2, -1]]}
                    elif MODE == "short-blob":  # packed, but not whole 32-bit numbers
                        ctx["lines"][path] = bytes(len(lines) * 4 - 1)
                        ctx["lines"]["/forged/bogus.py"] = [1, 2, 3]
                    elif MODE == "negative-blob":  # packed, a line number below 0
                        ctx["lines"][path] = (-7).to_bytes(4, "little", signed=True)
                        ctx["lines"]["/forged/bogus.py"] = [1, 2, 3]
                    else:
                        ctx["lines"][path] = 5 if MODE == "int" else [*lines, "x"]
                        ctx["lines"]["/forged/bogus.py"] = [1, 2, 3]
        self.channel.send(message)


#: what the path modes add to a real chunk (WORKDIR: the directory of work.py there): what is
#: no regular file here (a local worker's paths are its machine's own, and so this machine's),
#: or paths outside the trees shipped to a host
PATHS = {
    "local-paths": ["WORKDIR/pipe.py", "/dev/zero"],
    "remote-paths": [
        "WORKDIR/../../../../../../../../etc/passwd",
        "/etc/hostname",
        "WORKDIR/.env",  # a secret, never shipped
        "WORKDIR/.git/config",
        "WORKDIR/leak.py",  # a link out of the project, never shipped
        "WORKDIR/leak.pyc",  # coverage.py's reports would read leak.py for it
        ".env",  # relative_files' way to the same secret
    ],
}


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session):
    role = session.config.pluginmanager.get_plugin("distcov-worker")
    if role is not None and os.environ.get("PYTEST_XDIST_WORKER") == "gw0":
        role.channel = Corrupting(role.channel)
"""


def _project(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(work=WORK, test_a=TESTS_A, test_b=TESTS_B)
    pytester.makeini("[pytest]\npythonpath = .\n")


def _run(pytester: pytest.Pytester, *extra: str) -> pytest.RunResult:
    """Two workers; ``--dist loadfile`` keeps a file's tests on one worker, in order; a chunk
    after every test."""
    return run_pytest(
        pytester,
        "--distcov",
        "--distcov-source=work",
        "--distcov-stream-interval=0",
        "-n",
        "2",
        "--dist",
        "loadfile",
        "-p",
        "no:randomly",
        *extra,
    )


def _distcov_lines(result: pytest.RunResult, *words: str) -> list[str]:
    return [line for line in result.outlines if all(w in line for w in words)]


@pytest.mark.parametrize(
    ("mode", "shown"),
    [
        ("int", r"lines of '[^']*work\.py' are not line numbers from 0 to 33554431: 5"),
        ("str", r"lines of '[^']*work\.py' are not line numbers from 0 to 33554431: \[.*'x'\]"),
        ("short-blob", r"work\.py' are not line numbers .*: a packed blob of \d+ bytes, not whole"),
        ("negative-blob", r"work\.py' are not line numbers .*: a packed blob of 1 number, -7"),
    ],
)
def test_a_malformed_chunk_costs_one_line_and_no_data(
    pytester: pytest.Pytester,
    private_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    shown: str,
) -> None:
    """``{"a.py": 5}`` used to abort the run with an INTERNALERROR, ``[1, "x"]`` to be taken and
    to break the data file's write at the end. Now the chunk is left out whole (its forged file
    too), one error line names the worker, the run ends as a normal run does, and the data is
    a serial run's: what the refused chunk held comes back from the worker's data file, which
    the controller reads at the end as it would a dead worker's."""
    _project(pytester)
    pytester.makeconftest(CORRUPTING_CONFTEST)
    monkeypatch.setenv("DISTCOV_TEST_FORGE", mode)
    reference = serial_reference(pytester, source="work")
    result = _run(pytester)
    out = result.stdout.str()
    assert result.ret == 0, out
    assert "INTERNALERROR" not in out + result.stderr.str()
    [refusal] = _distcov_lines(result, "gw0 sent a malformed")
    assert refusal.startswith("distcov: worker gw0 sent a malformed chunk: "), refusal
    assert re.search(shown, refusal), refusal
    assert refusal.endswith("; it is left out; its data files are read at the end instead")
    [recovery] = _distcov_lines(result, "gw0 on", "recovering")
    assert recovery.startswith("distcov: worker gw0 on ")
    assert "sent a message that was refused; recovering all of its data: 1 data file" in recovery
    assert not _distcov_lines(result, "gw1 sent a malformed")
    # Nothing lost (not of gw0's chunks, nor of gw1's), nothing of the refused chunk taken.
    assert_same_data(pytester.path / ".coverage", reference)
    assert not [f for f in measured(pytester.path / ".coverage", arcs=False) if "bogus" in f]
    assert not list(private_tmp.glob("distcov-*"))  # every directory of the run removed


def _run_forged_reported(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, mode: str
) -> tuple[pytest.RunResult, str]:
    """A run with gw0's chunks forged in ``mode`` and a term-missing report: it passes with
    the data of a serial run; its one "left out" line."""
    _project(pytester)
    pytester.makeconftest(CORRUPTING_CONFTEST)
    monkeypatch.setenv("DISTCOV_TEST_FORGE", mode)
    reference = serial_reference(pytester, source="work")
    result = _run(pytester, "--distcov-report=term-missing")
    assert result.ret == 0, result.stdout.str()
    assert_same_data(pytester.path / ".coverage", reference)
    [line] = _distcov_lines(result, "left out")
    return result, line


@pytest.mark.skipif(sys.platform == "win32", reason="a FIFO is POSIX's")
def test_a_chunk_naming_what_is_no_regular_file_leaves_those_files_out(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's chunk that names a FIFO (the report would wait on it for ever) and
    ``/dev/zero`` (it would read until the memory runs out): those two files are left out,
    in one line that names the worker and counts them; everything else is taken, and the run
    ends as a serial one does."""
    os.mkfifo(pytester.path / "pipe.py")
    result, line = _run_forged_reported(pytester, monkeypatch, "local-paths")
    out = result.stdout.str()
    assert line == (
        "distcov: worker gw0 sent data for 2 files left out (the first: it names"
        f" {pytester.path / 'pipe.py'}, which is not a regular file here)"
    )
    assert "refused" not in out  # the chunk itself was taken
    assert "work.py" in out


def test_a_file_measured_by_a_plugin_this_run_lacks_is_left_out_and_the_report_made(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk naming a file measured by a plugin that is no plugin of this run's: coverage.py's
    report would raise KeyError for it (a traceback, no report). The file is left out, in one
    line; the report is made and the data is a serial run's."""
    result, line = _run_forged_reported(pytester, monkeypatch, "tracer")
    out = result.stdout.str()
    assert re.fullmatch(  # (a long path is shown cut short)
        r"distcov: worker gw0 sent data for 1 file left out \(it names /\S+ as measured by"
        r" evil\.Plugin, no plugin of this run's \[run\] plugins\)",
        line,
    ), line
    assert "/test_a_file_measured_by_a_plugin" in line
    assert "work.py" in out
    assert "Traceback" not in out + result.stderr.str()


def test_a_chunk_of_arcs_in_a_run_of_lines_is_refused_whole(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk that holds arcs beside lines, in a run that measures lines, used to be merged
    up to the context with the arcs and then stop, with the worker's other data not read
    again. Now it is refused whole, before anything of it is merged; the worker's data file
    gives its data at the end, and the data is a serial run's."""
    _project(pytester)
    pytester.makeconftest(CORRUPTING_CONFTEST)
    monkeypatch.setenv("DISTCOV_TEST_FORGE", "arcs")
    reference = serial_reference(pytester, source="work")
    result = _run(pytester)
    out = result.stdout.str()
    assert result.ret == 0, out
    [refusal] = _distcov_lines(result, "gw0 sent")
    assert refusal == (
        "distcov: worker gw0 sent branch (arc) data into a run measuring lines only (every"
        " worker must use the same branch setting); it is left out; its data files are read at"
        " the end instead"
    )
    assert _distcov_lines(result, "gw0 on", "recovering")
    assert_same_data(pytester.path / ".coverage", reference)


#: A test that sends a hello of its own, naming a directory that is not its worker's, and then
#: kills its worker: the controller recovers the worker's data from its own directory.
FORGED_HELLO_TEST = """
import os
import signal

import work

DECOYS = {decoys!r}


def test_forge_then_die(request):
    workerinput = getattr(request.config, "workerinput", None)
    if workerinput is None or os.path.exists("forged-once"):
        return  # the serial run, or a replacement worker
    open("forged-once", "w").close()
    worker = workerinput["workerid"]
    channel = workerinput["distcov_channel"]
    for decoy in DECOYS:
        channel.send({{
            "proto": 2, "kind": "hello", "worker": worker, "host": "forged", "pid": os.getpid(),
            "python": "3", "coverage": "7", "core": "ctrace", "notes": [],
            "datadir": decoy.replace("WORKER", worker),
        }})
    os.kill(os.getpid(), signal.SIGKILL)


def test_after():
    assert work.f3() == "three"
"""


def _decoy_data(path: Path) -> None:
    """A real coverage data file with a file no test runs: it must never be read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = CoverageData(basename=str(path))
    data.add_lines({"/decoy/never_run.py": [1, 2, 3]})
    data.write()


def test_a_hello_naming_another_directory_is_refused(
    pytester: pytest.Pytester, private_tmp: Path
) -> None:
    """A forged hello names a directory with a real data file: one in the run's temporary
    directory named as a worker's would be (without the run's tag), and one elsewhere. Neither
    is read, nor removed, nor held; the worker that sent it dies, and its data is recovered
    from its real directory, named in its real hello."""
    _project(pytester)
    decoys = {
        "beside": private_tmp / "distcov-WORKER-decoy000",
        "elsewhere": pytester.path / "elsewhere",
    }
    for worker in ("gw0", "gw1"):
        for decoy in decoys.values():
            _decoy_data(Path(str(decoy).replace("WORKER", worker)) / f".coverage.{worker}")
    # test_a runs first on its worker (loadfile, sorted): f1, f2, f3 are then in its file
    pytester.makepyfile(
        test_c_forge=FORGED_HELLO_TEST.format(decoys=[str(d) for d in decoys.values()])
    )
    reference = serial_reference(pytester, source="work")
    result = _run(pytester)
    out = result.stdout.str()
    assert result.ret == 1, out  # the test that killed its worker fails as crashed
    [refusal] = _distcov_lines(result, "a hello naming")
    worker = re.search(r"distcov: worker (gw\d) sent a hello naming '", refusal)
    assert worker, refusal
    assert str(decoys["beside"]).replace("WORKER", worker[1]) in refusal
    assert refusal.endswith(
        "as its directory, which is not one of this run's: nothing there is held, read or"
        " removed; it is left out (more of its messages were refused)"
    )
    [recovery] = _distcov_lines(result, f"worker {worker[1]} on", "crashed")
    assert re.search(
        rf"recovering the data of its finished tests: \d+ data files? in .*/distcov-{worker[1]}-\w+"
        r"\.[0-9a-f]{8}$",
        recovery,
    ), recovery
    assert "forged" not in recovery  # the host of its real hello
    # The decoys are untouched: there, and not read.
    for w in ("gw0", "gw1"):
        for decoy in decoys.values():
            assert (Path(str(decoy).replace("WORKER", w)) / f".coverage.{w}").is_file()
    assert_same_data(pytester.path / ".coverage", reference)
    assert not [f for f in measured(pytester.path / ".coverage", arcs=False) if "decoy" in f]
    left = sorted(p.name for p in private_tmp.glob("distcov-*"))
    assert left == ["distcov-gw0-decoy000", "distcov-gw1-decoy000"]


#: A worker note with a terminal escape and a line break; files measured whose names hold a
#: newline and an escape, one of which no longer parses when the report runs.
NAMES_TEST = r"""
import runpy
from pathlib import Path

import pytest

ODD = Path("odd")


def test_odd_names(request):
    for name in ("we\nird.py", "esc\x1b[2J.py", "bro\nken.py"):
        runpy.run_path(str(ODD / name))
    (ODD / "bro\nken.py").write_text("def (:\n")  # the report cannot parse it any more
    workerinput = getattr(request.config, "workerinput", None)
    if workerinput is not None:
        workerinput["distcov_channel"].send({
            "proto": 2, "kind": "chunk", "worker": workerinput["workerid"], "seq": 0,
            "tests": 0, "notes": ["clear\x1b[2J\nnext: forged"],
            "data": {"contexts": {}, "tracers": {}, "touched": {}},
        })
"""


@pytest.mark.skipif(sys.platform == "win32", reason="a newline in a file name is POSIX's")
def test_names_and_notes_with_control_characters_stay_one_line_each(
    pytester: pytest.Pytester, private_tmp: Path
) -> None:
    """A worker's note and the measured files' names reach the terminal escaped: no escape
    sequence is written, and none of our lines is split in two. (coverage.py's own report
    renders such names itself: from 7.x it prints a ``?`` for each control character.)"""
    odd = pytester.path / "odd"
    odd.mkdir()
    for name in ("we\nird.py", "esc\x1b[2J.py", "bro\nken.py"):
        (odd / name).write_text("X = 1\n")
    pytester.makepyfile(test_names=NAMES_TEST)
    # a file that does not parse is a warning, not the report's failure
    pytester.path.joinpath(".coveragerc").write_text("[report]\nignore_errors = True\n")
    pytester.makepyfile(test_other="def test_other():\n    pass\n")
    result = run_pytest(
        pytester,
        "--distcov",
        f"--distcov-source={odd}",
        "--distcov-report=term-missing",
        "-n",
        "2",
        "-p",
        "no:randomly",
    )
    out = result.stdout.str()
    assert result.ret == 0, out
    assert "\x1b" not in out + result.stderr.str()
    assert "\r" not in out
    [note] = _distcov_lines(result, "clear")
    assert re.fullmatch(r"distcov: \[gw\d\] clear\\x1b\[2J\\nnext: forged", note), note
    assert not [line for line in result.outlines if line.startswith("next: forged")]
    [parse] = _distcov_lines(result, "parse")
    assert re.fullmatch(
        r"distcov: coverage: Couldn't parse .*'.*/odd/bro\\nken\.py'.* \(couldnt-parse\).*",
        parse,
    ), parse
    assert not [line for line in result.outlines if line.startswith("ken.py")]
    data = CoverageData(basename=str(pytester.path / ".coverage"))
    data.read()
    assert {os.path.basename(f) for f in data.measured_files()} == {
        "we\nird.py",
        "esc\x1b[2J.py",
        "bro\nken.py",
    }


@pytest.mark.slow
def test_a_malformed_chunk_of_a_remote_worker_is_fetched_from_its_host(
    pytester: pytest.Pytester, sshlab: SshLab
) -> None:
    """The same on a real ssh host: the refused chunk's data comes back from the worker's data
    file there, fetched at the end, and the host keeps nothing of the run."""
    sshlab.add_host("h1")
    _project(pytester)
    pytester.makeconftest(CORRUPTING_CONFTEST)
    (pytester.path / "forge-mode").write_text("str")
    reference = serial_reference(pytester, source="work")
    result = run_pytest(
        pytester,
        "--distcov",
        "--distcov-remote=h1",
        f"--distcov-ssh-config={sshlab.ssh_config}",
        f"--distcov-remote-python={host_python()}",
        "--distcov-remote-timeout=120",
        "--distcov-source=work",
        "--distcov-stream-interval=0",
        "-p",
        "no:randomly",
    )
    out = result.stdout.str()
    assert result.ret == 0, out
    [refusal] = _distcov_lines(result, "gw0 on host h1 sent a malformed chunk")
    assert refusal.endswith("; it is left out; its data files are read at the end instead")
    [recovery] = _distcov_lines(result, "gw0 on host h1", "recovered")
    assert recovery == (
        "distcov: worker gw0 on host h1 sent a message that was refused; recovered all of its"
        " data from the host: 1 data file"
    )
    assert_same_data(pytester.path / ".coverage", reference)
    host = sshlab.root / "hostfs" / "h1"
    assert not list((host / "cache" / "pytest-distcov" / "runs").iterdir())


@pytest.mark.slow
def test_paths_of_a_remote_worker_outside_what_was_shipped_are_left_out(
    pytester: pytest.Pytester, sshlab: SshLab
) -> None:
    """A host's chunk naming ``/etc/hostname`` or a shipped tree's path followed by
    ``/../..`` would have pulled this machine's ``/etc`` into the report, and one naming a
    project file that was not shipped (a secret, git's config, a link out of the project, by
    an absolute or a relative path) that file: those files are left out, in one line that
    names the worker and the host and counts each file once (the chunks of every test named
    them); the rest is a serial run's."""
    sshlab.add_host("h1")
    _project(pytester)
    (pytester.path / ".env").write_text("TOKEN=s3cret\n")
    (pytester.path / ".git").mkdir()
    (pytester.path / ".git" / "config").write_text("[remote]\nurl = https://u:t@h/r\n")
    secret = sshlab.root / "id_rsa"
    secret.write_text("-----BEGIN KEY-----\n")
    (pytester.path / "leak.py").symlink_to(secret)
    pytester.makeconftest(CORRUPTING_CONFTEST)
    (pytester.path / "forge-mode").write_text("remote-paths")
    reference = serial_reference(pytester, source="work")
    result = run_pytest(
        pytester,
        "--distcov",
        "--distcov-remote=h1",
        f"--distcov-ssh-config={sshlab.ssh_config}",
        f"--distcov-remote-python={host_python()}",
        "--distcov-remote-timeout=120",
        "--distcov-source=work",
        "--distcov-stream-interval=0",
        "-p",
        "no:randomly",
    )
    out = result.stdout.str()
    assert result.ret == 0, out
    [line] = _distcov_lines(result, "left out")
    assert re.fullmatch(
        r"distcov: worker gw0 sent data for 7 files left out \(the first: it names '/\S+"
        r"(/\.\.){8}/etc/passwd' on h1, outside the trees shipped to that host\)",
        line,
    ), line
    assert_same_data(pytester.path / ".coverage", reference)
    files = measured(pytester.path / ".coverage", arcs=False)
    assert not [f for f in files if "/etc/" in f or ".env" in f or ".git" in f or "leak" in f]


#: Worker gw0 speaks protocol 1, as a worker of the release before packed numbers does (its
#: hello and every chunk): loaded with -p, before the worker role sends its hello.
OLD_WORKER_PLUGIN = """
import os

if os.environ.get("PYTEST_XDIST_WORKER") == "gw0":
    import pytest_distcov.roles.worker

    pytest_distcov.roles.worker.PROTOCOL_VERSION = 1
"""


def test_a_worker_of_protocol_1_is_named_with_what_to_do(pytester: pytest.Pytester) -> None:
    """An older worker (its hello refused: no directory to read its data from) costs its
    data, in two lines that name it and say what to do; no traceback, and the other worker's
    data is all there."""
    _project(pytester)
    pytester.makepyfile(oldworker=OLD_WORKER_PLUGIN)
    result = _run(pytester, "-p", "oldworker")
    out = result.stdout.str()
    assert result.ret == 0, out
    assert "INTERNALERROR" not in out + result.stderr.str()
    assert "Traceback" not in out + result.stderr.str()
    assert _distcov_lines(result, "gw0 sent") == [
        "distcov: worker gw0 sent a message that was refused before its hello named its"
        " directory: what that message held is lost",
        "distcov: worker gw0 sent a message of pytest-distcov protocol 1, the controller speaks"
        " 2: install the same pytest-distcov version on every host; it is left out"
        " (more of its messages were refused)",
    ]
    assert not _distcov_lines(result, "gw1 sent")
    assert measured(pytester.path / ".coverage", arcs=False)  # gw1's, merged

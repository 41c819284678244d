"""A worker whose temporary directory fills up says so once and loses nothing that streamed.

The run's temporary directory is a real, small tmpfs; the suite's first test fills it to the
last byte, so every later write of a worker's durable copy (journal and data file) fails, up
to and including the workers' end. The space comes back when the controller's session ends
(before it writes the combined data file: SQLite's temporary tables, which coverage's
``CoverageData.update`` uses, live in TMPDIR too, and a controller that cannot write is the
business of its own fallback).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import (
    assert_same_data,
    assert_same_report,
    diff_data,
    run_pytest,
    serial_reference,
    tmpfs,
)

#: Enough measured files (with long names) that their rows outgrow the pages SQLite has.
MODULES = 300
TESTS = 30
NAME = "module_with_a_long_name_so_that_the_data_file_must_grow_{:03d}"

FILL = """
import os


def fill():
    '''Fill FILL_DIR up to the last byte (nothing when it is not set: the serial run).'''
    where = os.environ.get("FILL_DIR")
    if not where:
        return
    fd = os.open(os.path.join(where, f"filler-{os.getpid()}"), os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 65536)
    except OSError:
        pass
    finally:
        os.close(fd)
"""

#: The controller frees the space when its session ends (the workers have ended by then).
CONFTEST = """
import glob
import os


def pytest_sessionfinish(session):
    where = os.environ.get("FILL_DIR")
    if where and not hasattr(session.config, "workerinput"):
        for path in glob.glob(os.path.join(where, "filler-*")):
            os.remove(path)
"""


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted afterwards. In CI it must be there: no skip."""
    with tmpfs(tmp_path / "small-tmpfs", "4m") as where:
        yield where


def _project(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\npythonpath = ["."]\n')
    pytester.makeconftest(CONFTEST)
    pkg = pytester.mkpydir("pkg")
    for i in range(MODULES):
        (pkg / f"{NAME.format(i)}.py").write_text(
            f"def f(x):\n    if x > {i % 5}:\n        return x - 1\n    return x + 1\n"
        )
    tests = pytester.mkpydir("tests")
    (tests / "fill.py").write_text(FILL)
    per_test = MODULES // TESTS
    for t in range(TESTS):
        (tests / f"test_part{t:02d}.py").write_text(
            "import importlib\n\nfrom tests.fill import fill\n\n\n"
            f"def test_part{t:02d}():\n"
            "    fill()\n"
            f"    for i in range({t * per_test}, {(t + 1) * per_test}):\n"
            f"        m = importlib.import_module('pkg.' + {NAME!r}.format(i))\n"
            "        assert m.f(i % 7) is not None\n"
        )


@pytest.mark.parametrize("engine", ["coverage", "probes"])
def test_full_temp_dir_is_one_note_and_the_data_stays_exact(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, small_tmpfs: Path, engine: str
) -> None:
    if engine == "probes" and sys.version_info >= (3, 12):
        pytest.skip("the probe engine runs on Python 3.10 and 3.11 only")
    _project(pytester)
    reference = serial_reference(pytester, "-p", "no:randomly", source="pkg")
    monkeypatch.setenv("TMPDIR", str(small_tmpfs))
    monkeypatch.setenv("FILL_DIR", str(small_tmpfs))
    result = run_pytest(
        pytester,
        "-n",
        "2",
        "-p",
        "no:randomly",
        "--distcov",
        "--distcov-source=pkg",
        f"--distcov-engine={engine}",
        "--distcov-report=",
    )
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == 0, out
    assert "Traceback" not in out, out
    assert "INTERNALERROR" not in out, out
    notes = [line for line in result.stdout.lines if "could not write to" in line]
    workers = {line.split("]")[0] for line in notes if line.startswith("distcov: [gw")}
    assert workers, f"no worker hit the full disk: {out}"
    for line in notes:  # one line each, naming the directory and what to do
        assert f"could not write to {small_tmpfs}/distcov-" in line, line
        assert "set TMPDIR to a larger disk" in line, line
    assert len(notes) == len({line.split(" (")[0] for line in notes}), "a note came twice"
    data = pytester.path / ".coverage"
    if engine == "probes":  # probes see line starts: the reports are what must agree
        assert_same_report(data, reference, pytester.path)
    else:
        assert_same_data(data, reference)


@pytest.mark.parametrize("engine", ["coverage", "auto"])
def test_full_temp_dir_with_per_test_contexts_stops_measuring_with_a_note(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, small_tmpfs: Path, engine: str
) -> None:
    """Contexts live only in the data file: a worker that cannot write it stops measuring,
    says so, and the run goes on; the combined data holds nothing a serial run lacks. With
    coverage.py's C tracer, and with what ``auto`` chooses (on 3.12+ the monitor engine)."""
    monkeypatch.setenv("DISTCOV_ENGINE", engine)
    _project(pytester)
    reference = serial_reference(pytester, "-p", "no:randomly", source="pkg")
    monkeypatch.setenv("TMPDIR", str(small_tmpfs))
    monkeypatch.setenv("FILL_DIR", str(small_tmpfs))
    result = run_pytest(
        pytester,
        "-n",
        "2",
        "-p",
        "no:randomly",
        "--distcov",
        "--distcov-source=pkg",
        "--distcov-context=test",
        "--distcov-report=",
    )
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == 0, out
    assert "Traceback" not in out, out
    assert "INTERNALERROR" not in out, out
    stopped = [line for line in result.stdout.lines if "stopped measuring there" in line]
    assert stopped, out
    for line in stopped:
        assert f"could not write to {small_tmpfs}/distcov-" in line, line
    diff = diff_data(pytester.path / ".coverage", reference)
    assert not diff.only_left, diff  # lost lines at most, never invented ones
    assert not diff.files_only_left, diff


#: A file-size limit instead of a full disk (EFBIG; SIGXFSZ ignored, as a limit is met in CI):
#: the journal and the SQLite data file both hit it, in one process of its own.
FILE_SIZE_LIMIT = """
import json, os, resource, signal, sys
from pathlib import Path
from coverage import CoverageData
from pytest_distcov.engine.measure import NewOnly

where = Path(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
data = CoverageData(basename=str(where / ".coverage.w"))
notes = []
new_only = NewOnly(data, where / ".coverage.w.journal", notes)
new_only.tracking = True
data.add_lines({})
limit = os.path.getsize(where / ".coverage.w") + 8192
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
want = {}
for i in range(400):
    name = f"/project/src/a_module_with_a_long_name_{i:04d}.py"
    lines = list(range(1, 40))
    want[name] = set(lines)
    new_only.deferring = i % 2 == 0  # both ways: through the journal and straight to SQLite
    data.add_lines({name: lines})
new_only.deferring = False
new_only.close()
copy = new_only.memory_copy()
print(json.dumps({
    "notes": notes,
    "same": {f: set(copy.lines(f)) for f in copy.measured_files()} == want,
    "unsent": sum(len(v) for v in new_only.take_unsent()[2].values()),
}))
"""


def test_file_size_limit_is_one_note_and_nothing_is_lost(tmp_path: Path) -> None:
    """NewOnly past RLIMIT_FSIZE: one note, and everything given is still in its memory copy
    and in what is left to stream."""
    import json

    from .helpers import run_python

    got = json.loads(run_python("-c", FILE_SIZE_LIMIT, str(tmp_path)))
    assert len(got["notes"]) == 1, got
    assert got["notes"][0].startswith(f"could not write to {tmp_path} ("), got
    assert got["same"], got
    assert got["unsent"] == 400 * 39, got

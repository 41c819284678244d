"""The data file's write begun while xdist stops the workers (``BackgroundWrite``), in real
sessions: the early path is taken, and every way off it (the controller's own data clashing,
the union changing, going on from it failing, never begun) writes the same data file, per
context, with nothing left beside it."""

from __future__ import annotations

import json

import pytest

from .helpers import REPORT_KEYS, by_context, report_view, run_pytest, serial_reference

APP = """
def classify(n):
    if n < 0:
        return "negative"
    for i in range(n):
        if i == 3:
            break
    return "small" if n < 3 else "large"


def summary_only(n):
    if n:
        return "shown"
    return "hidden"
"""

TESTS = """
import pytest

from app import classify


@pytest.fixture
def three():
    assert classify(3) == "large"
    return 3


def test_negative():
    assert classify(-1) == "negative"


def test_small():
    assert classify(1) == "small"


def test_large(three):
    assert classify(three + 2) == "large"


@pytest.mark.parametrize("n", [0, 2, 4])
def test_many(n):
    assert classify(n) in ("small", "large")
"""

#: In the controller only (the workers never write the data file): notes what the early
#: write did, and makes it go off its path as ``DISTCOV_TEST_FAULT`` says.
CONFTEST = """
import os
from pathlib import Path

MARKS = os.environ.get("DISTCOV_TEST_MARKS")  # (none in the serial reference run)
FAULT = os.environ.get("DISTCOV_TEST_FAULT", "")


def note(what):
    with Path(MARKS).open("a") as fh:
        fh.write(what + "\\n")


def pytest_terminal_summary(terminalreporter):
    import app

    app.summary_only(1)  # (the controller's own measured code; the serial run's too)


def pytest_configure(config):
    if hasattr(config, "workerinput") or not MARKS:
        return
    from pytest_distcov.data import merge
    from pytest_distcov.roles import finish

    start, result = merge.BackgroundWrite.start, merge.BackgroundWrite.result
    write = finish.write_data_file

    def started(self):
        note("start")
        if FAULT != "never":
            start(self)

    def resulted(self):
        if FAULT == "changed":
            self._accumulator.changes += 1
        got = result(self)
        note(f"result {'file' if got is not None else 'none'}")
        return got

    def writing(target, fill, *, begun=None):
        note(f"write begun={begun is not None}")
        if begun and FAULT == "begun-fails":
            raise OSError("injected: going on from the begun file fails")
        return write(target, fill, begun=begun)

    merge.BackgroundWrite.start = started
    merge.BackgroundWrite.result = resulted
    finish.write_data_file = writing
    if FAULT == "clash":
        merge.Accumulator.clashes = lambda self, data: True
"""


EXPECTED_MARKS = {
    "": ["start", "result file", "write begun=True"],
    "never": ["start", "result none", "write begun=False"],
    "changed": ["start", "result none", "write begun=False"],
    "clash": ["start", "result file", "write begun=False"],
    "begun-fails": ["start", "result file", "write begun=True", "write begun=False"],
}


@pytest.mark.parametrize("branch", [True, False], ids=["branches", "lines"])
def test_the_data_file_begun_early_or_not_holds_the_same_data(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, branch: bool
) -> None:
    """-n 2, per-test contexts (with branches, and without): the early write is begun and
    gone on from; each way off it writes the data file whole instead, and every run's data
    file is the same, context by context, item by item, and reports as the serial run does,
    in coverage.py's report of the data file and in the plugin's own (its copy of the data
    with every context together, the controller's own measured code in it). No run leaves
    a temporary file or says it could not write."""
    monkeypatch.setenv("DISTCOV_ENGINE", "auto")  # (what users get: markers, probes or sysmon)
    pytester.makepyfile(app=APP, test_app=TESTS, conftest=CONFTEST)
    reference = serial_reference(pytester, "-p", "no:randomly", branch=branch, source="app")
    want = report_view(reference, pytester.path)
    got: dict[str, set[tuple[str, str, object]]] = {}
    for fault, marks in EXPECTED_MARKS.items():
        log = pytester.path / f"marks-{fault or 'none'}.txt"
        monkeypatch.setenv("DISTCOV_TEST_MARKS", str(log))
        monkeypatch.setenv("DISTCOV_TEST_FAULT", fault)
        data_file = pytester.path / ".coverage"
        data_file.unlink(missing_ok=True)
        result = run_pytest(
            pytester,
            "--distcov",
            "--distcov-source=app",
            *(["--distcov-branch"] if branch else []),
            "--distcov-context=test",
            "-n",
            "2",
            "-p",
            "no:randomly",
            "--distcov-report=json:ours.json",
        )
        out = result.stdout.str()
        assert result.ret == 0, out + result.stderr.str()
        assert "could not write" not in out, out
        assert log.read_text().split("\n")[:-1] == marks, fault
        assert not list(pytester.path.glob("*.tmp")), fault
        got[fault] = by_context(data_file)
        assert report_view(data_file, pytester.path) == want, fault
        # the plugin's own report, from its copy of the data with every context together
        files = json.loads((pytester.path / "ours.json").read_text())["files"]
        ours = {
            str(pytester.path / name): {k: info[k] for k in REPORT_KEYS if k in info}
            for name, info in files.items()
        }
        assert ours == want, fault
    first = got[""]
    assert {ctx for ctx, _, _ in first} >= {
        "test_app.py::test_negative|run",
        "test_app.py::test_large|setup",
    }
    for fault, rows in got.items():
        assert rows == first, fault

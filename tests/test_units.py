"""Unit tests of the pure parts: protocol, merge, fail-under, report specs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import execnet
import pytest
from coverage import CoverageData

from pytest_distcov.data.merge import Accumulator, write_data_file
from pytest_distcov.data.readers import DeltaReader, read_data_file
from pytest_distcov.engine.measure import NewOnly
from pytest_distcov.errors import DataFileError, ProtocolError, SettingsError
from pytest_distcov.protocol import PROTOCOL_VERSION, decode, empty_payload
from pytest_distcov.sinks.report import ReportSpec, fails_under, parse_report_spec

from .helpers import run_python


def _chunk(**data: object) -> dict[str, object]:
    payload = empty_payload()
    payload.update(data)  # type: ignore[typeddict-item]
    return {
        "proto": PROTOCOL_VERSION,
        "kind": "chunk",
        "worker": "gw0",
        "seq": 1,
        "tests": 3,
        "data": payload,
        "notes": [],
    }


def test_messages_are_plain_execnet_types() -> None:
    msg = _chunk(contexts={"": {"lines": {"/a.py": [1, 2]}, "arcs": {"/b.py": [(1, 2)]}}})
    assert decode(execnet.loads(execnet.dumps(msg)))["kind"] == "chunk"


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("nope", "expected a dict"),
        ({**_chunk(), "proto": 99}, "protocol 99"),
        ({**_chunk(), "kind": "gossip"}, "unknown kind"),
        ({**_chunk(), "seq": "x"}, "seq"),
        ({**_chunk(), "data": {"contexts": {}}}, "tracers"),
    ],
)
def test_bad_messages_are_rejected(raw: object, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode(raw)


def _data(path: Path, lines: dict[str, list[int]], context: str | None = None) -> CoverageData:
    data = CoverageData(basename=str(path))
    data.set_context(context)
    data.add_lines(lines)
    return data


def test_delta_reader_sends_only_new_lines(tmp_path: Path) -> None:
    data = _data(tmp_path / "d", {"/a.py": [1, 2]})
    reader = DeltaReader(branch=False)
    first = reader.delta(data)
    assert first["contexts"][""]["lines"] == {"/a.py": [1, 2]}
    assert first["touched"] == {"": ["/a.py"]}
    data.add_lines({"/a.py": [2, 3], "/b.py": [7]})
    second = reader.delta(data)
    assert second["contexts"][""]["lines"] == {"/a.py": [3], "/b.py": [7]}
    assert second["touched"] == {"": ["/b.py"]}
    third = reader.delta(data)
    assert third == empty_payload()


def test_delta_reader_keeps_contexts_apart(tmp_path: Path) -> None:
    data = _data(tmp_path / "d", {"/a.py": [1]}, context="t1")
    data.set_context("t2")
    data.add_lines({"/a.py": [1, 2]})
    payload = DeltaReader(branch=False).delta(data)
    assert payload["contexts"]["t1"]["lines"] == {"/a.py": [1]}
    assert payload["contexts"]["t2"]["lines"] == {"/a.py": [1, 2]}


def test_accumulator_round_trip_equals_coverage_update(tmp_path: Path) -> None:
    a = _data(tmp_path / "a", {"/x.py": [1, 2, 3]})
    b = _data(tmp_path / "b", {"/x.py": [3, 4], "/y.py": [9]})
    acc = Accumulator(branch=False)
    for d in (a, b):
        acc.add_payload(DeltaReader(branch=False).delta(d))
    write_data_file(tmp_path / "ours", acc.write_into)
    theirs = CoverageData(basename=str(tmp_path / "theirs"))
    theirs.update(a)
    theirs.update(b)
    ours = read_data_file(tmp_path / "ours")
    assert sorted(ours.measured_files()) == sorted(theirs.measured_files())
    for f in theirs.measured_files():
        assert sorted(ours.lines(f) or []) == sorted(theirs.lines(f) or [])
    # a union: x.py 1-4 (3 once) and y.py 9
    assert sum(len(lines) for lines in acc.covered_lines().values()) == 5


def test_accumulator_refuses_mixed_kinds() -> None:
    acc = Accumulator(branch=False)
    payload = empty_payload()
    payload["contexts"][""] = {"lines": {}, "arcs": {"/a.py": [(1, 2)]}}
    with pytest.raises(DataFileError, match="same branch setting"):
        acc.add_payload(payload)


def test_write_data_file_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / ".coverage"
    target.write_bytes(b"old")

    def boom(data: CoverageData) -> None:
        data.add_lines({"/a.py": [1]})
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_data_file(target, boom)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".coverage"]


def test_read_data_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="does not exist"):
        read_data_file(tmp_path / "none")
    bad = tmp_path / "bad"
    bad.write_bytes(b"garbage" * 50)
    with pytest.raises(DataFileError, match=f"cannot read coverage data file {bad}"):
        read_data_file(bad)


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("term", ReportSpec("term")),
        ("term-missing:skip-covered", ReportSpec("term-missing", skip_covered=True)),
        ("html:out", ReportSpec("html", "out")),
        ("XML:c.xml", ReportSpec("xml", "c.xml")),
        ("markdown", ReportSpec("markdown")),
    ],
)
def test_report_specs(text: str, spec: ReportSpec) -> None:
    assert parse_report_spec(text) == spec


@pytest.mark.parametrize("bad", ["pdf", "term:wide", "json:", ""])
def test_bad_report_specs(bad: str) -> None:
    with pytest.raises(SettingsError):
        parse_report_spec(bad)


@pytest.mark.parametrize(
    ("covered", "statements", "threshold", "precision"),
    [
        (181, 200, 90.5, 0),
        (181, 200, 90.5, 1),
        (181, 200, 90.6, 1),
        (199, 200, 99.5, 0),
        (199, 200, 100, 0),
        (200, 200, 100, 0),
        (1999, 2000, 99.95, 2),
        (2, 3, 66.67, 2),
        (2, 3, 66.66, 2),
        (0, 3, 0, 0),
    ],
)
def test_fails_under_decides_as_coverage_does(
    tmp_path: Path, covered: int, statements: int, threshold: float, precision: int
) -> None:
    """Ask coverage itself (`coverage report --fail-under`) about the same total."""
    src = tmp_path / "m.py"
    src.write_text("".join(f"x{i} = {i}\n" for i in range(statements)))
    data = CoverageData(basename=str(tmp_path / ".coverage"))
    data.add_lines({str(src): list(range(1, covered + 1))} if covered else {})
    data.touch_file(str(src))
    data.close()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "coverage",
            "report",
            f"--fail-under={threshold}",
            f"--precision={precision}",
            "--data-file=.coverage",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    total = 100.0 * covered / statements
    assert fails_under(total, threshold, precision) == (result.returncode == 2), result.stdout


def _spied(data: CoverageData, method: str) -> list[dict[str, list[object]]]:
    """What reaches ``data``'s real ``method`` (installed before NewOnly wraps it)."""
    calls: list[dict[str, list[object]]] = []
    real = getattr(data, method)

    def spy(found: dict[str, list[object]]) -> None:
        calls.append({name: sorted(items) for name, items in found.items()})  # type: ignore[type-var]
        real(found)

    setattr(data, method, spy)
    return calls


def test_new_only_writes_each_line_once_and_keeps_everything(tmp_path: Path) -> None:
    data = CoverageData(str(tmp_path / ".coverage"))
    calls = _spied(data, "add_lines")
    NewOnly(data)
    data.add_lines({"a.py": {1, 2}, "b.py": set()})
    data.add_lines({"a.py": {2, 1}, "b.py": set()})  # nothing new: no call at all
    data.add_lines({"a.py": {2, 3}, "c.py": {7}})
    assert calls == [{"a.py": [1, 2], "b.py": []}, {"a.py": [3], "c.py": [7]}]
    data.write()
    back = CoverageData(str(tmp_path / ".coverage"))
    back.read()
    assert {f: sorted(back.lines(f) or []) for f in back.measured_files()} == {
        "a.py": [1, 2, 3],
        "b.py": [],
        "c.py": [7],
    }


def test_new_only_arcs(tmp_path: Path) -> None:
    data = CoverageData(str(tmp_path / ".coverage"))
    calls = _spied(data, "add_arcs")
    NewOnly(data)
    data.add_arcs({"a.py": [(-1, 1), (1, 2)]})
    data.add_arcs({"a.py": [(1, 2), (2, -1)]})
    assert calls == [{"a.py": [(-1, 1), (1, 2)]}, {"a.py": [(2, -1)]}]
    assert data.has_arcs()
    assert sorted(data.arcs("a.py") or []) == [(-1, 1), (1, 2), (2, -1)]


#: An xdist worker has execnet's threads, and Python 3.12+ warns when such a process forks
#: (DeprecationWarning). 3.12-3.14 report it as unraisable; 3.15 raises it from os.fork() in the
#: parent under filterwarnings = error, after the child exists. The children here only write
#: to their own files and exit.
FORK_IN_THREADED_WORKER = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@FORK_IN_THREADED_WORKER
def test_new_only_forgets_in_a_forked_child(tmp_path: Path) -> None:
    """coverage gives a forked child a new data file: it must get every line again."""
    data = CoverageData(str(tmp_path / ".coverage"))
    calls = _spied(data, "add_lines")
    NewOnly(data)
    data.add_lines({"a.py": {1}})
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        try:
            data.add_lines({"a.py": {1}})
            os._exit(0 if calls[-1] == {"a.py": [1]} else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    before = len(calls)
    data.add_lines({"a.py": {1}})  # the parent still knows: nothing to write
    assert len(calls) == before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@FORK_IN_THREADED_WORKER
def test_new_only_child_leaves_its_parents_journal_alone(tmp_path: Path) -> None:
    data = CoverageData(str(tmp_path / ".coverage"))
    journal = tmp_path / "journal"
    new_only = NewOnly(data, journal)
    new_only.deferring = True
    data.add_lines({"a.py": {1}})
    before = journal.read_bytes()
    pid = os.fork()
    if pid == 0:  # the child writes to its own data file, and never empties the journal
        try:
            data.add_lines({"b.py": {2}})
            new_only.consolidate()
            os._exit(0)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert journal.read_bytes() == before


ENGINE_SCRIPT = """
import sys
from pathlib import Path
from pytest_distcov.engine.measure import Engine, MeasureSpec, NewOnly
spec = MeasureSpec(source=(sys.argv[1],), branch=None, config_file=False, engine="coverage",
                   context=sys.argv[2] or None)
engine = Engine(spec, Path(sys.argv[1]) / "data", "t", subprocesses=False, partial=True)
engine.start()
print(type(getattr(engine.cov._data.add_lines, "__self__", None)).__name__)
engine.finish()
"""


@pytest.mark.parametrize(("context", "expected"), [("", "NewOnly"), ("test", "CoverageData")])
def test_engine_flushes_only_new_lines(tmp_path: Path, context: str, expected: str) -> None:
    """The worker's engine writes only new lines, except with per-test contexts (each test its
    own context). Guards against a coverage release that moved the data object."""
    out = run_python("-c", ENGINE_SCRIPT, str(tmp_path), context)
    assert out.strip() == expected


FLUSHED_NOTES_SCRIPT = """
import sys
from pathlib import Path
from pytest_distcov.engine.measure import Engine, MeasureSpec
spec = MeasureSpec(source=(sys.argv[1],), branch=True, config_file=False, engine="auto",
                   context="test")
engine = Engine(spec, Path(sys.argv[1]) / "data", "t", subprocesses=False, partial=True)
engine.start()
inner = engine._monitor
inner.notes.append("a note of the monitor's")
engine.flush()
engine.flush()
print(engine.notes.count("a note of the monitor's"))
engine.finish()
print(engine.notes.count("a note of the monitor's"))
"""


@pytest.mark.skipif(sys.version_info < (3, 12), reason="the monitor engine runs on 3.12+")
def test_a_note_of_the_monitor_reaches_the_engine_at_the_next_flush(tmp_path: Path) -> None:
    """A note the monitor engine makes while tests run (the catchers' hook failing, say) is
    in the engine's notes after the next flush, once (a worker sends the engine's new notes
    with its next chunk: one that dies later keeps them), and still once after finish."""
    out = run_python("-c", FLUSHED_NOTES_SCRIPT, str(tmp_path))
    assert out.split() == ["1", "1"]


def test_new_only_journals_deferred_flushes_and_recovery_reads_them(tmp_path: Path) -> None:
    """After a test, what is new goes to the journal (no SQLite write); consolidate moves it
    into the data file and empties the journal; a dead worker's journal is recovered, a last
    line cut short by the kill skipped."""
    from pytest_distcov.data.readers import update_from_file

    data = CoverageData(str(tmp_path / ".coverage.gw0"))
    calls = _spied(data, "add_lines")
    journal = tmp_path / ".coverage.gw0.journal"
    new_only = NewOnly(data, journal)
    new_only.deferring = True
    data.add_lines({"a.py": {1, 2}})
    data.add_lines({"a.py": {2, 3}, "b.py": {5}})
    assert calls == [{}]  # only the kind of data reached SQLite, once
    recovered = CoverageData(str(tmp_path / "recovered"))
    with journal.open("a") as fh:
        fh.write('["lines",{"c.py":[9')  # the kill came while this was written
    update_from_file(recovered, journal)
    assert {f: sorted(recovered.lines(f) or []) for f in recovered.measured_files()} == {
        "a.py": [1, 2, 3],
        "b.py": [5],
    }
    new_only.consolidate()
    assert calls[-1] == {"a.py": [1, 2, 3], "b.py": [5]}
    assert journal.read_text() == ""
    new_only.deferring = False
    data.add_lines({"a.py": {4}})  # at the end: straight to the data file
    assert calls[-1] == {"a.py": [4]}


def test_new_only_writes_directly_when_the_journal_cannot_be_written(tmp_path: Path) -> None:
    data = CoverageData(str(tmp_path / ".coverage"))
    calls = _spied(data, "add_lines")
    new_only = NewOnly(data, tmp_path / "no-such-dir" / "journal")
    new_only.deferring = True
    data.add_lines({"a.py": {1}})
    assert calls == [{"a.py": [1]}]


def test_new_only_close_moves_the_journal_in_and_stops_journaling(tmp_path: Path) -> None:
    data = CoverageData(str(tmp_path / ".coverage"))
    calls = _spied(data, "add_lines")
    journal = tmp_path / "journal"
    new_only = NewOnly(data, journal)
    new_only.deferring = True
    data.add_lines({"a.py": {1}})
    assert journal.read_text()
    new_only.close()
    assert calls[-1] == {"a.py": [1]}
    assert not journal.exists()  # empty once moved in, and removed
    data.add_lines({"a.py": {2}})  # still deferring, but the journal is closed
    assert calls[-1] == {"a.py": [2]}


def test_a_journal_that_does_not_fit_is_a_named_error(tmp_path: Path) -> None:
    """Arcs in a journal for line data (or records of another shape) are a DataFileError that
    names the journal, which the controller then keeps for inspection."""
    from pytest_distcov.data.readers import update_from_file

    target = CoverageData(str(tmp_path / "target"))
    target.add_lines({"a.py": {1}})
    journal = tmp_path / ".coverage.gw0.journal"
    journal.write_text('["arcs",{"a.py":[[1,2]]}]\n')
    with pytest.raises(DataFileError, match=r"cannot combine journal .*gw0\.journal"):
        update_from_file(target, journal)
    journal.write_text('["lines",[1,2]]\n')
    with pytest.raises(DataFileError, match=r"cannot combine journal"):
        update_from_file(target, journal)
    assert target.lines("a.py") == [1]


@pytest.mark.parametrize("branch", [False, True])
def test_delta_from_a_file_equals_delta_from_coverage_data(tmp_path: Path, branch: bool) -> None:
    """Streaming reads the worker's data file straight from SQLite (one connection, not one a
    query); what it sends must be what coverage.py's own reading gives: every context, file
    tracers, never-executed files, and arcs beyond the packed range."""
    path = tmp_path / "d"
    assert DeltaReader(branch=branch).delta_from_file(str(path)) == empty_payload()
    data = CoverageData(basename=str(path))
    far = 2**26  # beyond what an arc packs into one number: read row by row
    for context, items in (("", {"/a.py": [1, 2]}), ("t1", {"/a.py": [2, 3], "/b.py": [5]})):
        data.set_context(context or None)
        if branch:
            data.add_arcs({p: [(-1, n) for n in ns] + [(ns[0], far)] for p, ns in items.items()})
        else:
            data.add_lines(items)
    data.touch_files(["/never.py"])
    data.add_file_tracers({"/b.py": "some.plugin"})
    data.write()
    from_file, from_data = DeltaReader(branch=branch), DeltaReader(branch=branch)
    first = from_file.delta_from_file(str(path))
    assert first == from_data.delta(data)
    assert set(first["contexts"]) == {"", "t1"}
    assert first["tracers"] == {"/b.py": "some.plugin"}
    assert "/never.py" in first["touched"][""]
    data.set_context("t1")
    if branch:
        data.add_arcs({"/a.py": [(-1, 9)]})
    else:
        data.add_lines({"/a.py": [9]})
    data.write()
    second = from_file.delta_from_file(str(path))
    assert second == from_data.delta(data)
    assert second["contexts"]["t1"]["arcs" if branch else "lines"] == {
        "/a.py": [(-1, 9)] if branch else [9]
    }

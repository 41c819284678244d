"""The worker's journal format (data/journal.py): what NewOnly writes, recovery reads back."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from coverage import CoverageData

from pytest_distcov.data.journal import (
    JOURNAL_SUFFIX,
    RecordEncoder,
    decode_entry,
    decode_record,
    encode_record,
    journal_for,
    read_entries,
    read_journal,
)
from pytest_distcov.data.readers import update_from_file
from pytest_distcov.errors import DataFileError

#: File names a journal must carry as they are: spaces, quotes, a newline, non-ASCII.
NAMES = ["/src/a.py", "/src/with space/b.py", '/src/"q"\\.py', "/src/new\nline.py", "/src/ü.py"]


@pytest.fixture
def new_data() -> Iterator[Callable[..., CoverageData]]:
    """CoverageData objects that are closed after the test (no connection left to the GC)."""
    made: list[CoverageData] = []

    def make(*args: Any, **kwargs: Any) -> CoverageData:
        made.append(CoverageData(*args, **kwargs))
        return made[-1]

    yield make
    for data in made:
        data.close(force=True)  # force: an in-memory database too


def _lines(data: CoverageData) -> dict[str, list[int]]:
    return {f: sorted(data.lines(f) or []) for f in data.measured_files()}


def _arcs(data: CoverageData) -> dict[str, list[tuple[int, int]]]:
    return {f: sorted(data.arcs(f) or []) for f in data.measured_files()}


def test_journal_is_named_after_its_data_file(tmp_path: Path) -> None:
    assert journal_for(tmp_path / ".coverage.gw0") == tmp_path / f".coverage.gw0{JOURNAL_SUFFIX}"


def test_records_are_one_line_each_and_decode_to_what_was_encoded() -> None:
    lines = {name: {9, 1, 4} for name in NAMES}
    arcs = {name: {(1, 2), (-1, 1), (2, -1), (7, 3)} for name in NAMES}
    for kind, items in (("lines", lines), ("arcs", arcs)):
        encoded = encode_record(kind, items)
        assert encoded.endswith(b"\n")
        assert encoded.count(b"\n") == 1
        text = encoded.decode("utf-8")[:-1]
        assert decode_record(text) == (kind, {n: sorted(found) for n, found in items.items()})


@pytest.mark.parametrize("kind", ["lines", "arcs"])
def test_round_trip_through_a_journal_into_a_context(
    new_data: Callable[..., CoverageData], tmp_path: Path, kind: str
) -> None:
    """Records hold no context: recovery adds them under its target's context, and what it
    reads equals what coverage itself records from the same calls."""
    journal = tmp_path / f".coverage.gw0{JOURNAL_SUFFIX}"
    first: dict[str, Any] = {"/a.py": [1, 2], "/b.py": [5]}
    second: dict[str, Any] = {"/a.py": [2, 3]}
    if kind == "arcs":
        first = {n: [(-1, i) for i in ns] for n, ns in first.items()}
        second = {"/a.py": [(2, 3), (3, -1)]}
    with journal.open("wb") as fh:
        fh.write(encode_record(kind, first))
        fh.write(encode_record(kind, second))
    assert list(read_journal(journal)) == [(kind, first), (kind, second)]
    recovered = new_data(str(tmp_path / "recovered"))
    expected = new_data(no_disk=True)
    for data in (recovered, expected):
        data.set_context("tests/test_a.py::test_one|run")
    for record in (first, second):
        getattr(expected, f"add_{kind}")(record)
    update_from_file(recovered, journal)
    assert recovered.measured_contexts() == {"tests/test_a.py::test_one|run"}
    read = _arcs if kind == "arcs" else _lines
    assert read(recovered) == read(expected)
    assert read(recovered)["/a.py"] == sorted({*first["/a.py"], *second["/a.py"]})


def test_a_record_torn_anywhere_is_skipped_and_the_others_kept(tmp_path: Path) -> None:
    """A worker killed while it wrote its last record leaves any prefix of it: every prefix is
    skipped, and what was written before is all recovered."""
    journal = tmp_path / f"j{JOURNAL_SUFFIX}"
    whole = encode_record("lines", {"/a.py": [1, 2]})
    last = encode_record("lines", {"/b.py": [3, 40], "/c.py": [5]})
    for cut in range(len(last) - 1):
        journal.write_bytes(whole + last[:cut])
        assert list(read_journal(journal)) == [("lines", {"/a.py": [1, 2]})], last[:cut]
    both = [("lines", {"/a.py": [1, 2]}), ("lines", {"/b.py": [3, 40], "/c.py": [5]})]
    journal.write_bytes(whole + last[:-1])  # whole but for its newline: whole
    assert list(read_journal(journal)) == both
    # Any line that is not JSON is skipped, wherever it is.
    journal.write_bytes(whole + last[:9] + b"\n" + last)
    assert list(read_journal(journal)) == both


def test_records_with_contexts_are_recovered_under_them(
    new_data: Callable[..., CoverageData], tmp_path: Path
) -> None:
    """The monitor engine journals each test phase with its label: recovery puts the lines under
    it, and the target's own context is what it was; a reader of context-free records refuses
    a record with a context rather than lose its label."""
    journal = tmp_path / f".coverage.gw0{JOURNAL_SUFFIX}"
    records = [
        encode_record("lines", {"/a.py": [1, 2]}, "t.py::test_a|setup"),
        encode_record("lines", {"/a.py": [2, 3], "/b.py": [7]}, "t.py::test_a|run"),
        encode_record("lines", {"/b.py": [8]}, ""),
    ]
    journal.write_bytes(b"".join(records))
    text = records[1].decode()
    assert decode_entry(text) == ("t.py::test_a|run", ("lines", {"/a.py": [2, 3], "/b.py": [7]}))
    with pytest.raises(ValueError, match="not a journal record"):
        decode_record(text)
    assert [context for context, _ in read_entries(journal)] == [
        "t.py::test_a|setup",
        "t.py::test_a|run",
        "",
    ]
    target = new_data(str(tmp_path / "target"))
    target.set_context("mine")
    target.add_lines({"/kept.py": [1]})
    update_from_file(target, journal)
    target.add_lines({"/kept.py": [2]})  # still under the target's own context
    by_line = {line: sorted(c) for line, c in target.contexts_by_lineno("/a.py").items()}
    assert by_line == {
        1: ["t.py::test_a|setup"],
        2: ["t.py::test_a|run", "t.py::test_a|setup"],
        3: ["t.py::test_a|run"],
    }
    assert target.contexts_by_lineno("/b.py") == {7: ["t.py::test_a|run"], 8: [""]}
    assert target.contexts_by_lineno("/kept.py") == {1: ["mine"], 2: ["mine"]}


HOSTILE = {
    "not a list": "5",
    "a record of three": '["lines",{},1]',
    "another kind": '["calls",{"/a.py":[1]}]',
    "kind not a string": '[1,{"/a.py":[1]}]',
    "files not a mapping": '["lines",[1,2]]',
    "lines not a list": '["lines",{"/a.py":{"1":2}}]',
    "a string line": '["lines",{"/a.py":["1"]}]',
    "a float line": '["lines",{"/a.py":[1.5]}]',
    "a bool line": '["lines",{"/a.py":[true]}]',
    "a negative line": '["lines",{"/a.py":[-1]}]',
    "a huge line": '["lines",{"/a.py":[100000000000]}]',
    "a huger line": '["lines",{"/a.py":[' + "9" * 40 + "]}]",
    "an arc not a pair": '["arcs",{"/a.py":[[1,2,3]]}]',
    "an arc of strings": '["arcs",{"/a.py":[["1","2"]]}]',
    "an arc a number": '["arcs",{"/a.py":[1]}]',
    "a huge arc": '["arcs",{"/a.py":[[1,' + "9" * 30 + "]]}]",
    "a hugely negative arc": '["arcs",{"/a.py":[[-100000000000,2]]}]',
    "nested too deeply": "[" * 100_000,
}


@pytest.mark.parametrize("text", list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_hostile_record_is_a_named_error(
    new_data: Callable[..., CoverageData], tmp_path: Path, text: str
) -> None:
    """JSON that is not a record (as opposed to a line cut short) means a file of something else:
    the DataFileError that names the journal, which the controller keeps for inspection."""
    target = new_data(str(tmp_path / "target"))
    target.add_lines({"/kept.py": [1]})
    journal = tmp_path / f".coverage.gw0{JOURNAL_SUFFIX}"
    journal.write_text(text + "\n")
    with pytest.raises(DataFileError, match=r"cannot combine journal .*gw0\.journal"):
        update_from_file(target, journal)
    assert _lines(target) == {"/kept.py": [1]}


def test_records_before_a_hostile_one_are_given_first(tmp_path: Path) -> None:
    journal = tmp_path / f"j{JOURNAL_SUFFIX}"
    journal.write_bytes(encode_record("lines", {"/a.py": [1]}) + b'["lines",{"/b.py":[-3]}]\n')
    records = read_journal(journal)
    assert next(records) == ("lines", {"/a.py": [1]})
    with pytest.raises(DataFileError, match=r"line 2: the lines of '/b.py' are not line numbers"):
        next(records)


def test_records_after_a_hostile_one_are_kept_too(
    new_data: Callable[..., CoverageData], tmp_path: Path
) -> None:
    """One bad record costs only itself: the records after it reach the target, and the error
    (naming the first bad line) comes once they have."""
    target = new_data(str(tmp_path / "target"))
    journal = tmp_path / f".coverage.gw0{JOURNAL_SUFFIX}"
    journal.write_bytes(
        encode_record("lines", {"/a.py": [1]})
        + b'["lines",{"/b.py":[-3]}]\n'
        + b"7\n"
        + encode_record("lines", {"/c.py": [2]})
    )
    with pytest.raises(DataFileError, match=r"line 2: the lines of '/b.py' are not line numbers"):
        update_from_file(target, journal)
    assert _lines(target) == {"/a.py": [1], "/c.py": [2]}


def test_a_path_that_is_not_utf8_is_a_named_error(
    new_data: Callable[..., CoverageData], tmp_path: Path
) -> None:
    """Raw bytes that are not UTF-8 make the journal unreadable; a lone surrogate escaped in the
    JSON (a file name Python could only decode with surrogateescape) cannot go into a data file.
    Both are the DataFileError that names the journal, and the target is left as it was."""
    target = new_data(str(tmp_path / "target"))
    target.add_lines({"/kept.py": [1]})
    journal = tmp_path / f".coverage.gw0{JOURNAL_SUFFIX}"
    journal.write_bytes(b'["lines",{"/\xff.py":[1]}]\n')
    with pytest.raises(DataFileError, match=r"cannot read journal .*gw0\.journal: 'utf-8' codec"):
        update_from_file(target, journal)
    journal.write_bytes(encode_record("lines", {"/\udcff.py": [1]}))
    with pytest.raises(DataFileError, match=r"cannot combine journal .*gw0\.journal"):
        update_from_file(target, journal)
    assert _lines(target) == {"/kept.py": [1]}


@pytest.mark.parametrize("kind", ["lines", "arcs"])
def test_the_record_encoder_writes_what_encode_record_writes(kind: str) -> None:
    """Each record the encoder makes decodes to what ``encode_record`` gives: the same files
    and items, in any order it kept them, and its context; after it forgot what it kept too."""
    one: frozenset[object] = frozenset({3, 1, 2} if kind == "lines" else {(1, 2), (-1, 1)})
    two: frozenset[object] = frozenset({7} if kind == "lines" else {(7, -5)})
    records = [
        ({"/a.py": one, "/b é.py": two}, "t.py::test_a|run"),
        ({"/a.py": one}, None),
        ({"/a.py": set(two), "/c.py": one}, ""),
        ({"/b é.py": two, "/a.py": one}, 't.py::test_"q"|setup'),
    ]
    encoder = RecordEncoder(kind, keep=2)
    for items, context in [*records, *records]:
        made = encoder.encode(items, context)
        assert made.endswith(b"\n")
        assert made.count(b"\n") == 1
        assert json.loads(made) == json.loads(encode_record(kind, items, context))
        assert decode_entry(made.decode()) == decode_entry(
            encode_record(kind, items, context).decode()
        )

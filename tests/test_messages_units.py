"""What workers and hosts send is checked before it is used, and shown only as printable text.

The pure parts: every field of every message (:func:`pytest_distcov.protocol.decode`), the
directories a hello may name (:class:`pytest_distcov.tempdirs.RunDirs`), the recoveries that read
or fetch them, and :func:`pytest_distcov.errors.printable` on the way to the terminal. The real
runs are in ``test_messages.py``.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from coverage.exceptions import CoverageWarning

from pytest_distcov.covapi.warnings import capture_coverage_warnings
from pytest_distcov.data.merge import Accumulator
from pytest_distcov.data.readers import checked_mapper, read_data_file
from pytest_distcov.errors import DataFileError, ProtocolError, UntrustedPath, printable
from pytest_distcov.protocol import MAX_LINE, PROTOCOL_VERSION, decode, empty_payload, packed
from pytest_distcov.roles.recovery import LocalRecovery
from pytest_distcov.sinks.summary import Summary
from pytest_distcov.tempdirs import LOCK_NAME, HeldDir, RunDirs, run_tag

from .helpers import by_context

# -- decode: every field of every message -----------------------------------------------------


def _chunk(kind: str = "chunk", **fields: Any) -> dict[str, Any]:
    return {
        "proto": PROTOCOL_VERSION,
        "kind": kind,
        "worker": "gw0",
        "seq": 1,
        "tests": 3,
        "data": empty_payload(),
        "notes": [],
        **fields,
    }


def _with(lines: Any = None, arcs: Any = None, **payload: Any) -> dict[str, Any]:
    """A chunk whose one context has ``lines`` and ``arcs`` (by file), and other payload
    fields as given."""
    data: dict[str, Any] = {"contexts": {}, "tracers": {}, "touched": {}}
    if lines is not None or arcs is not None:
        data["contexts"][""] = {"lines": lines or {}, "arcs": arcs or {}}
    data.update(payload)
    return _chunk(data=data)


def _hello(**fields: Any) -> dict[str, Any]:
    return {
        "proto": PROTOCOL_VERSION,
        "kind": "hello",
        "worker": "gw0",
        "host": "box",
        "pid": 123,
        "python": "3.12.1",
        "coverage": "7.13.2",
        "core": "ctrace",
        "datadir": "/tmp/distcov-gw0-abcdefgh",
        "notes": [],
        **fields,
    }


@pytest.mark.parametrize(
    "raw",
    [
        _with(lines={"/a.py": [0, 1, MAX_LINE]}),
        _with(lines={"/a.py": (1, 2)}),
        _with(lines={"/a.py": []}),
        _with(arcs={"/a.py": [(-1, 1), (1, -1), [2, 3], (-MAX_LINE, MAX_LINE)]}),
        _with(lines={"/a\nb.py": [1]}, tracers={"/t.html": "plug.Tracer"}),
        _with(touched={"": ["/a.py"], "plug.Tracer": ["/t.html"]}),
        {**_with(lines={"/a.py": [1]}), "contexts_extra": 1},
        _chunk("final", notes=["a note", "\x1b[2J and\nmore"]),
        _hello(),
        {k: v for k, v in _hello().items() if k != "notes"},  # an older worker's hello
    ],
)
def test_what_a_worker_sends_is_accepted(raw: dict[str, Any]) -> None:
    assert decode(raw)["kind"] == raw["kind"]


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        # the two of the issue: an INTERNALERROR, and a broken final write, before
        (_with(lines={"a.py": 5}), r"^a malformed chunk: lines of 'a\.py' are not line numbers"),
        (_with(lines={"a.py": [1, "x"]}), r"lines of 'a\.py' .*: \[1, 'x'\]$"),
        (_with(lines={"/a.py": [True]}), "line numbers"),
        (_with(lines={"/a.py": [1.0]}), "line numbers"),
        (_with(lines={"/a.py": [-1]}), "from 0 to 33554431"),
        (_with(lines={"/a.py": [MAX_LINE + 1]}), "line numbers"),
        (_with(lines={"/a.py": [10**100]}), "line numbers"),
        (_with(lines={"/a.py": {1: 2}}), "line numbers"),
        (_with(arcs={"/a.py": [1, 2]}), "pairs of line numbers"),
        (_with(arcs={"/a.py": [(1, 2, 3)]}), "pairs"),
        (_with(arcs={"/a.py": [(1, "2")]}), "pairs"),
        (_with(arcs={"/a.py": [(False, 2)]}), "pairs"),
        (_with(arcs={"/a.py": [(-MAX_LINE - 1, 2)]}), "from -33554431 to 33554431"),
        (_with(lines={5: [1]}), "a file named 5"),
        (_with(lines={"": [1]}), "a file named ''"),
        (_with(lines={"/a\x00.py": [1]}), r"a file named '/a\\x00\.py'"),
        (_with(lines={"/\udcff.py": [1]}), "a file named"),
        (
            _chunk(data={"contexts": {3: {"lines": {}, "arcs": {}}}, "tracers": {}, "touched": {}}),
            "context label 3",
        ),
        (
            _chunk(data={"contexts": {"": {"lines": {}}}, "tracers": {}, "touched": {}}),
            "arcs is not a dict",
        ),
        (_chunk(data={"contexts": {"": []}, "tracers": {}, "touched": {}}), "is not a dict"),
        (_chunk(data=[]), "the payload is not a dict"),
        (_chunk(data={"contexts": {}, "tracers": {}}), "'touched'"),
        (_with(tracers={"/a.py": 1}), "the tracer of '/a.py'"),
        (_with(tracers={"/a.py": ""}), "the tracer of '/a.py'"),
        (_with(touched={"": "/a.py"}), "not file names"),
        (_with(touched={"": [None]}), "not file names"),
        (_with(touched={None: []}), "a plugin named None"),
        (_chunk(notes="a note"), "notes are not strings"),
        (_chunk(notes=[1]), "notes are not strings"),
        (_chunk(seq=True), "'seq'"),
        (_chunk(seq=-1), "'seq'"),
        (_chunk(tests="3"), "'tests'"),
        (_chunk(worker=None), "worker id"),
        (_chunk("final", data=None), "^a malformed final message: the payload"),
        (_chunk("gossip"), "unknown kind 'gossip'"),
        ({**_chunk(), "proto": True}, "protocol True"),
        ({**_chunk(), "proto": "1"}, "protocol '1'"),
        (_hello(pid=True), "^a malformed hello: its 'pid' is True"),
        (_hello(pid=0), "'pid'"),
        (_hello(datadir=["/tmp"]), "'datadir'"),
        (_hello(datadir=""), "'datadir'"),
        (_hello(datadir="/tmp/x\x00y"), "'datadir'"),
        (_hello(host=None), "'host'"),
        (_hello(coverage=7), "'coverage'"),
        (_hello(notes=[b"bytes"]), "notes are not strings"),
        (["a", "list"], "^a malformed message: expected a dict, got list"),
    ],
)
def test_a_malformed_message_is_refused_with_what_is_wrong(raw: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as info:
        decode(raw)
    assert "\n" not in str(info.value)


def test_packed_lines_and_arcs_decode_to_what_was_packed() -> None:
    """On the wire a file's numbers are one blob of little-endian 32-bit integers; decoding
    gives back the lists (arcs as pairs), the bounds included; the payload packed is kept."""
    lines = {"/a.py": [0, 1, 7, MAX_LINE], "/b.py": []}
    arcs = {"/a.py": [(-1, 1), (1, 2), (2, -1), (-MAX_LINE, MAX_LINE)]}
    data = {
        "contexts": {"t|run": {"lines": lines, "arcs": {}}, "": {"lines": {}, "arcs": arcs}},
        "tracers": {"/t.html": "plug.Tracer"},
        "touched": {"": ["/a.py"]},
    }
    wire = packed(data)  # type: ignore[arg-type]
    assert wire["contexts"]["t|run"]["lines"]["/a.py"] == (
        b"\x00\x00\x00\x00\x01\x00\x00\x00\x07\x00\x00\x00\xff\xff\xff\x01"
    )
    assert wire["contexts"][""]["arcs"]["/a.py"][:8] == b"\xff\xff\xff\xff\x01\x00\x00\x00"
    got = decode(_chunk(data=wire))["data"]
    assert got["contexts"]["t|run"]["lines"] == {f: frozenset(n) for f, n in lines.items()}
    assert got["contexts"][""]["arcs"] == {f: frozenset(a) for f, a in arcs.items()}
    assert (got["tracers"], got["touched"]) == (data["tracers"], data["touched"])
    assert data["contexts"]["t|run"]["lines"]["/a.py"] == [0, 1, 7, MAX_LINE]  # (unchanged)


def test_a_blob_that_comes_again_is_decoded_once_and_shared() -> None:
    """With a store of blobs (the receiver's), the same blob in two messages decodes to the
    very same frozenset (checked and decoded once); a blob of other bytes is decoded anew,
    and a bad blob is refused each time it comes, never kept. Without a store each message
    decodes its own."""
    from pytest_distcov.protocol import Blobs

    blob = packed(
        {"contexts": {"": {"lines": {"/a.py": [5, 6]}, "arcs": {}}}, "tracers": {}, "touched": {}}  # type: ignore[typeddict-item]
    )["contexts"][""]["lines"]["/a.py"]

    def message(item: bytes) -> dict[str, Any]:
        return _chunk(
            data={
                "contexts": {"t|run": {"lines": {"/a.py": item}, "arcs": {}}},
                "tracers": {},
                "touched": {},
            }
        )

    def lines(item: bytes, blobs: Blobs | None) -> Any:
        return decode(message(item), blobs)["data"]["contexts"]["t|run"]["lines"]["/a.py"]

    blobs = Blobs()
    first = lines(bytes(blob), blobs)
    assert first == frozenset({5, 6})
    assert lines(bytes(blob), blobs) is first
    assert lines(bytes(blob), None) is not first
    assert lines(blob + b"\x07\x00\x00\x00", blobs) == frozenset({5, 6, 7})
    bad = b"\xff\xff\xff\xff"  # -1: no line number
    for _ in range(2):
        with pytest.raises(ProtocolError, match="-1 among them"):
            decode(message(bad), blobs)
    assert ("lines", bad) not in blobs.found
    blobs.clear()
    assert (blobs.found, blobs.cost) == ({}, 0)


def test_the_kept_blobs_stay_within_their_budget() -> None:
    """What the kept sets cost is estimated from their blobs, and beyond the budget the
    store is emptied (a worker sending ever new blobs cannot make the controller keep them
    all; an empty blob costs its entry too); a blob larger than the largest kept is never
    kept. The estimate covers what the sets really take."""
    import tracemalloc

    from pytest_distcov.protocol import Blobs

    store = Blobs()
    store.BUDGET = 4 * (store.PER_BYTE * 16 + store.ENTRY)
    store.BLOB = 16
    blobs = [n.to_bytes(4, "little") * 4 for n in range(1, 10)]  # 16 bytes each
    for blob in blobs:
        assert store("lines", blob) == frozenset({int.from_bytes(blob[:4], "little")})
        assert store.cost <= store.BUDGET
    assert 0 < len(store.found) <= 4
    assert store("lines", blobs[-1]) is store("lines", blobs[-1])
    big = (1).to_bytes(4, "little") * 5  # 20 bytes
    assert store("lines", big) == frozenset({1})
    assert ("lines", big) not in store.found
    store.clear()
    for _ in range(3):
        store("lines", b"")
    assert store.cost == store.ENTRY  # (one entry: the same empty blob)

    for kind, width in (("lines", 4), ("arcs", 8)):
        real = Blobs()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for n in range(200):
                numbers = range(1000 * n + 300, 1000 * n + 300 + 2 * 64)
                blob = b"".join(i.to_bytes(4, "little") for i in numbers)[: width * 64]
                real(kind, bytes(blob))
            used = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert used <= real.cost, (kind, used, real.cost)


def test_a_set_given_again_is_packed_once_and_decodes_as_given() -> None:
    """With a store of packed sets, each frozenset is packed once for every context and
    chunk that holds it again; every copy decodes to its items (in any order), and items given
    otherwise (a list, a set) are packed each time."""
    arcs: frozenset[tuple[int, int]] = frozenset({(-1, 1), (1, 2), (2, -1)})
    lines: frozenset[int] = frozenset({3, 1, 2})
    kept: dict[frozenset[object], object] = {}

    def payload(label: str) -> dict[str, object]:
        return {
            "contexts": {
                f"{label}|run": {"lines": {}, "arcs": {"/a.py": arcs, "/b.py": arcs}},
                f"{label}|setup": {"lines": {"/a.py": lines, "/c.py": [5, 4]}, "arcs": {}},
            },
            "tracers": {},
            "touched": {},
        }

    first = packed(payload("t1"), kept)  # type: ignore[arg-type]
    second = packed(payload("t2"), kept)  # type: ignore[arg-type]
    assert set(kept) == {arcs, lines}
    blob = first["contexts"]["t1|run"]["arcs"]["/a.py"]
    assert second["contexts"]["t2|run"]["arcs"]["/b.py"] is blob
    for wire, label in ((first, "t1"), (second, "t2")):
        got = decode(_chunk(data=wire))["data"]["contexts"]
        assert set(got[f"{label}|run"]["arcs"]["/a.py"]) == arcs
        assert set(got[f"{label}|run"]["arcs"]["/b.py"]) == arcs
        assert sorted(got[f"{label}|setup"]["lines"]["/a.py"]) == [1, 2, 3]
        assert got[f"{label}|setup"]["lines"]["/c.py"] == frozenset({5, 4})


def _blob(*numbers: int) -> bytes:
    return b"".join(n.to_bytes(4, "little", signed=True) for n in numbers)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (
            _with(lines={"/a.py": b"\x01\x00\x00"}),
            "lines of '/a.py' are not line numbers from 0 to 33554431:"
            " a packed blob of 3 bytes, not whole 32-bit numbers$",
        ),
        (_with(lines={"/a.py": _blob(MAX_LINE + 1)}), f"from 0 to .*, {MAX_LINE + 1} among"),
        (_with(lines={"/a.py": _blob(3, -1, 2)}), "a packed blob of 3 numbers, -1 among them$"),
        (_with(lines={"/a.py": _blob(-(2**31))}), f"{-(2**31)} among them$"),
        (_with(arcs={"/a.py": _blob(1)}), "pairs of line numbers .*: a packed blob of 4 bytes"),
        (_with(arcs={"/a.py": _blob(1, 2, 3)}), "not whole pairs of 32-bit numbers$"),
        (_with(arcs={"/a.py": bytes(10)}), "pairs of line numbers"),
        (_with(arcs={"/a.py": _blob(1, -MAX_LINE - 1)}), f"{-MAX_LINE - 1} among them$"),
        # not bytes: what execnet may carry besides, refused by type and quoted short
        (_with(lines={"/a.py": bytearray(4)}), r"not line numbers .*: bytearray\(b'\\x00"),
        (_with(lines={"/a.py": "\x01\x00\x00\x00"}), "lines of '/a.py' are not line numbers"),
        (_with(arcs={"/a.py": 7}), "pairs of line numbers .*: 7$"),
    ],
)
def test_a_malformed_packed_blob_is_refused(raw: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as info:
        decode(raw)
    assert str(info.value).startswith("a malformed chunk: ")
    assert "\n" not in str(info.value)


def test_a_huge_blob_is_refused_in_a_short_line_and_a_large_one_decodes() -> None:
    """A blob of 64 MiB that is not whole numbers is named by its size, never quoted; one of
    a million good line numbers decodes (and a million arcs), the bounds checked in C."""
    with pytest.raises(ProtocolError) as info:
        decode(_with(lines={"/a.py": bytes(64 << 20) + b"\x01"}))
    assert str(info.value).endswith(
        f"a packed blob of {(64 << 20) + 1} bytes, not whole 32-bit numbers"
    )
    assert len(str(info.value)) < 200
    with pytest.raises(ProtocolError) as info:
        decode(_with(lines={"/a.py": [*range(1000), -1] * 1000}))
    assert len(str(info.value)) < 200  # (a huge list is quoted short too, never repr'd whole)
    many = list(range(1, 1_000_001))
    arcs = list(itertools.pairwise(many))
    wire = packed(_with(lines={"/a.py": many}, arcs={"/b.py": arcs})["data"])
    got = decode(_chunk(data=wire))["data"]["contexts"][""]
    assert got["lines"]["/a.py"] == frozenset(many)
    assert len(got["arcs"]["/b.py"]) == 999_999


def test_a_protocol_1_worker_is_told_to_install_the_same_version() -> None:
    """A worker of the release before packed numbers (protocol 1, lists) is refused whole,
    in one line that says what to do; its lists alone would be read (a list is accepted)."""
    old = {**_with(lines={"/a.py": [1, 2]}), "proto": 1}
    with pytest.raises(ProtocolError) as info:
        decode(old)
    assert str(info.value) == (
        "a message of pytest-distcov protocol 1, the controller speaks 2: install the same"
        " pytest-distcov version on every host"
    )
    assert decode({**old, "proto": PROTOCOL_VERSION})["data"]["contexts"][""]["lines"] == {
        "/a.py": [1, 2]
    }


def test_a_number_beyond_32_bits_is_sent_as_a_list_and_refused() -> None:
    """What cannot be packed goes as it is, and the controller names it."""
    wire = packed(_with(lines={"/a.py": [1, 1 << 40]})["data"])
    assert wire["contexts"][""]["lines"]["/a.py"] == [1, 1 << 40]
    with pytest.raises(ProtocolError, match="line numbers"):
        decode(_chunk(data=wire))


def test_a_refusal_quotes_a_value_short_and_escaped() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(_with(lines={"/a.py": [*range(1000), "\x1b[2J\n"]}))
    assert len(str(info.value)) < 200
    assert str(info.value).isprintable()
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ProtocolError, match=r"\[\[\[\[\.\.\.\]\]\]\]"):
        decode(_with(lines={"/a.py": deep}))
    # lists of large lists, bytes and integers: quoted short, never written out whole
    wide = [[*range(10**5)]] * 50  # (one list, 50 times)
    many = {f"k{i}": i for i in range(10**5)}
    for value in (wide, [b"\x00" * 10**7] * 3, [10 ** (10**5)], {"k": wide}, many, [set(many)]):
        with pytest.raises(ProtocolError) as info:
            decode(_with(lines={"/a.py": value}))
        assert len(str(info.value)) < 200, str(info.value)


# -- printable: one line of text, whatever a name holds -----------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain /path/to/file.py, é, 中文, C:\\dir", "plain /path/to/file.py, é, 中文, C:\\dir"),
        ("a\x1b[2Jb", "a\\x1b[2Jb"),
        ("one\ntwo\rthree\tfour", "one\\ntwo\\rthree\\tfour"),
        ("nul\x00 del\x7f csi\x9b", "nul\\x00 del\\x7f csi\\x9b"),
        ("line\u2028sep\u202eevil", "line\\u2028sep\\u202eevil"),
        ("undecodable \udcff.py", "undecodable \\udcff.py"),
    ],
)
def test_printable_escapes_what_a_terminal_would_act_on(text: str, shown: str) -> None:
    assert printable(text) == shown
    assert printable(shown) == shown  # escaping twice changes nothing
    assert shown.isprintable()


def test_printable_keeps_our_own_line_breaks_when_asked() -> None:
    assert printable("a\nb\x1b[0m", newlines=True) == "a\nb\\x1b[0m"


def test_coverage_warnings_become_printable_notes() -> None:
    notes: list[str] = []
    with capture_coverage_warnings(notes):
        warnings.warn("Couldn't parse '/p/bad\nname\x1b[2J.py' as Python", CoverageWarning, 1)
    assert notes == ["coverage: Couldn't parse '/p/bad\\nname\\x1b[2J.py' as Python"]


class _Terminal:
    def __init__(self) -> None:
        self.out: list[str] = []

    def write_sep(self, sep: str, title: str) -> None:
        self.out.append(title)

    def write(self, content: str) -> None:
        self.out.append(content)

    def write_line(self, line: str, **markup: bool) -> None:
        self.out.append(line)


def test_the_summary_writes_no_control_character() -> None:
    """The last pass: whatever reaches the summary with an escape in it (a file name in
    coverage.py's own report, say) is shown escaped; its own line breaks stay."""
    terminal = _Terminal()
    Summary(
        title="distcov",
        report_text="Name\nesc\x1b[2J.py   100%\nTOTAL\n",
        lines=["wrote /p/esc\x1b]0;title\x07.xml"],
        notes=["[gw0] \x1b[2J\nforged"],
        errors=["worker gw0: \r\x00"],
    ).run(terminal)
    assert terminal.out == [
        "distcov",
        "Name\nesc\\x1b[2J.py   100%\nTOTAL\n",
        "distcov: wrote /p/esc\\x1b]0;title\\x07.xml",
        "distcov: [gw0] \\x1b[2J\nforged",  # (made printable where it is composed: see below)
        "distcov: worker gw0: \\r\\x00",
    ]


# -- the directories a hello may name -----------------------------------------------------------

RUN = "0123456789abcdef0123456789abcdef"  # xdist's run id (testrunuid)


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    return tmp_path


def test_a_workers_directory_carries_its_runs_tag(tmp: Path) -> None:
    held = HeldDir.create("gw0", run=RUN)
    try:
        assert held.path.parent == tmp
        assert held.path.name.startswith("distcov-gw0-")
        assert held.path.name.endswith(f".{run_tag(RUN)}")
        assert (held.path / LOCK_NAME).is_file()
        dirs = RunDirs(tmp)
        dirs.expect("gw0", RUN)
        assert dirs.local("gw0", str(held.path)) == held.path
        assert dirs.local("gw1", str(held.path)) is None  # another worker's
        other = RunDirs(tmp)
        other.expect("gw0", "another run")
        assert other.local("gw0", str(held.path)) is None  # another run's
    finally:
        held.release()


def test_only_this_runs_directory_of_the_worker_is_taken(tmp: Path) -> None:
    dirs = RunDirs(tmp / "elsewhere")  # (the parent matters only without a run tag)
    dirs.expect("gw0", RUN)
    tag = run_tag(RUN)
    good = tmp / f"distcov-gw0-abcd_123.{tag}"
    good.mkdir()
    assert dirs.local("gw0", str(good)) == good
    refused = {
        "no tag": tmp / "distcov-gw0-abcd1234",
        "another tag": tmp / "distcov-gw0-abcd1234.00000000",
        "another worker": tmp / f"distcov-gw1-abcd1234.{tag}",
        "another name": tmp / f"decoy.{tag}",
        "a worker id as a prefix": tmp / f"distcov-gw01-abcd1234.{tag}",
    }
    for path in refused.values():
        path.mkdir()
    (tmp / f"distcov-gw0-file0000.{tag}").write_text("")
    (tmp / f"distcov-gw0-link0000.{tag}").symlink_to(good)
    for name, path in refused.items():
        assert dirs.local("gw0", str(path)) is None, name
    for path in (
        tmp / f"distcov-gw0-file0000.{tag}",  # not a directory
        tmp / f"distcov-gw0-link0000.{tag}",  # a symlink, to a good one even
        tmp / f"distcov-gw0-gone0000.{tag}",  # not there
        Path(f"distcov-gw0-abcd_123.{tag}"),  # relative
        tmp / "x" / ".." / good.name,  # not normal
        tmp / f"distcov-gw0-abcd_123.{tag}" / "sub" / "..",
    ):
        assert dirs.local("gw0", str(path)) is None, path


def test_a_hello_read_after_its_directory_was_removed_is_still_taken(tmp: Path) -> None:
    """The controller reads a hello on its main thread, perhaps after the worker's directory
    was destroyed (seen in CI under load): the hello is taken, naming where the directory was,
    so that the worker's death is reported as a crash with nothing left to read (the data it
    streamed is kept) instead of as a worker that never said hello. Anything else that is not
    that worker's directory of this run is still refused."""
    dirs = RunDirs(tmp)
    dirs.expect("gw0", RUN)
    tag = run_tag(RUN)
    live = tmp / f"distcov-gw0-live0000.{tag}"
    live.mkdir()
    gone = tmp / f"distcov-gw0-gone0000.{tag}"
    assert dirs.hello("gw0", str(live)) == str(live)
    assert dirs.hello("gw0", str(gone)) == str(gone)
    assert dirs.local("gw0", str(gone)) is None  # nothing there to read
    (tmp / f"distcov-gw0-file0000.{tag}").write_text("")
    (tmp / f"distcov-gw0-link0000.{tag}").symlink_to(tmp / "nowhere")  # dangling: not gone
    for path in (
        tmp / f"distcov-gw0-file0000.{tag}",
        tmp / f"distcov-gw0-link0000.{tag}",
        tmp / f"distcov-gw1-gone0000.{tag}",  # another worker's name
        tmp / "distcov-gw0-gone0000.00000000",  # another run's tag
        tmp / "x" / ".." / gone.name,  # not normal
        Path(gone.name),  # relative
    ):
        assert dirs.hello("gw0", str(path)) is None, path
    # and the worker's death then reads nothing, saying so
    lines: list[str] = []
    recovery = LocalRecovery(lines.append, dirs)
    recovery.recover("gw0", _hello(datadir=str(gone)), "killed")  # type: ignore[arg-type]
    assert recovery.collect() == []
    assert lines == [
        f"worker gw0 on box crashed (killed); recovering the data of its finished tests:"
        f" 0 data files in {gone}"
    ]


def test_without_a_run_id_the_directory_must_be_beside_the_controllers(tmp: Path) -> None:
    dirs = RunDirs(tmp)
    (tmp / "distcov-gw0-abcd1234").mkdir()
    (tmp / "sub").mkdir()
    (tmp / "sub" / "distcov-gw0-abcd1234").mkdir()
    assert dirs.local("gw0", str(tmp / "distcov-gw0-abcd1234")) is not None
    assert dirs.local("gw0", str(tmp / "sub" / "distcov-gw0-abcd1234")) is None


def test_a_remote_workers_directory_is_in_its_hosts_run_directory() -> None:
    dirs = RunDirs("/local/tmp")
    dirs.expect("gw2", RUN)
    run_dir = "/home/u/.cache/pytest-distcov/runs/0123abcd"
    name = f"distcov-gw2-abcd1234.{run_tag(RUN)}"
    assert dirs.remote("gw2", f"{run_dir}/{name}", run_dir) == f"{run_dir}/{name}"
    assert dirs.remote("gw2", f"{run_dir}/{name}", run_dir + "/") == f"{run_dir}/{name}"
    for path, where in [
        (f"/home/u/{name}", run_dir),
        (f"{run_dir}/sub/{name}", run_dir),
        (f"{run_dir}/../{name}", run_dir),
        (f"{run_dir}/distcov-gw2-abcd1234", run_dir),
        (f"{run_dir}/{name}", None),  # a host that did not say where its run is
        (f"{run_dir}/{name}", "relative/runs"),
        ("/home/u/project", run_dir),
    ]:
        assert dirs.remote("gw2", path, where) is None, (path, where)


def _decoy(where: Path) -> Path:
    where.mkdir(parents=True)
    (where / ".coverage.gw0").write_text("decoy")
    return where


def test_local_recovery_reads_nothing_outside_this_runs_directories(tmp: Path) -> None:
    dirs = RunDirs(tmp)
    dirs.expect("gw0", RUN)
    decoys = [
        _decoy(tmp / "decoy"),
        _decoy(tmp / "distcov-gw0-decoy000"),
        _decoy(tmp / "distcov-gw0-decoy000.00000000"),
    ]
    lines: list[str] = []
    recovery = LocalRecovery(lines.append, dirs)
    for decoy in decoys:
        recovery.recover("gw0", _hello(datadir=str(decoy)), "crashed hard")  # type: ignore[arg-type]
    assert recovery.collect() == []
    assert len(lines) == 3
    for decoy, line in zip(decoys, lines, strict=True):
        assert line == (
            f"worker gw0 on box crashed (crashed hard); its directory {decoy} is not one of this"
            " run's: nothing is read there; the coverage it streamed is kept"
        )
        assert (decoy / ".coverage.gw0").read_text() == "decoy"


def test_local_recovery_follows_no_symlink_out_of_the_directory(tmp: Path) -> None:
    dirs = RunDirs(tmp)
    dirs.expect("gw0", RUN)
    own = tmp / f"distcov-gw0-abcd1234.{run_tag(RUN)}"
    own.mkdir()
    (own / ".coverage.gw0").write_text("")
    outside = _decoy(tmp / "outside") / ".coverage.gw0"
    (own / ".coverage.gw0.evil").symlink_to(outside)
    lines: list[str] = []
    recovery = LocalRecovery(lines.append, dirs)
    recovery.recover("gw0", _hello(host="b\x1b[2Jox\n"), "why\r")  # type: ignore[arg-type]
    recovery.recover("gw0", _hello(datadir=str(own)), "crashed")  # type: ignore[arg-type]
    assert recovery.collect() == [("gw0", str(own / ".coverage.gw0"), None)]
    assert lines[0].startswith("worker gw0 on b\\x1b[2Jox\\n crashed (why\\r); its directory")
    assert lines[1].endswith(f"recovering the data of its finished tests: 1 data file in {own}")


def test_a_finished_worker_with_a_refused_message_is_read_whole(tmp: Path) -> None:
    dirs = RunDirs(tmp)
    dirs.expect("gw0", RUN)
    own = tmp / f"distcov-gw0-abcd1234.{run_tag(RUN)}"
    own.mkdir()
    (own / ".coverage.gw0").write_text("")
    lines: list[str] = []
    recovery = LocalRecovery(lines.append, dirs)
    hello: Any = _hello(datadir=str(own))
    recovery.recover("gw0", hello, "sent a message that was refused", refused=True)
    assert recovery.collect() == [("gw0", str(own / ".coverage.gw0"), None)]
    assert lines == [
        "worker gw0 on box sent a message that was refused; recovering all of its data:"
        f" 1 data file in {own}"
    ]


def test_remote_recovery_fetches_nothing_outside_the_hosts_run_directory(tmp: Path) -> None:
    """A hello naming a directory that is not the worker's in its host's run directory: no
    request to the host at all (neither a fetch, nor the removal at the end)."""
    from pytest_distcov.remote.fleet import Fleet, HostSession, RemoteHooks
    from pytest_distcov.remote.recovery import RemoteRecovery
    from pytest_distcov.remote.shipping import build_bundle
    from pytest_distcov.settings.hosts import parse_hosts

    class _NoRequests(HostSession):
        def request(self, msg: dict[str, Any], timeout: float | None = None) -> Any:
            raise AssertionError(f"a request to the host: {msg}")

    fleet = Fleet([], build_bundle(str(tmp), path=[])[0])
    try:
        host = _NoRequests(parse_hosts(["h1"])[0], 1, info={"run_dir": "/c/runs/r1"})
        hooks = RemoteHooks(fleet)
        hooks.worker_hosts["gw3"] = host
        dirs = RunDirs(tmp)
        dirs.expect("gw3", RUN)
        lines: list[str] = []
        recovery = RemoteRecovery(hooks, tmp, lines.append, str, dirs)
        for forged in ("/home/u/project", "/c/runs/r1/../../..", "/c/runs/r1/distcov-gw3-x"):
            recovery.recover("gw3", _hello(datadir=forged), "crashed")  # type: ignore[arg-type]
        assert recovery.collect() == []
        assert hooks.leftovers == {}
        assert lines == [
            f"worker gw3 on host h1 went down (crashed); its directory {forged} is not one of"
            " this run's there: nothing is fetched from it; the coverage it streamed is kept"
            for forged in ("/home/u/project", "/c/runs/r1/../../..", "/c/runs/r1/distcov-gw3-x")
        ]
    finally:
        fleet.close()


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and /dev/zero are POSIX's")
def test_the_checked_mapper_takes_regular_files_and_absent_ones_only(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.py"
    os.mkfifo(fifo)
    regular = tmp_path / "mod.py"
    regular.write_text("x = 1\n")
    mapper = checked_mapper()
    assert mapper(str(regular)) == str(regular)
    assert mapper(str(tmp_path / "gone.py")) == str(tmp_path / "gone.py")
    for bad, why in [
        (str(fifo), "which is not a regular file here"),
        ("/dev/zero", "which is not a regular file here"),
        (str(tmp_path), "which is not a regular file here"),
        ("a\0b.py", "with a NUL character in it"),
        # coverage.py's reports read leak.py for these: no check of this name checks that
        (str(tmp_path / "leak.pyc"), "a compiled file"),
        ("leak.pyo", "a compiled file"),
    ]:
        with pytest.raises(UntrustedPath, match=why):
            mapper(bad)
    fifo.unlink()  # the answer is kept: a worker names each file in many chunks
    with pytest.raises(UntrustedPath):
        mapper(str(fifo))

    def inner(path: str) -> str:
        if path.startswith("/remote/"):
            return str(tmp_path / path[len("/remote/") :])
        raise UntrustedPath(f"it names {path}, outside")

    remote = checked_mapper(inner)
    assert remote("/remote/mod.py") == str(regular)
    with pytest.raises(UntrustedPath, match=r"it names /etc/x\.py, outside"):
        remote("/etc/x.py")


def test_a_payload_loses_only_the_files_whose_paths_are_refused() -> None:
    acc = Accumulator(branch=False, plugins=["plug"])
    payload = empty_payload()
    payload["contexts"][""] = {"lines": {"/ok.py": [1, 2], "/bad.py": [3]}, "arcs": {}}
    payload["tracers"] = {"/bad.py": "plug.In", "/ok.py": "plug.In"}
    payload["touched"] = {"plug.In": ["/bad.py", "/ok.py"]}

    def mapper(path: str) -> str:
        if "bad" in path:
            raise UntrustedPath(f"it names {path}, refused")
        return path

    assert acc.add_payload(payload, mapper) == {"/bad.py": "it names /bad.py, refused"}
    assert acc.covered_lines() == {"/ok.py": {1, 2}}


def test_a_file_tracer_is_taken_only_from_this_runs_plugins_and_never_against_another() -> None:
    """A worker names the plugin that measured a file: one that is no plugin of this run's
    (coverage.py's report would raise KeyError), or another than an earlier answer for the
    same file (the data file's write would fail), leaves that file out."""
    acc = Accumulator(branch=False, plugins=["plug"])
    payload = empty_payload()
    payload["contexts"][""] = {"lines": {"/a.tmpl": [1], "/b.tmpl": [2], "/ok.py": [3]}, "arcs": {}}
    payload["tracers"] = {"/a.tmpl": "plug.Templates", "/b.tmpl": "evil.Plugin"}
    payload["touched"] = {"evil.Plugin": ["/c.tmpl"], "plug.Templates": ["/d.tmpl"]}
    assert acc.add_payload(payload) == {
        "/b.tmpl": "it names /b.tmpl as measured by evil.Plugin, no plugin of this run's [run]"
        " plugins",
        "/c.tmpl": "it names /c.tmpl as found by evil.Plugin, no plugin of this run's [run]"
        " plugins",
    }
    assert acc.covered_lines() == {"/a.tmpl": {1}, "/ok.py": {3}}
    again = empty_payload()
    again["contexts"][""] = {"lines": {"/a.tmpl": [5]}, "arcs": {}}
    again["tracers"] = {"/a.tmpl": "plug.Other"}
    assert acc.add_payload(again) == {
        "/a.tmpl": "it names /a.tmpl as measured by plug.Other, where plug.Templates measured it"
    }
    assert acc.covered_lines() == {"/a.tmpl": {1}, "/ok.py": {3}}


def _written_with(own: Any, acc: Accumulator, target: Path) -> list[str]:
    """The data file written as the controller writes it, its own data first (``own``, closed
    after: in memory, a plain close() keeps its connection, and 3.13 warns); the clashes."""
    from pytest_distcov.data.merge import write_data_file

    clashes: list[list[str]] = []

    def fill(data: Any) -> None:
        data.update(own)
        clashes.append(acc.write_into(data))

    try:
        write_data_file(target, fill)
    finally:
        own.close(force=True)
    return clashes[0]


def test_workers_data_that_clashes_with_the_controllers_own_is_left_out_not_the_write(
    tmp_path: Path,
) -> None:
    """The controller's own data is written first; a file the workers say a plugin measured
    where the controller measured it as Python (or the other way) keeps the controller's data
    alone and is named, where coverage.py's own update would fail the whole data file."""
    from coverage import CoverageData

    own = CoverageData(no_disk=True)
    own.add_lines({"/a.py": [1], "/t.tmpl": [2]})
    own.add_file_tracers({"/t.tmpl": "plug.Templates"})
    acc = Accumulator(branch=False, plugins=["plug"])
    payload = empty_payload()
    payload["contexts"][""] = {"lines": {"/a.py": [7], "/t.tmpl": [8], "/b.py": [9]}, "arcs": {}}
    payload["tracers"] = {"/a.py": "plug.Templates"}  # Python here
    payload["touched"] = {"plug.Templates": ["/never.tmpl"]}
    assert acc.add_payload(payload) == {}
    assert _written_with(own, acc, tmp_path / "out") == ["/a.py", "/t.tmpl"]
    written = read_data_file(tmp_path / "out")
    assert sorted(written.measured_files()) == ["/a.py", "/b.py", "/never.tmpl", "/t.tmpl"]
    assert (written.lines("/a.py"), written.file_tracer("/a.py")) == ([1], "")
    assert (written.lines("/t.tmpl"), written.file_tracer("/t.tmpl")) == ([2], "plug.Templates")
    assert written.lines("/b.py") == [9]
    assert written.file_tracer("/never.tmpl") == "plug.Templates"
    written.close()


def _union(branch: bool, *labelled: tuple[str, dict[str, Any]]) -> Accumulator:
    """An accumulator of the given (context, file -> items) payloads."""
    acc = Accumulator(branch=branch)
    for label, files in labelled:
        payload = empty_payload()
        kind = "arcs" if branch else "lines"
        payload["contexts"][label] = {"lines": {}, "arcs": {}}
        payload["contexts"][label][kind] = files  # type: ignore[literal-required]
        acc.add_payload(payload)
    return acc


@pytest.mark.parametrize("branch", [False, True], ids=["lines", "arcs"])
def test_the_workers_data_written_while_the_run_ends_makes_the_same_data_file(
    tmp_path: Path, branch: bool
) -> None:
    """The workers' data written first, in a thread (while xdist stops the workers), then the
    controller's own added: the data file holds what the one write (the controller's own
    first) makes, context by context; nothing else is left beside it."""
    from coverage import CoverageData

    from pytest_distcov.data.merge import BackgroundWrite, write_data_file

    shared = frozenset({(1, 2), (2, -1)} if branch else {1, 2})
    acc = _union(
        branch,
        ("t.py::a|run", {"/m.py": shared, "/n.py": {(4, 5)} if branch else {4}}),
        ("t.py::b|run", {"/m.py": shared}),
    )

    def own() -> Any:
        data = CoverageData(no_disk=True)
        if branch:
            data.add_arcs({"/m.py": [(7, 8)], "/c.py": [(-1, 1)]})
        else:
            data.add_lines({"/m.py": [7], "/c.py": [1]})
        return data

    assert _written_with(own(), acc, tmp_path / "one") == []
    early = BackgroundWrite(tmp_path / "two", acc)
    early.start()
    assert early.result() == early.tmp
    mine = own()
    try:
        write_data_file(tmp_path / "two", lambda data: data.update(mine), begun=early.tmp)
    finally:
        mine.close(force=True)
    want = by_context(tmp_path / "one")
    assert by_context(tmp_path / "two") == want
    assert ("", "/c.py", (-1, 1) if branch else 1) in want
    assert ("t.py::b|run", "/m.py", (1, 2) if branch else 1) in want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


def test_a_write_begun_is_dropped_when_the_union_changed_failed_or_was_abandoned(
    tmp_path: Path,
) -> None:
    """The thread's file is used only for the union it wrote: a payload merged after it
    began, a failed write (the data file's directory cannot be made), or an abandon (while
    it writes: the thread removes its file when done; after: it is removed then) leaves no
    file, and gives none to go on with; a file taken stays the caller's. A write told it
    was begun, without its file, fails before it makes a data file."""
    from pytest_distcov.data.merge import BackgroundWrite, write_data_file

    acc = _union(False, ("a|run", {"/m.py": {1}}))
    changed = BackgroundWrite(tmp_path / "changed", acc)
    changed.start()
    more = empty_payload()
    more["contexts"]["b|run"] = {"lines": {"/m.py": [2]}, "arcs": {}}
    acc.add_payload(more)
    assert changed.result() is None
    assert not changed.tmp.exists()

    (tmp_path / "a-file").write_text("")
    failed = BackgroundWrite(tmp_path / "a-file" / ".coverage", acc)
    failed.start()
    assert failed.result() is None

    # A union big enough that the abandon mostly comes while the thread writes; either way
    # (the thread done first, or not), nothing is left and nothing is given.
    big = _union(
        True, *((f"t{n}|run", {f"/m{n % 7}.py": {(n, i) for i in range(300)}}) for n in range(300))
    )
    while_writing = BackgroundWrite(tmp_path / "while-writing", big)
    while_writing.start()
    while_writing.abandon()
    assert while_writing.result() is None
    assert not while_writing.tmp.exists()

    done = BackgroundWrite(tmp_path / "done", acc)
    done.start()
    done._thread.join()
    assert done.tmp.exists()
    done.abandon()
    assert not done.tmp.exists()
    assert done.result() is None

    taken = BackgroundWrite(tmp_path / "taken", acc)
    taken.start()
    assert taken.result() == taken.tmp
    taken.abandon()
    assert taken.tmp.exists()  # (the caller's: write_data_file goes on from it)
    taken.tmp.unlink()

    never = BackgroundWrite(tmp_path / "never", acc)
    never.abandon()
    never.start()  # (abandoned: it never starts)
    assert never.result() is None

    with pytest.raises(FileNotFoundError, match="first part is gone"):
        write_data_file(tmp_path / "gone", lambda data: None, begun=tmp_path / "gone.part")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]

    # The whole write while an abandoned thread still writes: each has a file of its own.
    racing = BackgroundWrite(tmp_path / "racing", big)
    racing.start()
    racing.abandon()
    write_data_file(tmp_path / "racing", big.write_into)
    racing._thread.join()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "racing"]
    assert by_context(tmp_path / "racing") == by_context_of(big)


def test_a_write_begun_keeps_the_union_for_labelled_data_and_discard_waits(
    tmp_path: Path,
) -> None:
    """The thread keeps each file's items of every context for the reports' copy only where
    the data has context labels; a discard waits for the thread and leaves no file."""
    from pytest_distcov.data.merge import BackgroundWrite

    labelled = BackgroundWrite(tmp_path / "labelled", _union(False, ("a|run", {"/m.py": {1}})))
    labelled.start()
    assert labelled.result() == labelled.tmp
    assert labelled.union == {"/m.py": {1}}
    labelled.tmp.unlink()
    unlabelled = BackgroundWrite(tmp_path / "unlabelled", _union(False, ("", {"/m.py": {1}})))
    unlabelled.start()
    assert unlabelled.result() == unlabelled.tmp
    assert unlabelled.union is None  # (no context labels: the reports read the file itself)
    unlabelled.tmp.unlink()

    big = _union(
        True, *((f"t{n}|run", {f"/m{n % 7}.py": {(n, i) for i in range(300)}}) for n in range(300))
    )
    discarded = BackgroundWrite(tmp_path / "discarded", big)
    discarded.start()
    discarded.discard()  # (waits for the thread, then removes its file)
    assert not discarded.tmp.exists()
    assert discarded.result() is None
    assert list(tmp_path.iterdir()) == []


def by_context_of(acc: Accumulator) -> set[tuple[str, str, object]]:
    """What :func:`by_context` reads of a data file holding ``acc`` alone."""
    return {
        (context, name, item)
        for context, files in acc._data.items()
        for name, items in files.items()
        for item in items
    }


def test_the_reports_copy_reads_the_data_file_where_the_known_items_name_other_files(
    tmp_path: Path,
) -> None:
    """Items known for the reports' copy that name a file the data file does not hold (a
    name coverage.py's update changed, say) are not used: the copy reads the data file."""
    from coverage import CoverageData

    from pytest_distcov.data.merge import without_contexts

    full = CoverageData(basename=str(tmp_path / "full"))
    full.set_context("t|run")
    full.add_arcs({"/src/a/b.py": [(1, 2), (2, -1)]})
    into = CoverageData(no_disk=True)
    without_contexts(full, into, known={"/src/a\\b.py": {(1, 2), (2, -1)}})
    assert sorted(into.arcs("/src/a/b.py") or ()) == [(1, 2), (2, -1)]
    into.close(force=True)
    into = CoverageData(no_disk=True)
    without_contexts(full, into, known={"/src/a/b.py": {(1, 2)}})  # (what it is told)
    assert sorted(into.arcs("/src/a/b.py") or ()) == [(1, 2)]
    into.close(force=True)
    full.close(force=True)


def test_the_controllers_own_data_clashes_only_where_a_file_tracer_differs() -> None:
    """Where the controller's own data names a file of the union with another file tracer
    (or found by another plugin), the union must be written after it (see finish): a clash.
    Files only one side holds, or held alike, are none."""
    from coverage import CoverageData

    acc = Accumulator(branch=False, plugins=["plug"])
    payload = empty_payload()
    payload["contexts"][""] = {"lines": {"/a.py": [7], "/t.tmpl": [8]}, "arcs": {}}
    payload["tracers"] = {"/t.tmpl": "plug.Templates"}
    payload["touched"] = {"plug.Templates": ["/never.tmpl"]}
    assert acc.add_payload(payload) == {}

    def own(lines: dict[str, list[int]], tracers: dict[str, str]) -> bool:
        data = CoverageData(no_disk=True)
        try:
            data.add_lines(lines)
            data.add_file_tracers(tracers)
            return acc.clashes(data)
        finally:
            data.close(force=True)

    assert not own({}, {})
    assert not own({"/a.py": [1], "/other.py": [2]}, {})
    assert not own({"/t.tmpl": [2]}, {"/t.tmpl": "plug.Templates"})
    assert own({"/t.tmpl": [2]}, {})
    assert own({"/a.py": [1]}, {"/a.py": "plug.Templates"})
    assert own({"/never.tmpl": [3]}, {})


def test_a_payload_of_the_other_kind_merges_nothing() -> None:
    acc = Accumulator(branch=False)
    payload = empty_payload()
    payload["contexts"]["a"] = {"lines": {"/ok.py": [1]}, "arcs": {}}
    payload["contexts"]["b"] = {"lines": {}, "arcs": {"/ok.py": [[1, 2]]}}
    with pytest.raises(DataFileError, match=r"branch \(arc\) data into a run measuring lines only"):
        acc.add_payload(payload)
    assert not acc


@pytest.mark.parametrize("branch", [False, True], ids=["lines", "arcs"])
def test_a_shared_set_from_the_wire_is_kept_as_it_is_and_never_changed(branch: bool) -> None:
    """A frozenset decoded from the wire (shared by every payload that held the same blob)
    is kept as it came for a context and file new to the union; where the same context and
    file come again, the union is a set of its own, and the shared one is unchanged."""
    from coverage import CoverageData

    items: frozenset[Any] = frozenset({(1, 2), (2, -1)} if branch else {1, 2})
    more: frozenset[Any] = frozenset({(5, 6)} if branch else {5})
    kind = "arcs" if branch else "lines"
    acc = Accumulator(branch=branch)
    for label, found in (("a|run", items), ("b|run", items), ("a|run", more)):
        payload = empty_payload()
        payload["contexts"][label] = {"lines": {}, "arcs": {}}
        payload["contexts"][label][kind] = {"/m.py": found}  # type: ignore[literal-required]
        acc.add_payload(payload)
    assert acc._data["b|run"]["/m.py"] is items
    assert acc._data["a|run"]["/m.py"] == items | more
    assert items == frozenset({(1, 2), (2, -1)} if branch else {1, 2})
    data = CoverageData(no_disk=True)
    acc.write_into(data)
    for label, want in (("a|run", items | more), ("b|run", items)):
        data.set_query_contexts([re.escape(label)])
        got = data.arcs("/m.py") if branch else data.lines("/m.py")
        assert set(got or ()) == set(want), label
    data.close(force=True)


@pytest.mark.skipif(sys.platform == "win32", reason="/dev/zero is POSIX's")
@pytest.mark.parametrize("branch", [False, True], ids=["lines", "arcs"])
def test_a_data_file_naming_a_refused_path_loses_that_files_data_only(
    tmp_path: Path, branch: bool
) -> None:
    """A dead worker's data file that names what the mapper refuses loses that file's data
    only: the rest of it (every other file, under its contexts, with its tracer) is united, the
    refusal is its own error and not the write's (raised inside coverage's update, it used to
    fail the run's data file and its rescue), and the file itself is not changed."""
    from coverage import CoverageData

    from pytest_distcov.data.merge import write_data_file
    from pytest_distcov.data.readers import update_from_file

    m, n = str(tmp_path / "m.py"), str(tmp_path / "n.py")

    def measured(numbers: list[int]) -> list[Any]:
        return list(zip([-1, *numbers], [*numbers, -1], strict=True)) if branch else numbers

    good = tmp_path / "good.coverage"
    bad = tmp_path / "bad.coverage"
    data = CoverageData(str(good))
    (data.add_arcs if branch else data.add_lines)({m: measured([1, 2])})
    data.write()
    data.close()
    data = CoverageData(str(bad))
    add = data.add_arcs if branch else data.add_lines
    data.set_context("test_one")
    add({"/dev/zero": measured([1]), n: measured([3, 4])})
    data.set_context("test_two")
    add({n: measured([5]), "/dev/zero": measured([2])})
    data.add_file_tracers({n: "some.Plugin"})
    data.write()
    data.close()
    before = bad.read_bytes()
    errors: list[str] = []

    def fill(target: CoverageData) -> None:
        for path in (bad, good):
            try:
                update_from_file(target, path, checked_mapper())
            except DataFileError as exc:
                errors.append(str(exc))

    out = tmp_path / "out.coverage"
    write_data_file(out, fill)
    assert errors == [
        f"coverage data file {bad}: the data of a file is left out (it names /dev/zero, which is"
        " not a regular file here)"
    ]
    assert bad.read_bytes() == before
    written = CoverageData(str(out))
    written.read()
    assert written.measured_files() == {m, n}
    assert written.file_tracer(n) == "some.Plugin"
    got = written.arcs if branch else written.lines
    assert sorted(got(m) or []) == sorted(measured([1, 2]))
    assert sorted(got(n) or []) == sorted({*measured([3, 4]), *measured([5])})
    written.set_query_contexts(["test_one"])
    assert sorted(got(n) or []) == sorted(measured([3, 4]))
    written.set_query_contexts(["test_two"])
    assert sorted(got(n) or []) == sorted(measured([5]))
    written.close()


def test_a_trigger_in_a_recovered_data_file_cannot_put_a_refused_path_back(
    tmp_path: Path,
) -> None:
    """A doctored data file whose trigger re-inserts a path when a refused one is taken out
    of the private copy: the trigger is dropped first, the copy is checked to hold exactly the
    files checked, and the run's write is never at stake."""
    import sqlite3

    from coverage import CoverageData

    from pytest_distcov.data.merge import write_data_file
    from pytest_distcov.data.readers import update_from_file

    bad = tmp_path / "bad.coverage"
    data = CoverageData(str(bad))
    data.add_lines({"/dev/zero": [1], str(tmp_path / "n.py"): [3]})
    data.write()
    data.close()
    with sqlite3.connect(bad) as con:
        con.execute(
            "CREATE TRIGGER back AFTER DELETE ON file BEGIN"
            " INSERT INTO file(path) VALUES ('/etc/unchecked.py'); END"
        )
    con.close()
    errors: list[str] = []

    def fill(target: CoverageData) -> None:
        try:
            update_from_file(target, bad, checked_mapper())
        except DataFileError as exc:
            errors.append(str(exc))

    write_data_file(tmp_path / "out", fill)
    assert errors == [
        f"coverage data file {bad}: the data of a file is left out (it names /dev/zero, which is"
        " not a regular file here)"
    ]
    written = read_data_file(tmp_path / "out")
    assert written.measured_files() == {str(tmp_path / "n.py")}
    written.close()


def test_two_plugins_finding_one_file_leave_the_second_out() -> None:
    acc = Accumulator(branch=False, plugins=["a", "b"])
    first, second = empty_payload(), empty_payload()
    first["touched"] = {"a.P": ["/t.tmpl"]}
    second["touched"] = {"b.Q": ["/t.tmpl"]}
    assert acc.add_payload(first) == {}
    assert acc.add_payload(second) == {
        "/t.tmpl": "it names /t.tmpl as found by b.Q, where a.P measured it"
    }


def test_a_file_two_plugins_claim_in_one_payload_is_left_out_with_its_lines() -> None:
    acc = Accumulator(branch=False, plugins=["p"])
    payload = empty_payload()
    payload["contexts"][""] = {"lines": {"/a.tmpl": [1], "/ok.py": [2]}, "arcs": {}}
    payload["tracers"] = {"/a.tmpl": "p.A"}
    payload["touched"] = {"p.B": ["/a.tmpl"]}
    assert acc.add_payload(payload) == {
        "/a.tmpl": "it names /a.tmpl as found by p.B, where p.A measured it"
    }
    assert acc.covered_lines() == {"/ok.py": {2}}


def test_arcs_given_as_tuples_or_lists_merge_alike() -> None:
    """Arcs decoded from the wire are tuples (added in one step); arcs given as lists, or
    both mixed, are made tuples: the union is the same."""
    got = []
    for arcs in ([(1, 2), (2, -1)], [[1, 2], [2, -1]], [(1, 2), [2, -1]]):
        acc = Accumulator(branch=True)
        payload = empty_payload()
        payload["contexts"]["t|run"] = {"lines": {}, "arcs": {"/a.py": arcs}}  # type: ignore[dict-item]
        assert acc.add_payload(payload) == {}
        got.append(acc.covered_lines())
        assert acc._data == {"t|run": {"/a.py": {(1, 2), (2, -1)}}}
    assert got == [{"/a.py": {1, 2}}] * 3


@pytest.mark.parametrize(
    ("own_lines", "batch"),
    [(False, True), (True, True), (True, False)],
    ids=["straight", "batch", "add_lines"],
)
def test_a_plugin_file_the_controller_found_and_the_workers_measured_keeps_its_tracer(
    tmp_path: Path, own_lines: bool, batch: bool
) -> None:
    """The controller's own data names a file a plugin found (no lines: one of ``[run]
    source``'s never-run files), and a worker measured it with the same plugin, under a
    per-test context: written straight into the data file (the controller recorded no
    context) or through the batch (it did; or add_lines context by context, where the batch
    cannot be filled), the file has the worker's lines and its tracer, and nothing is
    refused."""
    from coverage import CoverageData

    own = CoverageData(no_disk=True)
    own.add_lines({})
    own.touch_files(["/t.tmpl"], "plug.Templates")
    if own_lines:
        own.set_context("conftest")
        own.add_lines({"/a.py": [1]})
    acc = Accumulator(branch=False, plugins=["plug"])
    payload = empty_payload()
    payload["contexts"]["t|run"] = {"lines": {"/t.tmpl": [8], "/b.py": [9]}, "arcs": {}}
    payload["tracers"] = {"/t.tmpl": "plug.Templates"}
    assert acc.add_payload(payload) == {}
    if batch:
        assert _written_with(own, acc, tmp_path / "out") == []
    else:
        with mock.patch("pytest_distcov.data.merge.fill_batch", return_value=False):
            assert _written_with(own, acc, tmp_path / "out") == []
    written = read_data_file(tmp_path / "out")
    assert (written.lines("/t.tmpl"), written.file_tracer("/t.tmpl")) == ([8], "plug.Templates")
    assert written.lines("/b.py") == [9]
    assert sorted(written.measured_contexts()) == ["conftest", "t|run"][not own_lines :]
    written.close()

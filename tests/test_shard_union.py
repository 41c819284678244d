"""The fast combine (union.ShardUnion) against coverage.py's own union, on many real data files.

The shards are real coverage.py data files written through its public API: random parts of a
fixed set of lines or arcs, with contexts, repeated shards, file tracers, measured-but-empty
files, and line numbers at the edges of what a data file may hold (``readers.MAX_LINE``, the
extremes the packed arcs carry; beyond them a shard is refused). The reference is
``CoverageData.update`` (what ``coverage combine`` runs) over the same files. The union runs in
a fresh interpreter: it forks reader processes only where no other thread runs, and a
pytest-xdist worker has execnet's threads.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from coverage import CoverageData

from pytest_distcov.data import readers
from pytest_distcov.data.merge import write_data_file
from pytest_distcov.data.readers import MAX_LINE, ShardRead
from pytest_distcov.data.union import ShardUnion

ROOT = Path(__file__).resolve().parents[1]
FILES = [f"/proj/pkg/mod{i}.py" for i in range(6)]
# Line numbers at the edges of what a data file may hold, one group per shard 0, 10, 20, 30
# (packed, the extremes; one past them refuses the shard: test_line_numbers_beyond_the_limit).
EDGES = [
    [(3, MAX_LINE), (4, -MAX_LINE)],
    [(MAX_LINE, -MAX_LINE), (-MAX_LINE, MAX_LINE)],
    [(MAX_LINE, 1)],
    [(1, -MAX_LINE), (-MAX_LINE, 7)],
]


def _universe(arcs: bool, rng: random.Random) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for f in FILES:
        lines = sorted(rng.sample(range(1, 3000), 300))
        if arcs:
            items: list[Any] = [(-1, lines[0]), *itertools.pairwise(lines)]
            items += [(a, -1) for a in lines[::7]] + [(a, a + 40) for a in lines[::5]]
            out[f] = items
        else:
            out[f] = lines
    return out


def make_shards(where: Path, arcs: bool, count: int, seed: int = 7) -> list[Path]:
    """``count`` data files: different parts of one universe, some of them repeated exactly."""
    rng = random.Random(seed)
    universe = _universe(arcs, rng)
    paths: list[Path] = []
    previous: dict[str | None, dict[str, list[Any]]] = {}
    for n in range(count):
        data = CoverageData(str(where / f"shard{n:03d}"))
        if n % 9 == 4 and previous:
            parts = previous  # the very same data as the shard before
        else:
            contexts: list[str | None] = [None] if n % 3 else [None, f"t{n % 5}|run", "t9|setup"]
            parts = {
                c: {f: [x for x in v if rng.random() < 0.5] for f, v in universe.items()}
                for c in contexts
            }
            if arcs and n % 10 == 0:
                parts[None][FILES[0]] = parts[None][FILES[0]] + EDGES[n // 10 % len(EDGES)]
        previous = parts
        for context, files in parts.items():
            data.set_context(context)
            (data.add_arcs if arcs else data.add_lines)(files)
        data.set_context(None)
        if n % 4 == 1:
            data.touch_files([f"/proj/pkg/empty{n % 3}.py"])
        if n == 5:
            data.touch_files(["/proj/pkg/page.html"], "plug.Tracer")
            data.add_file_tracers({"/proj/pkg/page.html": "plug.Tracer"})
        data.write()
        data.close()
        paths.append(where / f"shard{n:03d}")
    return paths


def dump(path: Path) -> dict[str, Any]:
    """Everything a data file holds, in a form that compares exactly."""
    data = CoverageData(str(path))
    data.read()
    out: dict[str, Any] = {
        "arcs": data.has_arcs(),
        "files": sorted(data.measured_files()),
        "tracers": {f: data.file_tracer(f) for f in sorted(data.measured_files())},
        "contexts": sorted(data.measured_contexts()),
    }
    for context in sorted(data.measured_contexts()):
        data.set_query_contexts([f"^{re.escape(context)}$"])
        for f in data.measured_files():
            got = data.arcs(f) if data.has_arcs() else data.lines(f)
            out[f"{context}|{f}"] = sorted(got or [])
    data.close()
    return out


def reference(paths: list[Path], target: Path) -> Path:
    combined = CoverageData(str(target))
    for path in paths:
        shard = CoverageData(str(path))
        shard.read()
        combined.update(shard)
        shard.close()
    combined.write()
    combined.close()
    return target


def run_union(
    items: list[tuple[str, str]],
    target: Path,
    processes: int,
    parallel_from: int,
    root: Path | None = None,
) -> str:
    """The union of ``items`` made in a fresh interpreter and written to ``target``; a JSON
    account of how it went. With ``root``, paths are mapped (and checked) as ``combine`` does,
    the mapper set while the readers read."""
    mapper = (
        f"from pathlib import Path\nfrom pytest_distcov.sinks.store import shard_mapper\n"
        f"def meanwhile():\n    union.map_path = shard_mapper(Path({str(root)!r}))\n"
        if root
        else "meanwhile = None\n"
    )
    code = f"""
import json, sys
from pytest_distcov.data.merge import write_data_file
from pytest_distcov.data.union import ShardUnion
union = ShardUnion(processes={processes})
{mapper}
union.PARALLEL_FROM = {parallel_from}
with union:
    outcomes = union.add_files({items!r}, meanwhile=meanwhile)
    write_data_file({str(target)!r}, union.write_into)
print(json.dumps({{"readers": union.readers,
                  "errors": [[n, str(e)] for n, e in outcomes if e is not None]}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("arcs", [True, False], ids=["arcs", "lines"])
def test_union_equals_coverage_update(tmp_path: Path, arcs: bool) -> None:
    paths = make_shards(tmp_path, arcs, 40)
    expected = dump(reference(paths, tmp_path / "reference"))
    assert len(expected["contexts"]) == 7  # the test data holds what it claims to
    assert "/proj/pkg/empty0.py" in expected["files"]
    items = [(p.name, str(p)) for p in paths]
    # in this interpreter, one process
    with ShardUnion(processes=1) as union:
        assert union.add_files(items) == [(name, None) for name, _ in items]
        write_data_file(tmp_path / "here", union.write_into)
    assert union.readers == 1
    assert dump(tmp_path / "here") == expected
    # forked readers, each with a run of the files
    for processes in (2, 3):
        report = json.loads(run_union(items, tmp_path / f"p{processes}", processes, 4))
        assert report == {"readers": processes, "errors": []}
        assert dump(tmp_path / f"p{processes}") == expected


def test_union_in_processes_refuses_bad_files_in_order(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "l").mkdir()
    arc_shards = make_shards(tmp_path / "a", True, 12)
    line_shards = make_shards(tmp_path / "l", False, 3)
    broken = tmp_path / "broken"
    broken.write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    foreign = tmp_path / "foreign"
    foreign.write_text("{}")
    order = [*arc_shards[:5], line_shards[0], broken, *arc_shards[5:], foreign, *line_shards[1:]]
    items = [(str(p.relative_to(tmp_path)), str(p)) for p in order]
    report = json.loads(run_union(items, tmp_path / "ours", 3, 4))
    assert report["readers"] == 3
    named = [message.split(":")[0] for _, message in report["errors"]]
    assert named == [
        "cannot combine coverage data file l/shard000",
        "cannot read coverage data file broken",
        "cannot read coverage data file foreign",
        "cannot combine coverage data file l/shard001",
        "cannot combine coverage data file l/shard002",
    ]
    assert [name for name, _ in report["errors"]] == [
        "l/shard000",
        "broken",
        "foreign",
        "l/shard001",
        "l/shard002",
    ]
    assert "it holds line data, but a/shard000 does not" in report["errors"][0][1]
    # only the arc shards, all of them
    assert dump(tmp_path / "ours") == dump(reference(arc_shards, tmp_path / "reference"))


def test_foreign_schemas_are_named(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    good, older, partial = make_shards(tmp_path / "a", True, 3)
    with sqlite3.connect(older) as con:
        con.execute("UPDATE coverage_schema SET version = 6")
    con.close()
    with sqlite3.connect(partial) as con:
        con.execute("DROP TABLE tracer")
    con.close()
    with ShardUnion(processes=1) as union:
        outcomes = dict(union.add_files([(p.name, str(p)) for p in (good, older, partial)]))
    assert outcomes["shard000"] is None
    assert str(outcomes["shard001"]) == (
        "cannot read coverage data file shard001: it has data schema 6, this coverage.py reads 7"
        " (was it written by another version?)"
    )
    assert str(outcomes["shard002"]) == (
        "cannot read coverage data file shard002: no such table: shard.tracer"
        " (is it a coverage.py data file?)"
    )


@pytest.mark.parametrize("arcs", [True, False], ids=["arcs", "lines"])
def test_line_numbers_beyond_the_limit_refuse_the_shard(tmp_path: Path, arcs: bool) -> None:
    """A line number no source file has (above readers.MAX_LINE) refuses its shard whole; the
    largest one allowed is combined exactly."""
    edge: list[Any] = [(1, MAX_LINE), (-MAX_LINE, 2)] if arcs else [1, MAX_LINE]
    beyond: list[list[Any]] = (
        [[(3, MAX_LINE + 1)], [(-MAX_LINE - 1, 4)], [(-(10**12), 7)], [(2**62, 1)]]
        if arcs
        else [[5, MAX_LINE + 1], [MAX_LINE + 8 * 1024]]
    )
    paths = []
    for n, items in enumerate([edge, *beyond]):
        data = CoverageData(str(tmp_path / f"s{n}"))
        (data.add_arcs if arcs else data.add_lines)({"/proj/a.py": [*edge[:1], *items]})
        data.write()
        data.close()
        paths.append(tmp_path / f"s{n}")
    with ShardUnion(processes=1) as union:
        outcomes = union.add_files([(p.name, str(p)) for p in paths])
        write_data_file(tmp_path / "ours", union.write_into)
    assert outcomes[0] == ("s0", None)
    for name, error in outcomes[1:]:
        assert error is not None, name
        what = (
            "its arc data holds a line number that is not a whole number from -33,554,431 to"
            " 33,554,431"
            if arcs
            else "its line data holds a blob of "
        )
        assert str(error).startswith(f"cannot read coverage data file {name}: {what}"), error
    assert dump(tmp_path / "ours") == dump(paths[0])


@pytest.mark.parametrize(
    ("spent", "message"),
    [
        ("STEPS", "reading it takes more work than a data file of its size needs"),
        ("BYTES", "it yields more than a data file of its size can hold"),
    ],
)
def test_the_reading_budget_refuses_a_shard_beyond_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spent: str, message: str
) -> None:
    """What a damaged file may cost beyond a real one's (pages pointing back at each other)
    stops at the budget; here the budget is made too small for a real file instead, and the
    hub goes on reading the next file."""
    good, other = make_shards(tmp_path, True, 2)
    monkeypatch.setattr(readers, f"READ_{spent}", 0)
    monkeypatch.setattr(readers, f"READ_{spent}_PER_BYTE", 0)
    hub = readers.shard_hub()
    try:
        refused = readers.read_shard(hub, "shard000", str(good))
        assert str(refused) == (
            f"cannot read coverage data file shard000: {message} (is it damaged or doctored?)"
        )
        assert isinstance(readers.read_shard(hub, "live", str(other), bounded=False), ShardRead)
    finally:
        hub.close()


def test_a_refused_path_refuses_its_shard_in_a_reader_process(tmp_path: Path) -> None:
    """Reader processes read before the paths can be checked (the coverage configuration is
    read meanwhile): a run whose union holds a refused path is read again, shard by shard, so
    that only the shard that holds it is refused."""
    (tmp_path / "a").mkdir()
    paths = make_shards(tmp_path / "a", False, 12)
    outside = tmp_path / "outside"
    data = CoverageData(str(outside))
    data.add_lines({"/etc/passwd.py": [1, 2], FILES[0]: [1, 2, 3]})
    data.write()
    data.close()
    order = [*paths[:7], outside, *paths[7:]]
    items = [(p.name, str(p)) for p in order]
    report = json.loads(run_union(items, tmp_path / "ours", 3, 4, root=Path("/proj")))
    assert report == {
        "readers": 3,
        "errors": [
            [
                "outside",
                "cannot combine coverage data file outside: it names /etc/passwd.py, outside the"
                " root /proj (another machine's paths are combined when a [paths] entry of the"
                " coverage configuration maps them into it)",
            ]
        ],
    }
    assert dump(tmp_path / "ours") == dump(reference(paths, tmp_path / "reference"))


def test_a_shard_is_read_only_as_a_regular_file_of_at_most_max_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store's file is opened once, through no symlink, and checked through that descriptor:
    a symlink (even to a good data file), a directory, or a file above ``max_bytes`` is that
    file's error, and the hub reads the next file. (A FIFO: tests/test_store.py, bounded.)"""
    good, other = make_shards(tmp_path, False, 2)
    private = tmp_path / "tmp"  # where the copies that SQLite reads are made
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    (tmp_path / "link").symlink_to(good)
    (tmp_path / "dir").mkdir()
    regular = "a store's shards are read as regular files only"
    size = good.stat().st_size
    hub = readers.shard_hub()
    try:
        assert str(readers.read_shard(hub, "link", str(tmp_path / "link"))) == (
            f"cannot read coverage data file link: it is a symbolic link; {regular}"
        )
        assert str(readers.read_shard(hub, "dir", str(tmp_path / "dir"))) == (
            f"cannot read coverage data file dir: it is a directory; {regular}"
        )
        assert str(readers.read_shard(hub, "big", str(good), max_bytes=size - 1)) == (
            f"cannot read coverage data file big: it is {size:,} bytes, more than"
            f" --max-shard-size allows ({size - 1:,})"
        )
        assert isinstance(readers.read_shard(hub, "good", str(good), max_bytes=size), ShardRead)
        assert isinstance(readers.read_shard(hub, "other", str(other)), ShardRead)
    finally:
        hub.close()
    assert not list(private.iterdir())  # each copy removed once read


class _StuckHub(readers.ShardHub):
    """A hub whose DETACH fails (as it would with a statement still running)."""

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        if sql.startswith("DETACH"):
            raise sqlite3.OperationalError("database shard is locked")
        return super().execute(sql, parameters)


def test_a_failed_detach_is_no_error_of_the_shard_read(tmp_path: Path) -> None:
    """read_shard never raises: a DETACH that fails leaves the shard's own outcome (read, or
    its own error), and the next file says that it cannot be attached."""
    good, bad = make_shards(tmp_path, False, 2)
    con = sqlite3.connect(bad)
    con.execute("UPDATE coverage_schema SET version = 99")
    con.commit()
    con.close()
    hub = sqlite3.connect(":memory:", isolation_level=None, factory=_StuckHub)
    hub.stored = set()
    try:
        refused = readers.read_shard(hub, "bad", str(bad))
        assert str(refused) == (
            "cannot read coverage data file bad: it has data schema 99, this coverage.py reads 7"
            " (was it written by another version?)"
        )
        after = readers.read_shard(hub, "good", str(good))
        assert str(after) == (
            "cannot read coverage data file good: database shard is already in use"
        )
    finally:
        hub.close()

"""The fast combine (union.ShardUnion) against coverage.py's own union, on many real data files.

The shards are real coverage.py data files written through its public API: random parts of a
fixed set of lines or arcs, with contexts, repeated shards, file tracers, measured-but-empty
files, and line numbers beyond the range the packed arc encoding carries (those take the
row-by-row path). The reference is ``CoverageData.update`` (what ``coverage combine`` runs) over
the same files. The union runs in a fresh interpreter: it forks reader processes only where no
other thread runs, and a pytest-xdist worker has execnet's threads.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from coverage import CoverageData

from pytest_distcov.data.merge import write_data_file
from pytest_distcov.data.readers import _ARC_OFFSET
from pytest_distcov.data.union import ShardUnion

ROOT = Path(__file__).resolve().parents[1]
FILES = [f"/proj/pkg/mod{i}.py" for i in range(6)]
# Line numbers at the edges of the packed range and beyond it, one group per shard 0, 10, 20, 30
# (a file and context with one number out of range is read row by row as a whole).
EDGES = [
    [(3, _ARC_OFFSET), (4, -_ARC_OFFSET)],  # the first would read as the second if packed
    [(_ARC_OFFSET - 1, -_ARC_OFFSET), (-_ARC_OFFSET, _ARC_OFFSET - 1)],  # packed, the extremes
    [(_ARC_OFFSET, 1)],
    [(1, -_ARC_OFFSET - 1), (-(10**12), 7)],
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
    items: list[tuple[str, str]], target: Path, processes: int, parallel_from: int
) -> str:
    """The union of ``items`` made in a fresh interpreter and written to ``target``; a JSON
    account of how it went."""
    code = f"""
import json, sys
from pytest_distcov.data.merge import write_data_file
from pytest_distcov.data.union import ShardUnion
union = ShardUnion(processes={processes})
union.PARALLEL_FROM = {parallel_from}
with union:
    outcomes = union.add_files({items!r})
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

"""ContextDeltaReader on data files written through coverage's own CoverageData."""

from __future__ import annotations

import re
import sqlite3
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from coverage import CoverageData

from pytest_distcov.data.contexts import parse_where
from pytest_distcov.data.contexts import test_of as nodeid_of
from pytest_distcov.data.merge import add_contexts
from pytest_distcov.data.readers import ContextDeltaReader
from pytest_distcov.errors import DataFileError, SettingsError


def _add(data: CoverageData, context: str, lines: dict[str, list[int]]) -> None:
    data.set_context(context)
    data.add_lines(lines)
    data.write()


def _lines(payload: dict) -> dict[str, dict[str, list[int]]]:  # type: ignore[type-arg]
    return {c: dict(d["lines"]) for c, d in payload["contexts"].items()}


def test_every_change_is_read_once_or_again(tmp_path: Path) -> None:
    data = CoverageData(str(tmp_path / "d"))
    reader = ContextDeltaReader(branch=False)
    assert reader.delta_from_file(tmp_path / "d")["contexts"] == {}  # no file yet: nothing
    _add(data, "a|run", {"/p/f.py": [1, 2]})
    first = reader.delta_from_file(tmp_path / "d")
    assert _lines(first) == {"a|run": {"/p/f.py": [1, 2]}}
    assert first["touched"] == {"": ["/p/f.py"]}
    # the newest row grows (a replaced row): its lines come again, whole
    _add(data, "a|run", {"/p/f.py": [3]})
    assert _lines(reader.delta_from_file(tmp_path / "d"))["a|run"] == {"/p/f.py": [1, 2, 3]}
    # an older row grows after newer ones exist
    _add(data, "b|run", {"/p/g.py": [7]})
    _add(data, "a|run", {"/p/f.py": [4]})
    got = _lines(reader.delta_from_file(tmp_path / "d"))
    assert got["a|run"] == {"/p/f.py": [1, 2, 3, 4]}
    assert got["b|run"] == {"/p/g.py": [7]}
    data.close()


def test_arcs_and_tracers(tmp_path: Path) -> None:
    data = CoverageData(str(tmp_path / "d"))
    reader = ContextDeltaReader(branch=True)
    data.set_context("t|setup")
    data.add_arcs({"/p/f.py": [(-1, 1), (1, 2)]})
    data.add_file_tracers({"/p/f.py": "plug.Tracer"})
    data.write()
    first = reader.delta_from_file(tmp_path / "d")
    assert sorted(first["contexts"]["t|setup"]["arcs"]["/p/f.py"]) == [(-1, 1), (1, 2)]
    assert first["tracers"] == {"/p/f.py": "plug.Tracer"}
    data.add_arcs({"/p/f.py": [(1, 2), (2, -1)]})
    data.write()
    second = reader.delta_from_file(tmp_path / "d")
    assert second["contexts"]["t|setup"]["arcs"] == {"/p/f.py": [(2, -1)]}
    assert second["tracers"] == {}
    data.close()


def test_not_a_data_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"not sqlite at all" * 10)
    with pytest.raises(DataFileError, match="cannot read coverage data file"):
        ContextDeltaReader(branch=False).delta_from_file(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("src/a.py:12", ("src/a.py", range(12, 13))),
        ("src/a.py:3-5", ("src/a.py", range(3, 6))),
        ("C:/x/a.py:3", ("C:/x/a.py", range(3, 4))),
    ],
)
def test_parse_where(text: str, expected: tuple[str, range]) -> None:
    assert parse_where(text) == expected


@pytest.mark.parametrize("text", ["a.py", "a.py:0", "a.py:5-3", "a.py:x"])
def test_parse_where_errors(text: str) -> None:
    with pytest.raises(SettingsError):
        parse_where(text)


def test_node_id_of_a_label() -> None:
    assert nodeid_of("t.py::test_a[x|y]|teardown") == "t.py::test_a[x|y]"
    assert nodeid_of("custom") == "custom"


# -- add_contexts: many contexts into a data file at once ---------------------------------------


def _by_context(arcs: bool) -> dict[str | None, dict[str, set[Any]]]:
    """Contexts as the engines and the controller hand them over, odd cases included."""
    items: list[Any] = [(-1, 1), (1, 2), (2, -1)] if arcs else [1, 2, 5]
    return {
        "t.py::a|setup": {"/p/f.py": set(items[:1])},
        "t.py::a|run": {"/p/f.py": set(items), "/p/g.py": set(items[1:])},
        "t.py::b|run": {"/p/g.py": set(items), "/p/empty.py": set()},
        None: {"/p/f.py": set(items[2:])},  # coverage.py's "" context, given both ways
        "": {"/p/h.py": set(items[:2])},
        "t.py::c|teardown": {},  # nothing measured: no context
    }


def _contents(data: CoverageData, arcs: bool) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Every context's lines (or arcs) by file, as coverage.py reads them back."""
    out: dict[str, dict[str, Any]] = {}
    for context in sorted(data.measured_contexts()):
        data.set_query_contexts([f"^{re.escape(context)}$"])
        found = {f: data.arcs(f) if arcs else data.lines(f) for f in data.measured_files()}
        out[context] = {f: sorted(v) for f, v in sorted(found.items()) if v}
    data.set_query_contexts(None)
    return sorted(data.measured_files()), out


def _add_one_way(data: CoverageData, arcs: bool, fast: bool, *, never: str, fallback: str) -> None:
    """add_contexts of :func:`_by_context`: the fast way (``CoverageData.<never>`` must not be
    called), or the way taken where ``merge.<fallback>`` cannot write."""
    if fast:
        with mock.patch.object(CoverageData, never, side_effect=AssertionError):
            add_contexts(data, _by_context(arcs), arcs=arcs)
    else:
        with mock.patch(f"pytest_distcov.data.merge.{fallback}", return_value=False):
            add_contexts(data, _by_context(arcs), arcs=arcs)


@pytest.mark.parametrize("arcs", [False, True], ids=["lines", "arcs"])
def test_add_contexts_writes_what_add_lines_context_by_context_writes(arcs: bool) -> None:
    """The batch filled with three inserts (no add_lines per context) gives coverage.py's data
    file exactly what add_lines (add_arcs) context by context gives, beside data already in
    it; and it is the way taken (no context is set on the batch)."""
    results = []
    for fast in (True, False):
        data = CoverageData(no_disk=True)
        data.set_context("t.py::a|run")
        if arcs:
            data.add_arcs({"/p/f.py": {(7, 8)}})
        else:
            data.add_lines({"/p/f.py": {7}})
        _add_one_way(data, arcs, fast, never="set_context", fallback="fill_batch")
        results.append(_contents(data, arcs))
        data.close(force=True)
    assert results[0] == results[1]
    files, by_context = results[0]
    assert files == ["/p/empty.py", "/p/f.py", "/p/g.py", "/p/h.py"][arcs:]
    assert sorted(by_context) == ["", "t.py::a|run", "t.py::a|setup", "t.py::b|run"]
    first = [(-1, 1)] if arcs else [1]
    assert by_context["t.py::a|setup"] == {"/p/f.py": first}
    expected = [*_by_context(arcs)["t.py::a|run"]["/p/f.py"], (7, 8) if arcs else 7]
    assert by_context["t.py::a|run"]["/p/f.py"] == sorted(expected)  # (with what was there)


def test_add_contexts_falls_back_where_the_tables_differ() -> None:
    """Where the inserts find no tables of the names they write (another coverage.py's), they
    write nothing, and add_lines context by context does it all."""
    data = CoverageData(no_disk=True)
    elsewhere = types.SimpleNamespace(  # a database without coverage.py's tables
        connect=lambda *args, **kwargs: sqlite3.connect(":memory:"), Error=sqlite3.Error
    )
    added: list[dict[str, Any]] = []
    real_add_lines = CoverageData.add_lines

    def add_lines(self: CoverageData, line_data: dict[str, Any]) -> None:
        added.append(dict(line_data))
        real_add_lines(self, line_data)

    with (
        mock.patch("pytest_distcov.covapi.schema.sqlite3", elsewhere),
        mock.patch.object(CoverageData, "add_lines", add_lines),
    ):
        add_contexts(data, {"t.py::a|run": {"/p/f.py": {1, 2}}}, arcs=False)
    assert added == [{}, {"/p/f.py": {1, 2}}]
    assert _contents(data, False) == (["/p/f.py"], {"t.py::a|run": {"/p/f.py": [1, 2]}})
    data.close(force=True)


#: Three contexts, one file each (a label of None is coverage.py's "").
_THREE: dict[str | None, dict[str, list[int]]] = {
    "c1": {"/a.py": [1, 2]},
    "c2": {"/b.py": [3]},
    None: {"/c.py": [4]},
}


def _failing_second() -> tuple[dict[str, int], Callable[[Any], bytes]]:
    """``nums_to_numbits`` that fails at its second call (counted in the dict returned)."""
    from pytest_distcov.covapi import schema

    calls = {"n": 0}
    real = schema.nums_to_numbits

    def fail_second(nums: Any) -> bytes:
        calls["n"] += 1
        if calls["n"] == 2:
            raise sqlite3.OperationalError("injected")
        return real(nums)

    return calls, fail_second


def test_a_write_that_fails_half_way_leaves_nothing_for_the_fallback_to_double() -> None:
    """An insert that fails after others wrote rows (the in-memory batch has no journal, so
    nothing is rolled back): the fallback writes into a fresh batch, and the data file gets
    what add_lines context by context gives, no stray context or file."""
    from pytest_distcov.covapi import schema

    calls, fail_second = _failing_second()
    by_context = _THREE
    got = CoverageData(no_disk=True)
    with mock.patch.object(schema, "nums_to_numbits", fail_second):
        add_contexts(got, by_context, arcs=False)
    assert calls["n"] >= 2  # the fast write did fail half-way
    want = CoverageData(no_disk=True)
    for context, files in by_context.items():
        want.set_context(context)
        want.add_lines(files)
    assert _contents(got, False) == _contents(want, False)
    got.close(force=True)
    want.close(force=True)


def test_arcs_given_as_lists_in_two_labels_of_one_context_are_merged() -> None:
    """None and "" are one context; arcs given as lists (which add_arcs takes) merge there."""
    data = CoverageData(no_disk=True)
    add_contexts(data, {None: {"/a.py": [[1, 2]]}, "": {"/a.py": [[2, 3]]}}, arcs=True)
    assert sorted(data.arcs("/a.py") or []) == [(1, 2), (2, 3)]
    data.close(force=True)


# -- add_contexts straight into a data file, and the reports' copy without contexts --------------


def _on_disk(path: Path, arcs: bool) -> CoverageData:
    """A data file as the controller's is before the workers' data goes in: its tables made,
    and files measured with nothing recorded (never-imported files of [run] source)."""
    data = CoverageData(str(path))
    (data.add_arcs if arcs else data.add_lines)({})
    data.touch_files(["/p/never.py", "/p/f.py"])
    return data


@pytest.mark.parametrize("arcs", [False, True], ids=["lines", "arcs"])
def test_add_contexts_into_a_file_writes_what_add_lines_writes(tmp_path: Path, arcs: bool) -> None:
    """Straight into a file that holds files but no context yet (no in-memory batch, no
    ``CoverageData.update``): coverage.py reads back what add_lines context by context gives,
    and the same CoverageData object goes on working (its next files get their own rows)."""
    results = []
    for fast in (True, False):
        data = _on_disk(tmp_path / f"{fast}.coverage", arcs)
        _add_one_way(data, arcs, fast, never="update", fallback="fill_file")
        data.set_context(None)
        data.touch_files(["/p/later.py"])
        (data.add_arcs if arcs else data.add_lines)(
            {"/p/g.py": {(9, 10)} if arcs else {9}, "/p/new.py": {(1, -1)} if arcs else {1}}
        )
        data.close(force=True)
        again = CoverageData(str(tmp_path / f"{fast}.coverage"))
        again.read()
        results.append(_contents(again, arcs))
        again.close(force=True)
    assert results[0] == results[1]
    files, by_context = results[0]
    assert {"/p/never.py", "/p/later.py", "/p/new.py", "/p/g.py"} <= set(files)
    wanted = sorted(_by_context(arcs)["t.py::a|run"]["/p/f.py"])
    assert by_context["t.py::a|run"]["/p/f.py"] == wanted


def test_add_contexts_into_a_file_with_contexts_goes_through_a_batch(tmp_path: Path) -> None:
    """A file that holds a context already (the controller measured too) is not written
    straight: the batch and ``CoverageData.update`` merge into it, as before."""
    from pytest_distcov.covapi import schema

    data = _on_disk(tmp_path / "d.coverage", arcs=False)
    data.set_context("mine|run")
    data.add_lines({"/p/f.py": {7}})
    assert not schema.fill_file(data, {"t|run": {"/p/f.py": {1}}}, arcs=False)
    add_contexts(data, {"t|run": {"/p/f.py": {1}}, "mine|run": {"/p/f.py": {2}}}, arcs=False)
    assert _contents(data, False)[1] == {"mine|run": {"/p/f.py": [2, 7]}, "t|run": {"/p/f.py": [1]}}
    data.close(force=True)


def test_a_straight_write_that_fails_half_way_is_rolled_back(tmp_path: Path) -> None:
    """A failure in the middle of the straight write leaves no row of it (one transaction):
    the batch then writes it all, once."""
    from pytest_distcov.covapi import schema

    calls, fail_second = _failing_second()
    by_context = _THREE
    got = _on_disk(tmp_path / "d.coverage", arcs=False)
    with mock.patch.object(schema, "nums_to_numbits", fail_second):
        assert not schema.fill_file(got, by_context, arcs=False)
    assert calls["n"] == 2  # (it failed half-way, after a row was made)
    assert _contents(got, False) == (["/p/f.py", "/p/never.py"], {})
    add_contexts(got, by_context, arcs=False)
    want = _on_disk(tmp_path / "w.coverage", arcs=False)
    for context, files in by_context.items():
        want.set_context(context)
        want.add_lines(files)
    assert _contents(got, False) == _contents(want, False)
    got.close(force=True)
    want.close(force=True)


@pytest.mark.parametrize("arcs", [False, True], ids=["lines", "arcs"])
def test_the_copy_without_contexts_reads_as_the_data_file(tmp_path: Path, arcs: bool) -> None:
    """Every file's lines (arcs), file tracer and measured files, as coverage.py reads them
    from the data file with no context query: the same in the copy, which has one context."""
    from pytest_distcov.data.merge import without_contexts

    full = _on_disk(tmp_path / "d.coverage", arcs)
    add_contexts(full, _by_context(arcs), arcs=arcs)
    full.touch_files(["/p/plugin.html"], "some_plugin.Tracer")
    full.set_context("t.py::d|run")
    (full.add_arcs if arcs else full.add_lines)({"/p/tpl.html": {(-1, 3)} if arcs else {3}})
    full.add_file_tracers({"/p/tpl.html": "some_plugin.Tracer"})
    full.close(force=True)
    full = CoverageData(str(tmp_path / "d.coverage"))
    full.read()
    into = CoverageData(no_disk=True)
    without_contexts(full, into)
    assert into.measured_contexts() == {""}
    assert into.measured_files() == full.measured_files()
    for name in full.measured_files():
        if arcs:
            assert sorted(into.arcs(name) or []) == sorted(full.arcs(name) or []), name
        assert sorted(into.lines(name) or []) == sorted(full.lines(name) or []), name
        assert into.file_tracer(name) == full.file_tracer(name), name
    assert into.file_tracer("/p/plugin.html") == "some_plugin.Tracer"
    full.close(force=True)
    into.close(force=True)


@pytest.mark.parametrize("count", [1, 63, 64, 65, 1000])
def test_arcs_many_a_statement_are_every_arc(tmp_path: Path, count: int) -> None:
    """Arcs go in many a statement, the last ones one a statement: every arc of every context
    is read back, whatever their number (straight into the file, and through the batch)."""
    by_context: dict[str | None, dict[str, set[Any]]] = {}
    for n in range(count):
        files = by_context.setdefault(f"t.py::t{n % 7}|run", {})
        files.setdefault(f"/p/f{n % 3}.py", set()).add((n, n + 1))
    want = {c: {f: sorted(a) for f, a in sorted(fs.items())} for c, fs in by_context.items()}
    for straight in (True, False):
        data = _on_disk(tmp_path / f"{straight}.coverage", arcs=True)
        if straight:
            add_contexts(data, by_context, arcs=True)
        else:
            with mock.patch("pytest_distcov.data.merge.fill_file", return_value=False):
                add_contexts(data, by_context, arcs=True)
        _, found = _contents(data, True)
        data.close(force=True)
        assert found == want
        assert sum(len(a) for files in found.values() for a in files.values()) == count


def test_arcs_many_contexts_share_are_written_once_and_read_back_whole(tmp_path: Path) -> None:
    """Sets of arcs that many contexts share (as decoded from the wire) go in through
    temporary tables, joined in SQLite: every context reads back its own arcs, those of a
    set of its own too (straight into the file, and through the batch), and nothing else
    is left in the file."""
    shared = [frozenset((n, n + k) for n in range(70 + k)) for k in range(3)]
    by_context: dict[str | None, dict[str, Any]] = {}
    for n in range(12):
        files = by_context.setdefault(f"t.py::t{n}|run", {})
        files["/p/a.py"] = shared[n % 3]
        files["/p/b.py"] = shared[(n + 1) % 3]
    by_context["t.py::t0|run"]["/p/c.py"] = {(1, 2), (2, -1)}
    want = {c: {f: sorted(a) for f, a in sorted(fs.items())} for c, fs in by_context.items()}
    from pytest_distcov.covapi import schema

    for straight in (True, False):
        path = tmp_path / f"{straight}.coverage"
        data = _on_disk(path, arcs=True)
        with mock.patch.object(schema, "_insert_rows", wraps=schema._insert_rows) as spy:
            if straight:
                add_contexts(data, by_context, arcs=True)
            else:
                with mock.patch("pytest_distcov.data.merge.fill_file", return_value=False):
                    add_contexts(data, by_context, arcs=True)
        assert any("distcov_arc_sets" in call.args[1] for call in spy.call_args_list)
        _, found = _contents(data, True)
        data.close(force=True)
        assert found == want
        con = sqlite3.connect(path)
        try:
            tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master")}
            rows = con.execute("SELECT count(*) FROM arc").fetchone()[0]
        finally:
            con.close()
        assert not any(name.startswith("distcov") for name in tables)
        assert rows == sum(len(a) for fs in want.values() for a in fs.values())


def test_arcs_go_in_the_order_of_the_tables_index(tmp_path: Path) -> None:
    """The rows go in by (file, context, arc), the order of the arc table's unique index
    (SQLite adds each next to the last); pairs that cannot be compared (a tuple and a list
    of one file) go in as they are, every one of them."""
    by_context: dict[str | None, dict[str, Any]] = {
        "t.py::b|run": {"/p/z.py": {(5, 6), (-1, 2), (2, 5)}, "/p/a.py": {(3, 4), (1, 3)}},
        "t.py::a|run": {"/p/a.py": [(9, 10), [1, 9]], "/p/z.py": {(7, -1)}},
    }
    data = _on_disk(tmp_path / "order.coverage", arcs=True)
    add_contexts(data, by_context, arcs=True)
    _, found = _contents(data, True)
    data.close(force=True)
    assert found["t.py::b|run"] == {
        "/p/a.py": [(1, 3), (3, 4)],
        "/p/z.py": [(-1, 2), (2, 5), (5, 6)],
    }
    assert found["t.py::a|run"] == {"/p/a.py": [(1, 9), (9, 10)], "/p/z.py": [(7, -1)]}
    con = sqlite3.connect(tmp_path / "order.coverage")
    try:
        ids = con.execute(
            "SELECT file_id, context_id, fromno, tono FROM arc ORDER BY rowid"
        ).fetchall()
    finally:
        con.close()
    assert len(ids) == 8
    comparable = [r for r in ids if (r[2], r[3]) not in {(9, 10), (1, 9)}]
    assert comparable == sorted(comparable)
    assert [r[:2] for r in ids] == sorted(r[:2] for r in ids)


def test_the_straight_write_refuses_data_of_the_other_kind(tmp_path: Path) -> None:
    """Arcs into a file of lines (or lines into one of arcs) are not written straight:
    coverage.py's own update refuses to mix them."""
    from pytest_distcov.covapi import schema

    for kind, other in ((False, True), (True, False)):
        data = _on_disk(tmp_path / f"{kind}.coverage", arcs=kind)
        items: set[Any] = {(1, 2)} if other else {1}
        assert not schema.fill_file(data, {"t|run": {"/p/f.py": items}}, arcs=other)
        data.close(force=True)


def test_reports_selecting_contexts_and_the_upload_read_the_data_file(tmp_path: Path) -> None:
    """Under ``[report] contexts`` every report and the upload select contexts: the copy
    without contexts is not made (it would hold none of them)."""
    from coverage import Coverage

    from pytest_distcov.engine.measure import MeasureSpec
    from pytest_distcov.roles.finish import Finisher

    path = tmp_path / "d.coverage"
    data = _on_disk(path, arcs=False)
    add_contexts(
        data, {"t.py::a|run": {"/p/f.py": {1}}, "t.py::b|run": {"/p/f.py": {2}}}, arcs=False
    )
    data.close(force=True)
    for selecting in (False, True):
        rc = tmp_path / f"{selecting}.rc"
        rc.write_text("[report]\ncontexts = t.py::a\n" if selecting else "[report]\n")
        spec = MeasureSpec(source=None, branch=False, config_file=str(rc), context="test")
        full = Coverage(data_file=str(path), config_file=str(rc))
        full.load()
        finisher = types.SimpleNamespace(spec=spec, _known=None)
        merged = Finisher._without_contexts(finisher, full)  # type: ignore[arg-type]
        assert (merged is full) == selecting
        assert sorted(merged.get_data().lines("/p/f.py") or []) == [1, 2]
        assert merged.get_data().measured_contexts() == (
            {"t.py::a|run", "t.py::b|run"} if selecting else {""}
        )
        for cov in {id(c): c for c in (full, merged)}.values():
            cov.get_data().close(force=True)

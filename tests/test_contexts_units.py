"""ContextDeltaReader on data files written through coverage's own CoverageData."""

from __future__ import annotations

import re
import sqlite3
import types
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
        if fast:
            with mock.patch.object(CoverageData, "set_context", side_effect=AssertionError):
                add_contexts(data, _by_context(arcs), arcs=arcs)
        else:
            with mock.patch("pytest_distcov.data.merge.fill_batch", return_value=False):
                add_contexts(data, _by_context(arcs), arcs=arcs)
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


def test_a_write_that_fails_half_way_leaves_nothing_for_the_fallback_to_double() -> None:
    """An insert that fails after others wrote rows (the in-memory batch has no journal, so
    nothing is rolled back): the fallback writes into a fresh batch, and the data file gets
    what add_lines context by context gives, no stray context or file."""
    from pytest_distcov.covapi import schema

    calls = {"n": 0}
    real = schema.nums_to_numbits

    def fail_second(nums: Any) -> bytes:
        calls["n"] += 1
        if calls["n"] == 2:
            raise sqlite3.OperationalError("injected")
        return real(nums)

    by_context = {"c1": {"/a.py": [1, 2]}, "c2": {"/b.py": [3]}, None: {"/c.py": [4]}}
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

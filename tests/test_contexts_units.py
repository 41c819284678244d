"""ContextDeltaReader on data files written through coverage's own CoverageData."""

from __future__ import annotations

from pathlib import Path

import pytest
from coverage import CoverageData

from pytest_distcov.data.contexts import parse_where
from pytest_distcov.data.contexts import test_of as nodeid_of
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

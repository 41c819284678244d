"""The tracer tap: the per-test flush that reads coverage's collector instead of flushing it."""

from __future__ import annotations

import json
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest
from coverage.collector import Collector

from pytest_distcov.covapi import collector as collector_module
from pytest_distcov.covapi.collector import TracerSets, packing_matches, unpack_arc
from pytest_distcov.engine.tap import TracerTap

from .helpers import run_python


def _collector(*, branch: bool = False, packed: bool = False) -> Any:
    """A stand-in with the parts of coverage's collector the tap reads."""
    collector = types.SimpleNamespace(
        data={},
        file_tracers={},
        branch=branch,
        core=types.SimpleNamespace(packed_arcs=packed),
        cached_mapped_file=lambda name: "/src/" + name,
    )

    def flush_data() -> bool:  # coverage's own flush: hands the sets on and empties them
        for items in collector.data.values():
            items.clear()
        return True

    collector.flush_data = flush_data
    return collector


def test_the_tap_gives_each_item_once_and_sees_past_coverages_own_flush() -> None:
    collector = _collector()
    tap = TracerTap(TracerSets(collector))
    collector.data["a.py"] = {1, 2}
    collector.data["b.py"] = set()  # traced, nothing recorded yet: left out, as coverage does
    assert tap.take() == {"/src/a.py": {1, 2}}
    assert tap.take() == {}
    collector.data["a.py"].add(3)
    collector.data["c.py"] = {7}
    assert tap.take() == {"/src/a.py": {3}, "/src/c.py": {7}}
    # coverage's own flush empties the sets; they fill again to the very same sizes, one of
    # them with a line never seen: sizes alone would miss it.
    collector.flush_data()
    collector.data["a.py"].update({1, 2, 4})
    collector.data["c.py"].add(7)
    assert tap.take() == {"/src/a.py": {4}}
    # coverage made a new dict of sets (Collector.reset)
    collector.data = {"a.py": {1, 5}}
    assert tap.take() == {"/src/a.py": {5}}


def test_the_tap_unpacks_arcs_and_joins_names_mapped_to_one_file() -> None:
    collector = _collector(branch=True, packed=True)
    collector.cached_mapped_file = lambda name: "/src/one.py"
    tap = TracerTap(TracerSets(collector))
    assert tap.kind == "arcs"
    collector.data["one.py"] = {
        collector_module._pack_arc(-1, 1),
        collector_module._pack_arc(1, -1),
    }
    collector.data["./one.py"] = {collector_module._pack_arc(1, 2)}
    assert {k: sorted(v) for k, v in tap.take().items()} == {
        "/src/one.py": [(-1, 1), (1, -1), (1, 2)]
    }


def test_the_tap_is_usable_until_a_plugin_traces_a_file() -> None:
    collector = _collector()
    tap = TracerTap(TracerSets(collector))
    assert tap.usable
    collector.file_tracers["page.html"] = "django_coverage_plugin.DjangoTemplatePlugin"
    assert not tap.usable


def test_packing_is_checked_against_coverages_own_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    assert packing_matches(Collector)
    assert unpack_arc(collector_module._pack_arc(-3, 70000)) == (-3, 70000)
    # a coverage.py that unpacked otherwise (here: ours with the lines swapped) is refused
    monkeypatch.setattr(collector_module, "unpack_arc", lambda packed: unpack_arc(packed)[::-1])
    assert not packing_matches(Collector)
    # and so is one whose flush no longer runs on the stand-in
    broken = type("Broken", (), {"flush_data": lambda self: self.no_such_part})
    assert not packing_matches(broken)


ENGINE_SCRIPT = """
import json, sys
from pathlib import Path
from coverage import CoverageData
from pytest_distcov.engine.measure import Engine, MeasureSpec
from pytest_distcov.data.readers import update_from_file

root, branch = Path(sys.argv[1]), sys.argv[2] == "branch"
sys.path.insert(0, str(root / "src"))
spec = MeasureSpec(source=(str(root / "src"),), branch=branch or None, config_file=False,
                   engine="coverage", context=None)
engine = Engine(spec, root / "data", "t", subprocesses=False, partial=True)
engine.start()
engine.stream_from_memory()
streamed = []

def flush():
    engine.flush()
    context, fresh = engine.take_fresh()
    streamed.append({name: sorted(items) for name, items in fresh.items()})

import mod
mod.f(1)
flush()
mod.f(1)
flush()
mod.f(-1)
flush()
engine.cov.get_data()  # coverage's own flush, mid-run: it empties the tracer's sets
mod.f(1)
mod.g()
flush()
journal = CoverageData(str(root / "journal-read"))
update_from_file(journal, engine.data_path.with_name(engine.data_path.name + ".journal"))
data = engine.finish()
def kind(d, name):
    return sorted(map(list, d.arcs(name) or [])) if branch else sorted(d.lines(name) or [])
name = str(root / "src" / "mod.py")
print(json.dumps({
    "tap": engine._tap is not None,
    "core": engine.core,
    "streamed": [{k: sorted(map(list, v)) if branch else v for k, v in s.items()}
                 for s in streamed],
    "journal": kind(journal, name) if name in journal.measured_files() else [],
    "final": kind(data, name),
}))
"""

MOD = """
def f(x):
    if x > 0:
        return 1
    return -1


def g():
    total = 0
    for i in range(3):
        total += i
    return total
"""


@pytest.mark.parametrize("mode", ["lines", "branch"])
def test_an_engine_streams_from_the_tap_exactly_what_coverage_records(
    tmp_path: Path, mode: str
) -> None:
    """Each flush streams what is new, nothing twice, nothing lost across coverage's own flush;
    the journal holds it all before the end; the end result is coverage's own."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "mod.py").write_text(textwrap.dedent(MOD))
    out = run_python("-c", ENGINE_SCRIPT, str(tmp_path), mode)
    got = json.loads(out)
    assert got["tap"], got["core"]
    name = str(tmp_path / "src" / "mod.py")
    streamed = [
        [tuple(i) if isinstance(i, list) else i for i in s.get(name, [])] for s in got["streamed"]
    ]
    assert streamed[0]  # the import, f(1)
    assert streamed[2]  # f(-1)
    assert streamed[3]  # g()
    assert streamed[1] == []  # f(1) again: nothing new
    before = streamed[0] + streamed[2]
    assert len(before) == len(set(before))  # nothing given twice by the tap
    # coverage's own flush (mid-run) passes everything again; g() is new
    final = [tuple(i) if isinstance(i, list) else i for i in got["final"]]
    assert set(streamed[3]) - set(before)
    assert set(before) < set(final)
    assert sorted({i for s in streamed for i in s}) == sorted(final)
    journal = [tuple(i) if isinstance(i, list) else i for i in got["journal"]]
    assert sorted(journal) == sorted(final)
    if mode == "lines":
        assert final == [2, 3, 4, 5, 8, 9, 10, 11, 12]
    else:
        assert (3, 5) in final
        assert (3, 4) in final

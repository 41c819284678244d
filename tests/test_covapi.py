"""The doors to coverage.py's and xdist's internals: the start check names every capability and
the path it takes; a missing internal gives that capability's named fallback, never an error.

The tox ``min`` and ``newest`` environments run these on the lowest and the newest coverage.py
and pytest-xdist allowed, so a release that moved what a door reads fails here by name.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import coverage
import execnet
import pytest
from coverage import Coverage
from coverage.python import PythonFileReporter

from pytest_distcov.covapi import schema
from pytest_distcov.covapi.check import CONTEXT_BATCH, JOURNAL, PARSES, PROBES, TAP, check
from pytest_distcov.covapi.collector import open_tracer_sets
from pytest_distcov.remote import launch, xdist_door
from pytest_distcov.remote.fleet import RemoteHooks
from pytest_distcov.sinks.parses import ParseCache, share_parses

from .helpers import run_pytest, run_python

ALL = [JOURNAL, TAP, PARSES, PROBES, CONTEXT_BATCH]
VERSION = f"coverage.py {coverage.__version__}"


@pytest.fixture
def started(tmp_path: Path) -> Coverage:
    """A real Coverage, started and stopped again (its collector and data object made)."""
    cov = Coverage(data_file=str(tmp_path / ".coverage"))
    cov.start()
    cov.stop()
    return cov


def test_the_start_check_names_each_capability_and_the_path_it_takes() -> None:
    internals = check(Coverage(data_file=None))
    assert [c.name for c in internals.capabilities] == ALL
    assert internals.coverage_version == coverage.__version__
    assert internals.python.endswith(".".join(map(str, sys.version_info[:3])))
    paths = {name: internals.describe(name) for name in ALL}
    assert paths == {
        JOURNAL: "journal: writes only new data, journaled after each test",
        TAP: "tap: reads the tracer's sets in place",
        PARSES: "parse sharing: on",
        PROBES: "probes: can start, naming files as coverage.py does",
        CONTEXT_BATCH: "context batch: one insert a table into coverage.py's schema",
    }, VERSION
    assert internals.fallbacks() == []


def test_a_started_coverage_passes_the_check_and_opens_its_tracer_sets(started: Coverage) -> None:
    assert check(started).fallbacks() == [], VERSION
    sets = open_tracer_sets(started)
    assert not isinstance(sets, str), f"{VERSION}: {sets}"
    assert sets.kind == "lines"


def test_the_context_batch_writes_the_schema_the_installed_coverage_makes() -> None:
    """covapi.schema writes coverage.py's tables itself: the schema version and every column
    it names are the installed coverage.py's own, as its SCHEMA text declares them and as a
    no_disk CoverageData makes them, on a shared in-memory database a second connection
    opens. A coverage.py that changed any of it fails here by name (and the start check
    falls back to add_lines per context)."""
    import sqlite3

    from coverage import CoverageData, sqldata

    assert sqldata.SCHEMA_VERSION == schema.SCHEMA_VERSION, VERSION
    declared: dict[str, tuple[str, ...]] = {}
    with sqlite3.connect(":memory:") as con:
        con.executescript(sqldata.SCHEMA)
        for table in schema.TABLES:
            declared[table] = tuple(r[1] for r in con.execute(f"PRAGMA table_info({table})"))
    con.close()
    assert declared == schema.TABLES, VERSION
    batch = CoverageData(no_disk=True)
    batch.add_lines({})
    assert batch.data_filename().startswith("file:"), VERSION
    assert "mode=memory" in batch.data_filename(), VERSION
    assert schema.missing() == [], VERSION
    batch.close(force=True)


def test_a_changed_schema_gives_add_lines_per_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """A coverage.py of another schema (simulated: the door expects version 8, or another
    column): the check names it and the fallback, and add_contexts writes through add_lines,
    which gives the same data."""
    from coverage import CoverageData

    from pytest_distcov.data.merge import add_contexts

    monkeypatch.setattr(schema, "SCHEMA_VERSION", 8)
    internals = check(Coverage(data_file=None))
    assert internals.fallbacks() == [
        f"context batch: add_lines per context ({VERSION}: lacks data schema version 8 (it has 7))"
    ]
    monkeypatch.undo()
    monkeypatch.setitem(schema.TABLES, "line_bits", ("file_id", "context_id", "bits"))
    assert check(Coverage(data_file=None)).describe(CONTEXT_BATCH) == (
        f"context batch: add_lines per context ({VERSION}: lacks table"
        " line_bits(file_id, context_id, bits) (it has (file_id, context_id, numbits)))"
    )
    data = CoverageData(no_disk=True)
    added: list[object] = []
    real = CoverageData.add_lines
    monkeypatch.setattr(
        CoverageData, "add_lines", lambda self, lines: (added.append(lines), real(self, lines))
    )
    add_contexts(data, {"t.py::a|run": {"/p/f.py": {1, 2}}, None: {"/p/g.py": {3}}}, arcs=False)
    assert added[1:] == [{"/p/f.py": {1, 2}}, {"/p/g.py": {3}}]  # (after the batch's {})
    assert data.lines("/p/f.py") == [1, 2]
    assert sorted(data.measured_contexts()) == ["", "t.py::a|run"]
    data.close(force=True)


def test_the_header_names_the_context_batch_fallback_with_contexts_only(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_a="def test_a():\n    assert True\n")
    pytester.makepyfile(
        simulate="from pytest_distcov.covapi import schema\nschema.SCHEMA_VERSION = 99\n"
    )
    plain = run_pytest(pytester, "--distcov", "-p", "no:randomly", "-p", "simulate")
    assert plain.ret == 0, plain.stdout.str()
    assert "context batch" not in plain.stdout.str()
    per_test = run_pytest(
        pytester, "--distcov", "--distcov-context=test", "-p", "no:randomly", "-p", "simulate"
    )
    assert per_test.ret == 0, per_test.stdout.str()
    per_test.stdout.fnmatch_lines(
        [f"distcov: context batch: add_lines per context ({VERSION}: lacks data schema version 99*"]
    )


class _Lacking(Coverage):
    """A coverage.py release without one of the methods a door calls (set per test)."""


@pytest.mark.parametrize(
    ("how", "attribute", "off"),
    [
        ("instance", "_collector", {TAP}),
        ("instance", "_data", {JOURNAL, TAP, PROBES}),
        ("instance", "_inorout", {PROBES}),
        ("instance", "_file_mapper", {PROBES}),
        ("instance", "_inited_for_start", {PROBES}),
        ("class", "_get_file_reporter", {PARSES}),
        ("class", "_exclude_regex", {PARSES}),
        ("class", "_init", {PROBES}),
        ("class", "_init_for_start", {PROBES}),
        ("class", "_post_save_work", {PROBES}),
    ],
)
def test_a_missing_internal_gives_the_named_fallback(
    how: str, attribute: str, off: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if how == "instance":
        cov = Coverage(data_file=None)
        assert attribute in vars(cov), "the check reads an attribute Coverage() no longer sets"
        delattr(cov, attribute)  # as in a release that renamed it
    else:
        monkeypatch.setattr(_Lacking, attribute, None, raising=False)
        cov = _Lacking(data_file=None)
    internals = check(cov)
    assert {c.name for c in internals.capabilities if not c.on} == off
    for name in off:
        capability = internals[name]
        assert capability.path == capability.fallback_path
    line = internals.describe(JOURNAL if JOURNAL in off else next(iter(off)))
    assert f"lacks Coverage.{attribute}" in line, line
    assert internals.fallbacks() == [internals.describe(n) for n in ALL if n in off]


def test_a_missing_context_label_turns_the_journal_and_the_tap_off(started: Coverage) -> None:
    data: Any = vars(started)["_data"]
    del data._current_context
    internals = check(started)
    assert not internals[JOURNAL].on
    assert "lacks CoverageData._current_context" in internals.describe(JOURNAL)
    assert internals[TAP].path == "unavailable, flushes with switch_context"
    assert "the tap needs the journal" in internals.describe(TAP)


def test_a_collector_of_another_shape_gives_the_taps_fallback(started: Coverage) -> None:
    real = vars(started)["_collector"]
    try:
        started._collector = types.SimpleNamespace(data={})  # type: ignore[assignment]
        assert "lacks Collector.flush_data" in check(started).describe(TAP)
        reason = open_tracer_sets(started)
        assert isinstance(reason, str), reason
        assert "lacks" in reason
    finally:
        started._collector = real


def test_a_reporter_that_keeps_its_parse_elsewhere_turns_parse_sharing_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A coverage.py whose reporter keeps its parser under another name (simulated on the
    real class): the check says parse sharing is off, and reports parse as coverage does."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mod.py").write_text("def f(x):\n    return x\n\n\nf(1)\n")
    subprocess.run([sys.executable, "-m", "coverage", "run", "mod.py"], cwd=tmp_path, check=True)
    original = PythonFileReporter.parser

    def renamed(self: Any) -> Any:
        if "_parse_v2" not in vars(self):
            self._parse_v2 = original.fget(self)  # type: ignore[misc]
        return self._parse_v2

    monkeypatch.setattr(PythonFileReporter, "parser", property(renamed))
    cov = Coverage()
    cov.load()
    assert "lacks PythonFileReporter._parser" in check(cov).describe(PARSES)
    shared = share_parses(cov, ParseCache(tmp_path / "parses"))
    assert not shared.active
    out = io.StringIO()
    assert cov.report(file=out) == 100.0
    assert "mod.py" in out.getvalue()
    assert shared.parsed == 0


ENGINE_SCRIPT = """
import json, sys
from pathlib import Path
from pytest_distcov.engine import measure
from pytest_distcov.engine.measure import Engine, MeasureSpec

real = measure.check

def without_collector(cov):
    # the start check meets a coverage.py without Coverage._collector (then put back)
    saved = vars(cov).pop("_collector")
    try:
        return real(cov)
    finally:
        cov._collector = saved

measure.check = without_collector
root = Path(sys.argv[1])
sys.path.insert(0, str(root))
spec = MeasureSpec(source=(str(root),), branch=None, config_file=False, engine="coverage")
engine = Engine(spec, root / "data", "t", subprocesses=False, partial=True)
engine.start()
import mod
engine.flush()
mod.f(2)
engine.flush()
data = engine.finish()
print(json.dumps({
    "tapped": engine.tapped,
    "fallbacks": engine.fallbacks,
    "lines": sorted(data.lines(str(root / "mod.py")) or []),
}))
"""


def test_an_engine_without_the_collector_flushes_with_switch_context(tmp_path: Path) -> None:
    (tmp_path / "mod.py").write_text("def f(x):\n    if x > 1:\n        return 2\n    return 1\n")
    got = json.loads(run_python("-c", ENGINE_SCRIPT, str(tmp_path)))
    assert not got["tapped"]
    assert got["fallbacks"] == [
        f"tap: unavailable, flushes with switch_context ({VERSION}: lacks Coverage._collector)"
    ]
    assert got["lines"] == [1, 2, 3]


SIMULATE_PLUGIN = """
from pytest_distcov.engine import measure

real = measure.check


def without_file_reporter(cov):
    cov._get_file_reporter = None  # as a release that renamed it (then put back)
    try:
        return real(cov)
    finally:
        del cov._get_file_reporter


measure.check = without_file_reporter
"""


def test_the_header_names_a_fallback_and_only_then(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a="def test_a():\n    assert True\n")
    pytester.makepyfile(simulate=SIMULATE_PLUGIN)
    normal = run_pytest(pytester, "--distcov", "-p", "no:randomly")
    assert normal.ret == 0, normal.stdout.str()
    assert "unavailable" not in normal.stdout.str()
    assert "parse sharing" not in normal.stdout.str()
    simulated = run_pytest(pytester, "--distcov", "-p", "no:randomly", "-p", "simulate")
    assert simulated.ret == 0, simulated.stdout.str()
    simulated.stdout.fnmatch_lines(
        [
            "distcov: measuring lines of *",
            "distcov: parse sharing: off, each report parses every file"
            f" ({VERSION}: lacks Coverage._get_file_reporter)",
        ]
    )


# -- xdist's and execnet's internals ------------------------------------------------------------


def _node(python: str) -> Any:
    return types.SimpleNamespace(
        gateway=types.SimpleNamespace(id="gw0", spec=execnet.XSpec(f"popen//python={python}"))
    )


def test_the_xdist_door_reroutes_restarts_on_the_installed_xdist() -> None:
    import xdist

    assert xdist_door.reroute_obstacle() == "", xdist.__version__
    node = _node("/launchers/ssh-1")
    assert xdist_door.worker_python(node) == "/launchers/ssh-1"
    xdist_door.reroute(node, "/launchers/ssh-2")
    assert xdist_door.worker_python(node) == "/launchers/ssh-2"
    assert str(node.gateway.spec.python) == "/launchers/ssh-2"


def _hooks(obstacle: str) -> tuple[RemoteHooks, Any]:
    dead = types.SimpleNamespace(spec=types.SimpleNamespace(label="a"), launcher="/ssh-1")
    live = types.SimpleNamespace(spec=types.SimpleNamespace(label="b"), launcher="/ssh-2")
    fleet = types.SimpleNamespace(hosts=[dead, live], ping=lambda host: host is live)
    hooks = RemoteHooks(fleet)  # type: ignore[arg-type]
    hooks.reroute_obstacle = obstacle
    hooks.worker_hosts["gw0"] = dead  # type: ignore[assignment]
    return hooks, _node("/ssh-1")


def test_a_dead_hosts_workers_move_where_xdist_can_be_told() -> None:
    hooks, node = _hooks("")
    hooks.pytest_testnodedown(node, error="gone")
    assert xdist_door.worker_python(node) == "/ssh-2"
    assert hooks.notes == ["host a is unreachable: its workers continue on b"]


def test_without_xdists_restart_internals_a_dead_hosts_workers_stay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from xdist.dsession import DSession

    monkeypatch.delattr(DSession, "_clone_node")
    obstacle = xdist_door.reroute_obstacle()
    assert "restarts a worker otherwise" in obstacle
    hooks, node = _hooks(obstacle)
    hooks.pytest_testnodedown(node, error="gone")
    assert xdist_door.worker_python(node) == "/ssh-1"  # not moved
    assert hooks.notes == [
        f"host a is unreachable: its workers cannot be moved to another host ({obstacle});"
        " xdist restarts them there, up to --maxworkerrestart"
    ]


class _Channel:
    def __init__(self, first: object) -> None:
        self.first = first

    def receive(self, timeout: float | None = None) -> object:
        return self.first


def test_the_launcher_reads_xdists_first_message_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = ({"workerid": "gw0"}, ["-x"], {}, ["/p"])
    assert launch.read_first_message(message) == dict(
        zip(launch.XDIST_FIRST_MESSAGE, message, strict=True)
    )
    for other in (message[:3], [*message], ({"workerid": "gw0"}, "-x", {}, None), None):
        assert launch.read_first_message(other) is None
    ran: list[object] = []
    monkeypatch.setattr(launch, "_run_xdist_worker", lambda channel, first: ran.append(first))
    launch.main(_Channel(message))  # a local worker: the message as it came
    unknown = ({"workerid": "gw0"}, ["-x"], {}, ["/p"], "a new field")
    launch.main(_Channel(unknown))
    assert ran == [message, unknown]
    remote = ({"workerid": "gw0", "distcov_remote": {}}, ["-x"], {}, ["/p"], "a new field")
    with pytest.raises(RuntimeError, match="does not know this pytest-xdist's first message"):
        launch.main(_Channel(remote))


def test_the_installed_xdist_sends_the_first_message_the_launcher_knows() -> None:
    """xdist's own ``WorkerController.setup``, on stand-ins: what it sends the worker module
    first is what the launcher reads by name."""
    from xdist.workermanage import WorkerController

    sent: list[object] = []
    channel = types.SimpleNamespace(send=sent.append, setcallback=lambda *a, **k: None)
    gateway = types.SimpleNamespace(
        id="gw0", spec=execnet.XSpec("popen"), _rinfo=lambda: None, remote_exec=lambda m: channel
    )
    hook = types.SimpleNamespace(
        pytest_configure_node=lambda node: None, pytest_xdist_getremotemodule=lambda: launch
    )
    controller = types.SimpleNamespace(
        gateway=gateway,
        config=types.SimpleNamespace(
            invocation_params=types.SimpleNamespace(args=("-x",)), hook=hook
        ),
        nodemanager=types.SimpleNamespace(roots=[]),
        workerinput={"workerid": "gw0"},
        putevent=None,
        log=lambda *a: None,
    )
    WorkerController.setup(controller)  # type: ignore[arg-type]
    assert len(sent) == 1
    fields = launch.read_first_message(sent[0])
    assert fields is not None, sent
    assert fields["workerinput"] == {"workerid": "gw0"}
    assert fields["args"] == ["-x"]


def test_paths_are_remapped_as_coverage_combine_does_or_the_note_says_why_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pytest-distcov combine`'s door to coverage.files.PathAliases (see covapi.paths)."""
    import coverage.files

    from pytest_distcov.covapi.paths import remapper
    from pytest_distcov.errors import SettingsError

    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "a.py").write_text("")
    monkeypatch.chdir(tmp_path)
    rc = tmp_path / ".coveragerc"
    rc.write_text("[run]\nbranch = False\n")
    assert remapper(Coverage(data_file=None, config_file=str(rc))) == (None, "")
    rc.write_text("[paths]\nsource =\n    src/pkg/\n    /ci/*/pkg/\n")
    remap, note = remapper(Coverage(data_file=None, config_file=str(rc)))
    assert (remap is not None, note) == (True, "")
    assert remap is not None
    assert remap("/ci/work/pkg/a.py") == str(tmp_path / "src" / "pkg" / "a.py")
    assert remap("/ci/work/pkg/gone.py") == "/ci/work/pkg/gone.py"  # coverage maps what exists
    rc.write_text("[paths]\nsource =\n    src/pkg/\n    /ci/*\n")
    with pytest.raises(SettingsError, match=r"^\[paths\] in the coverage configuration: "):
        remapper(Coverage(data_file=None, config_file=str(rc)))
    monkeypatch.delattr(coverage.files, "PathAliases")
    assert remapper(Coverage(data_file=None, config_file=str(rc)))[1].startswith(
        f"[paths] is not applied: coverage.py {coverage.__version__} lacks"
        " coverage.files.PathAliases"
    )


def test_the_branch_markers_share_the_parsers_ast() -> None:
    """Marking reuses the AST coverage.py's parser made (``PythonParser._ast_root``, read
    between its parse and its arc analysis) rather than parsing the module a second time; a
    coverage.py that keeps it no more makes marking parse again (and this test fail)."""
    import ast

    from pytest_distcov.covapi.parser import exits_of
    from pytest_distcov.engine.marks import plan

    source = "def f(x):\n    if x:\n        return 1\n    return 2\n"
    exits, counts, tree = exits_of(source, "m.py")
    assert type(tree) is ast.Module
    assert ast.dump(tree) == ast.dump(ast.parse(source))  # the arc analysis left it as it was
    assert exits[2] == {3, 4}
    assert counts[2] == 2
    assert exits_of(source, "m.py")[2] is not tree  # a tree of its own each time: marking
    # changes it, and must never change one coverage.py keeps
    marked = plan(source, "m.py")
    assert marked.branches == {2: frozenset({3, 4})}
    assert len(marked.arcs) == 2  # a marker for each way of line 2, in the shared tree


SUBPROCESS_PATCH = """
import os, sys
from coverage import Coverage
from pytest_distcov.covapi.subprocesses import PROCESS_CONFIG, measure_subprocesses, missing
os.chdir(sys.argv[1])
cov = Coverage(data_file=None)
assert not missing(cov)
undo = measure_subprocesses(cov)
ours = os.environ[PROCESS_CONFIG]
undo()
assert PROCESS_CONFIG not in os.environ
cov.start()
cov.stop()
print(os.environ.get(PROCESS_CONFIG) == ours)
"""


def test_patch_subprocess_hands_on_what_coverage_start_does(tmp_path: Path) -> None:
    """Our engines' ``patch = subprocess`` (covapi.subprocesses) sets what coverage.py's own
    ``Coverage.start`` sets for it, and undoes it; a coverage.py that does otherwise fails
    this test (and its subprocesses would not be measured under our engines)."""
    (tmp_path / ".coveragerc").write_text("[run]\npatch = subprocess\nbranch = true\n")
    assert run_python("-c", SUBPROCESS_PATCH, str(tmp_path)).strip() == "True"


def test_undoing_the_subprocess_patch_leaves_a_value_set_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's undo restores the variable only where it still holds the engine's value:
    one a test (or coverage.py) set meanwhile stays."""
    from pytest_distcov.covapi.subprocesses import PROCESS_CONFIG, measure_subprocesses

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(PROCESS_CONFIG, "before")
    undo = measure_subprocesses(Coverage(data_file=None))
    assert os.environ[PROCESS_CONFIG] not in ("before", "")
    undo()
    assert os.environ[PROCESS_CONFIG] == "before"
    undo = measure_subprocesses(Coverage(data_file=None))
    os.environ[PROCESS_CONFIG] = "theirs"
    undo()
    assert os.environ[PROCESS_CONFIG] == "theirs"


def test_a_process_start_up_that_reads_another_variable_is_a_missing_capability(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The variable's name is checked in coverage.py's own start-up code: a coverage.py that
    reads its configuration from another variable makes the start check name it (such a run
    keeps coverage.py's tracer, which patches by itself)."""
    import coverage.control

    from pytest_distcov.covapi.subprocesses import PROCESS_CONFIG, missing

    cov = Coverage(data_file=None)
    assert missing(cov) == []

    def process_startup() -> None:
        os.getenv("COVERAGE_PROCESS_SETTINGS")

    monkeypatch.setattr(coverage.control, "process_startup", process_startup)
    assert missing(cov) == [PROCESS_CONFIG]

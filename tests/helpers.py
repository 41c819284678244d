"""Helpers for acceptance tests: real pytest sessions in subprocesses, exact data comparison.

Every acceptance test runs pytest in a subprocess (``pytester.runpytest_subprocess``) so the
plugin under test owns its process's tracer; data files are compared with coverage's public
``CoverageData`` API.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from coverage import CoverageData

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "shapes"

#: Seconds any single pytest subprocess may take before the test fails instead of hanging.
RUN_TIMEOUT = 240


def run_python(*args: str) -> str:
    """``python ARGS`` in a fresh interpreter (this one); its standard output."""
    import subprocess

    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, check=True
    ).stdout


def run_pytest(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest in a subprocess, in ``pytester.path``."""
    return pytester.runpytest_subprocess(*args, timeout=RUN_TIMEOUT)


def serial_reference(
    pytester: pytest.Pytester,
    *pytest_args: str,
    branch: bool = False,
    source: str | None = None,
    core: str | None = None,
) -> Path:
    """``coverage run -m pytest`` of the same suite: the result every mode must equal (with
    ``core``, that coverage.py core: ``COVERAGE_CORE``)."""
    data = pytester.path / "serial.coverage"
    cmd = [sys.executable, "-m", "coverage", "run", f"--data-file={data}"]
    if branch:
        cmd.append("--branch")
    if source:
        cmd.append(f"--source={source}")
    cmd += ["-m", "pytest", "-p", "no:distcov", "-p", "no:xdist", "-p", "no:cacheprovider"]
    with pytest.MonkeyPatch.context() as patch:
        if core:
            patch.setenv("COVERAGE_CORE", core)
        result = pytester.run(*cmd, *pytest_args, timeout=RUN_TIMEOUT)
    assert result.ret in (0, 1), result.stdout.str() + result.stderr.str()
    if list(pytester.path.glob("serial.coverage.*")):  # parallel files, e.g. patch = subprocess
        combined = pytester.run(
            sys.executable, "-m", "coverage", "combine", f"--data-file={data}", timeout=RUN_TIMEOUT
        )
        assert combined.ret == 0, combined.stdout.str() + combined.stderr.str()
    assert data.exists()
    return data


#: A test's line in a verbose xdist run: ``[gw1] [ 50%] PASSED tests/test_a.py::test_x``.
_WORKER_LINE = re.compile(r"^\[(gw\d+)\] \[ *\d+%\] [A-Z]+ (\S+)")

#: Runs the given tests, in the given order, and deselects the rest (a plugin outside what
#: is measured: the reference run must execute nothing that the run under test does not).
_ORDER_PLUGIN = """
import json, os
import pytest


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    with open(os.environ["DISTCOV_TEST_ORDER"]) as f:
        wanted = json.load(f)
    by_id = {item.nodeid: item for item in items}
    unknown = [w for w in wanted if w not in by_id]
    assert not unknown, f"not collected: {unknown}"
    config.hook.pytest_deselected(items=[i for i in items if i.nodeid not in set(wanted)])
    items[:] = [by_id[w] for w in wanted]
"""


def order_independent_arcs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Measure branches with ctrace in this test's runs, from Python 3.14 on.

    For tests that compare the arcs of runs which split the tests differently (other workers,
    other shards, a serial run) and whose subject is not the measurement itself: sysmon, the
    default core for branches from 3.14, records arcs that depend on the order in which code
    first runs in each process (see :func:`per_worker_reference`), ctrace does not. Before
    3.14 ctrace measures branches anyway, so this changes nothing there. The environment
    variable reaches every local pytest the test starts, not remote hosts.
    """
    if sys.version_info >= (3, 14):
        monkeypatch.setenv("COVERAGE_CORE", "ctrace")


def sysmon_branches(result: pytest.RunResult) -> bool:
    """Whether a run measured branches with coverage.py's sysmon core (Python 3.14+)."""
    out = result.stdout.str()
    return "measuring lines and branches" in out and "the sysmon core" in out


def worker_orders(result: pytest.RunResult) -> dict[str, list[str]]:
    """The tests each xdist worker ran, in its order, read from a ``-v`` run's output."""
    orders: dict[str, list[str]] = {}
    for line in result.outlines:
        match = _WORKER_LINE.match(line)
        if match:
            orders.setdefault(match[1], []).append(match[2])
    return orders


def per_worker_reference(
    pytester: pytest.Pytester,
    result: pytest.RunResult,
    *pytest_args: str,
    source: str | None = None,
) -> Path:
    """The union of serial ``coverage run --branch -m pytest`` runs, one per xdist worker of
    ``result`` (a ``-v`` run), each running that worker's tests in that worker's order.

    The reference for a multi-worker run that measured branches with the sysmon core: what
    sysmon records of a process depends on the order in which code first runs in it, because
    coverage.py (7.17.1+, ``coverage/sysmon.py``, ``sysmon_line_arcs``) adds an arc from the
    previous line whose LINE event fired in the same code object, and each LINE event is
    disabled after its first firing. Lines already seen earlier in the process leave no trace,
    so the recorded "sequential" arcs are the first-execution trails: a serial run and a
    reversed serial run of the same suite already differ (arcs missing or never executed, and
    even a branch reported partial in one order and complete in the other), and so do xdist
    workers, which each see a part of the suite. What each worker's process records is exactly
    what a serial run of its tests in its order records, so their union is what combining the
    workers' data must give: nothing lost, nothing added.
    """
    orders = worker_orders(result)
    assert len(orders) > 1, f"no worker lines in a -v run: {result.outlines[-20:]}"
    plugin_dir = pytester.path / "_order_plugin"
    plugin_dir.mkdir(exist_ok=True)
    (plugin_dir / "distcov_test_order.py").write_text(_ORDER_PLUGIN)
    data = pytester.path / "per-worker.coverage"
    for worker, tests in sorted(orders.items()):
        order_file = plugin_dir / f"{worker}.json"
        order_file.write_text(json.dumps(tests))
        cmd = [sys.executable, "-m", "coverage", "run", f"--data-file={data}", "--parallel-mode"]
        cmd.append("--branch")
        # Out of what is measured. --omit replaces the project's [run] omit: these projects
        # have none.
        cmd.append(f"--source={source}" if source else f"--omit={plugin_dir}/*")
        cmd += ["-m", "pytest", "-p", "no:distcov", "-p", "no:xdist", "-p", "no:cacheprovider"]
        cmd += ["-p", "distcov_test_order"]
        with pytest.MonkeyPatch.context() as mp:
            path = os.environ.get("PYTHONPATH")
            mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(plugin_dir), path])))
            mp.setenv("DISTCOV_TEST_ORDER", str(order_file))
            ran = pytester.run(*cmd, *pytest_args, timeout=RUN_TIMEOUT)
        assert ran.ret in (0, 1), ran.stdout.str() + ran.stderr.str()
        outcomes = ran.parseoutcomes()
        run = sum(n for k, n in outcomes.items() if k not in {"deselected", "warnings"})
        assert run == len(tests), (worker, outcomes, len(tests))
    combined = pytester.run(
        sys.executable, "-m", "coverage", "combine", f"--data-file={data}", timeout=RUN_TIMEOUT
    )
    assert combined.ret == 0, combined.stdout.str() + combined.stderr.str()
    return data


@dataclass
class DataDiff:
    only_left: dict[str, list[object]]
    only_right: dict[str, list[object]]
    files_only_left: list[str]
    files_only_right: list[str]

    def __bool__(self) -> bool:
        return bool(
            self.only_left or self.only_right or self.files_only_left or self.files_only_right
        )


def load(path: Path | str) -> CoverageData:
    data = CoverageData(basename=str(path))
    data.read()
    return data


def measured(path: Path | str, *, arcs: bool) -> dict[str, set[object]]:
    data = load(path)
    try:
        if arcs:
            assert data.has_arcs(), f"{path} has no arc data"
        out: dict[str, set[object]] = {}
        for f in data.measured_files():
            items = data.arcs(f) if arcs else data.lines(f)
            out[os.path.realpath(f)] = set(items or [])
        return out
    finally:
        data.close(force=True)


def by_context(path: Path | str) -> set[tuple[str, str, object]]:
    """Every (context, file, line or arc) of the data file at ``path``."""
    data = load(path)
    try:
        rows: set[tuple[str, str, object]] = set()
        for context in data.measured_contexts():
            data.set_query_contexts([f"^{re.escape(context)}$"])
            for name in data.measured_files():
                items = (data.arcs(name) if data.has_arcs() else data.lines(name)) or ()
                rows.update((context, name, item) for item in items)
        return rows
    finally:
        data.close(force=True)


def diff_data(left: Path | str, right: Path | str, *, arcs: bool = False) -> DataDiff:
    """File by file, line by line (arc by arc) difference of two data files."""
    a, b = measured(left, arcs=arcs), measured(right, arcs=arcs)
    only_left = {f: sorted(a[f] - b[f], key=str) for f in a.keys() & b.keys() if a[f] - b[f]}
    only_right = {f: sorted(b[f] - a[f], key=str) for f in a.keys() & b.keys() if b[f] - a[f]}
    return DataDiff(only_left, only_right, sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys()))


def assert_same_data(got: Path | str, want: Path | str, *, arcs: bool = False) -> None:
    diff = diff_data(got, want, arcs=arcs)
    assert not diff, f"combined data differs from the reference: {diff}"
    assert measured(got, arcs=arcs), "no data at all"


def report_view(data_file: Path | str, project: Path | str) -> dict[str, dict[str, list[object]]]:
    """What coverage's JSON report shows of a data file: per file, the statements executed and
    missing (multi-line statements folded to their first line) and the branches, if any.

    Run in the project's directory, so that its coverage configuration applies.
    """
    from coverage import Coverage

    out = Path(project) / f"report-{Path(data_file).name.lstrip('.')}.json"
    cwd = os.getcwd()
    os.chdir(project)
    try:
        cov = Coverage(data_file=str(data_file))
        cov.load()
        cov.json_report(outfile=str(out), ignore_errors=True)
    finally:
        os.chdir(cwd)
    files = json.loads(out.read_text())["files"]
    return {
        os.path.realpath(os.path.join(project, name)): {
            k: info[k] for k in REPORT_KEYS if k in info
        }
        for name, info in files.items()
    }


REPORT_KEYS = ("executed_lines", "missing_lines", "executed_branches", "missing_branches")


def assert_same_report(got: Path | str, want: Path | str, project: Path | str) -> None:
    """coverage's reports of two data files agree file by file, line by line."""
    a, b = report_view(got, project), report_view(want, project)
    assert a, "nothing to report"
    diffs = {}
    for name in sorted(a.keys() | b.keys()):
        mine, theirs = a.get(name, {}), b.get(name, {})
        differ = {
            k: (mine.get(k), theirs.get(k)) for k in REPORT_KEYS if mine.get(k) != theirs.get(k)
        }
        if differ:
            diffs[name] = differ
    assert not diffs, f"reports differ (got, want): {diffs}"


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real, small file system (a tmpfs of ``size``) mounted on ``where`` for the block, then
    unmounted. Needs root: skipped without it, but in CI (``CI`` set) it must be there."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        why = f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}"
        if os.environ.get("CI"):
            pytest.fail(f"{why} (the full-disk tests must run in CI: run them as root)")
        pytest.skip(why)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)

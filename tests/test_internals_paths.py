"""On the installed coverage.py (the tox ``min`` and ``newest`` environments run this too), the
two places that read coverage.py's internals take their fast path, not their fallback.

Both fall back silently by design (a user's run stays correct, only slower), so only a test
that asserts the path taken notices a coverage.py release that moved what they read.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import coverage
import pytest
from coverage import Coverage
from coverage.collector import Collector

from pytest_distcov.covapi.collector import packing_matches
from pytest_distcov.sinks.parses import ParseCache, SharedParses, share_parses

from .helpers import run_python

ENGINE_SCRIPT = """
import json, sys
from pathlib import Path
from pytest_distcov.engine.measure import Engine, MeasureSpec

root, branch = Path(sys.argv[1]), sys.argv[2] == "branch"
spec = MeasureSpec(source=(str(root),), branch=branch or None, config_file=False,
                   engine="coverage", context=None)
engine = Engine(spec, root / "data", "t", subprocesses=False, partial=True)
engine.start()
engine.flush()
print(json.dumps({"tapped": engine.tapped, "core": engine.core, "notes": engine.notes}))
engine.finish()
"""


def test_the_installed_coverage_packs_arcs_as_the_tap_reads_them() -> None:
    assert packing_matches(Collector), coverage.__version__


@pytest.mark.parametrize("mode", ["lines", "branch"])
def test_the_per_test_flush_reads_the_tracer_in_place_on_the_installed_coverage(
    tmp_path: Path, mode: str
) -> None:
    """The engine's tap is active on every coverage.py core this Python has by default."""
    got = json.loads(run_python("-c", ENGINE_SCRIPT, str(tmp_path), mode))
    assert got["tapped"], f"coverage {coverage.__version__}, core {got['core']}: {got['notes']}"


def test_a_contexts_run_flushes_with_coverages_switch_not_the_tap(tmp_path: Path) -> None:
    """The other path, so that ``tapped`` is seen to say False too."""
    script = ENGINE_SCRIPT.replace("context=None", 'context="test"')
    got = json.loads(run_python("-c", script, str(tmp_path), "lines"))
    assert not got["tapped"]


MODULE = """
def f(x):
    if x:
        return 1
    return (
        2
    )


f(1)
"""


def _report(root: Path, cache: ParseCache) -> SharedParses:
    cov = Coverage(data_file=str(root / ".coverage"))
    cov.load()
    shared = share_parses(cov, cache)
    cov.report(file=io.StringIO())
    cov.json_report(outfile=str(root / "x.json"))
    shared.save()
    return shared


@pytest.mark.parametrize("branch", [False, True], ids=["lines", "branch"])
def test_reports_share_and_restore_parses_on_the_installed_coverage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, branch: bool
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mod.py").write_text(textwrap.dedent(MODULE))
    cmd = [sys.executable, "-m", "coverage", "run", *(["--branch"] if branch else []), "mod.py"]
    subprocess.run(cmd, cwd=tmp_path, check=True)
    cache_path = tmp_path / "parses"

    first = _report(tmp_path, ParseCache(cache_path))
    assert first.active, coverage.__version__
    # Two reports, one parse: the second restores it (or, where coverage.py keeps its file
    # reporters between reports, as 7.13 does, already has it).
    assert first.parsed == 1
    assert ParseCache(cache_path).knows(str(tmp_path / "mod.py"))

    second = _report(tmp_path, ParseCache(cache_path))
    assert second.parsed == 0  # the cache the first one saved: nothing parsed
    assert second.restored >= 1
    assert json.loads((tmp_path / "x.json").read_text())["totals"]["percent_covered"] < 100

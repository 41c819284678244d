"""An installed plugin that is not asked for imports nothing heavy (issue: ~150 ms a start)."""

from __future__ import annotations

import json

import pytest

from .helpers import run_pytest

#: What resolving the options of a run that does not measure may import.
LIGHT = {
    "pytest_distcov",
    "pytest_distcov.errors",
    "pytest_distcov.settings",  # the sub-package (a docstring only)
    "pytest_distcov.settings.options",
    "pytest_distcov.plugin",
    "pytest_distcov.settings.reportspec",
}

PROBE = """
import json, sys

def test_loaded():
    with open("loaded.json", "w") as f:
        json.dump(sorted(sys.modules), f)
"""


@pytest.mark.parametrize("args", [[], ["-p", "no:xdist"], ["--distcov-report=term"]])
def test_a_run_without_distcov_imports_no_role_module(
    pytester: pytest.Pytester, args: list[str]
) -> None:
    """Without --distcov only the option modules load: no coverage.py, sqlite3, controller,
    worker, engine or remote code (pytest-cov, which imports coverage on its own, is off)."""
    pytester.makepyfile(test_probe=PROBE)
    result = run_pytest(pytester, "-p", "no:cov", "-p", "no:randomly", *args)
    assert result.ret == 0, result.stdout.str()
    loaded = set(json.loads((pytester.path / "loaded.json").read_text()))
    ours = {m for m in loaded if m.split(".")[0] == "pytest_distcov"}
    assert "pytest_distcov.plugin" in ours  # the plugin is installed and was loaded
    assert ours <= LIGHT, sorted(ours - LIGHT)
    assert not {"coverage", "sqlite3", "requests", "boto3"} & loaded


def test_a_measured_run_still_loads_its_roles(pytester: pytest.Pytester) -> None:
    """The other side of the same check: with --distcov the role modules are there."""
    pytester.makepyfile(test_probe=PROBE)
    result = run_pytest(pytester, "-p", "no:cov", "-p", "no:randomly", "--distcov")
    assert result.ret == 0, result.stdout.str()
    loaded = set(json.loads((pytester.path / "loaded.json").read_text()))
    assert {
        "coverage",
        "pytest_distcov.roles.controller",
        "pytest_distcov.engine.measure",
    } <= loaded


def test_the_engine_variable_is_named_once_for_both_sides() -> None:
    """settings/options.py (every start) and remote/launch.py (stdlib only, on hosts) name it
    alike."""
    from pytest_distcov.remote import launch as remote_worker
    from pytest_distcov.settings import options

    assert options.ENGINE_ENV == remote_worker.ENGINE_ENV

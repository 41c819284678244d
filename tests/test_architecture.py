"""The package's shape: dependencies point one way, and the public surface is deliberate."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pytest_distcov

PKG = Path(pytest_distcov.__file__).parent

#: Modules that may import pytest (the roles and the plugin on top; and the probe engine, which
#: must give probes to the modules pytest's assertion rewriter executes).
PYTEST_ALLOWED = {"plugin", "controller", "worker", "options", "remote", "probes"}
#: Bottom layers: standard library (and each other) only. The remote agent and worker starter
#: run on hosts that have nothing but Python; shipping runs before anything is there.
STDLIB_ONLY = {
    "errors",
    "protocol",
    "remote_agent",
    "remote_worker",
    "reportspec",
    "shipping",
    "tempdirs",
}


def _imports(module: str) -> set[str]:
    tree = ast.parse((PKG / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


MODULES = sorted(p.stem for p in PKG.glob("*.py") if p.stem not in {"__init__", "__main__"})


@pytest.mark.parametrize("module", MODULES)
def test_pytest_only_in_the_top_layers(module: str) -> None:
    uses_pytest = any(
        i == "pytest" or i.startswith(("pytest.", "_pytest")) for i in _imports(module)
    )
    assert not uses_pytest or module in PYTEST_ALLOWED, f"{module} imports pytest"


@pytest.mark.parametrize("module", sorted(STDLIB_ONLY))
def test_bottom_layers_use_the_stdlib_only(module: str) -> None:
    third_party = {"coverage", "pytest", "execnet", "xdist", "requests"}
    imports = _imports(module)
    assert not {i.split(".")[0] for i in imports} & third_party
    assert all(i.lstrip(".") in STDLIB_ONLY or not i.startswith(".") for i in imports)


#: The one sanctioned exception: the probe engine routes the test modules that pytest's
#: assertion rewriter executes (as SlipCover's own pytest support does). probes.py keeps every
#: use of other projects' internals in one place and checks for them before it is chosen.
PRIVATE_IMPORTS_ALLOWED = {("probes", "_pytest.assertion")}  # its rewrite module


@pytest.mark.parametrize("module", MODULES)
def test_no_private_imports_of_collaborators(module: str) -> None:
    for name in _imports(module):
        if (module, name) in PRIVATE_IMPORTS_ALLOWED:
            continue
        parts = name.lstrip(".").split(".")
        if parts[0] in {"coverage", "pytest", "xdist", "execnet", "_pytest"}:
            assert not any(p.startswith("_") for p in parts), f"{module} imports {name}"
            assert name.split(".")[0] != "_pytest"
            assert name not in {"coverage.sqldata", "coverage.control", "coverage.collector"}


def test_public_names() -> None:
    assert sorted(pytest_distcov.__all__) == [
        "DataFileError",
        "DistCovError",
        "NothingToReport",
        "ProtocolError",
        "PytestDistCovWarning",
        "RemoteError",
        "ReportError",
        "SettingsError",
        "StoreError",
        "__version__",
    ]
    assert pytest_distcov.__version__
    assert pytest_distcov.PytestDistCovWarning.__module__ == "pytest_distcov"

"""The dependency floors pyproject.toml declares are the versions tox's ``min`` environment
installs (constraints-min.txt), and that environment really runs on them."""

from __future__ import annotations

import importlib.metadata
import os
import re

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .helpers import ROOT

try:
    import tomllib
except ImportError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

#: the extras whose packages the plugin itself imports (not the test tools)
RUNTIME_EXTRAS = ("s3", "fast")


def _runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in RUNTIME_EXTRAS:
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def _floor(requirement: Requirement) -> Version:
    """The lowest version a requirement allows: its ``>=`` bound, or ``==X.Y.*``'s X.Y.0."""
    floors = []
    for spec in requirement.specifier:
        if spec.operator == ">=":
            floors.append(Version(spec.version))
        elif spec.operator == "==" and spec.version.endswith(".*"):
            floors.append(Version(spec.version[:-2]))
        elif spec.operator in ("==", "~="):
            floors.append(Version(spec.version))
    assert len(floors) == 1, f"{requirement}: state one floor (>=, ==X.* or ==)"
    return floors[0]


def _constraints() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for raw in (ROOT / "constraints-min.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.]*)", line)
        assert match, f"constraints-min.txt: {raw!r} is not NAME==VERSION"
        pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def test_constraints_pin_every_runtime_dependency_at_its_declared_floor() -> None:
    floors = {canonicalize_name(r.name): _floor(r) for r in _runtime_requirements()}
    assert _constraints() == floors
    for requirement in _runtime_requirements():
        assert requirement.specifier.contains(floors[canonicalize_name(requirement.name)])


@pytest.mark.skipif(
    os.environ.get("DISTCOV_MIN_ENV") != "1", reason="only in tox's min environment"
)
def test_the_min_environment_runs_on_the_floors() -> None:
    """What tox -e min installed is what constraints-min.txt pins (else it tested nothing)."""
    installed = {}
    for requirement in _runtime_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        installed[name] = Version(importlib.metadata.version(name))
    pins = _constraints()
    assert installed == {name: pins[name] for name in installed}

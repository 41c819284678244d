"""The start check: which of coverage.py's internals a run can use, and the fallback it takes.

Each capability that relies on coverage.py's internals says what it relies on; one check of
the installed coverage.py (on the engine's ``Coverage``, once, before it starts) records per
capability whether all of it is there, and so which path the run takes:

========================  ==============================  ====================================
capability                on                              fallback
========================  ==============================  ====================================
``tap``                   reads the tracer's sets         flushes with ``switch_context``
``journal``               writes only new data            every flush writes the data file
``parse sharing``         one parse a file for reports    each report parses every file
``probes``                the probe engine can start      coverage.py's tracer measures
``context batch``         one insert a table              ``add_lines`` per context
========================  ==============================  ====================================

A check made after start (the tap's, on the live collector; the journal's, on the live data
object) that finds less than this one did gives a new value with that capability off
(:meth:`CoverageInternals.fell_back`). The controller's header names every fallback taken;
where nothing falls back it says nothing more than before.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import coverage
from coverage import Coverage

from . import collector, data, parser, probes, schema

__all__ = [
    "CONTEXT_BATCH",
    "JOURNAL",
    "PARSES",
    "PROBES",
    "TAP",
    "Capability",
    "CoverageInternals",
    "check",
]

TAP = "tap"
JOURNAL = "journal"
PARSES = "parse sharing"
PROBES = "probes"
CONTEXT_BATCH = "context batch"


@dataclass(frozen=True)
class Capability:
    """One use of coverage.py's internals: what it relies on, and what was found missing."""

    name: str
    #: the internals it relies on
    needs: tuple[str, ...]
    #: the path a run takes with all of them, and without
    on_path: str
    fallback_path: str
    #: what the check found missing (or not as expected); empty when the capability is on
    missing: tuple[str, ...] = ()

    @property
    def on(self) -> bool:
        return not self.missing

    @property
    def path(self) -> str:
        """The path this run takes."""
        return self.on_path if self.on else self.fallback_path


#: name -> (on, fallback, what it relies on, the check of a Coverage)
_CAPABILITIES: dict[str, tuple[str, str, tuple[str, ...], Callable[[Coverage], list[str]]]] = {
    JOURNAL: (
        "writes only new data, journaled after each test",
        "unavailable, every flush writes the data file",
        data.JOURNAL_NEEDS,
        data.missing,
    ),
    TAP: (
        "reads the tracer's sets in place",
        "unavailable, flushes with switch_context",
        collector.TAP_NEEDS,
        collector.missing,
    ),
    PARSES: (
        "on",
        "off, each report parses every file",
        parser.PARSES_NEEDS,
        parser.missing,
    ),
    PROBES: (
        "can start, naming files as coverage.py does",
        "unavailable, coverage.py's tracer measures",
        probes.PROBES_NEEDS,
        probes.missing,
    ),
    CONTEXT_BATCH: (
        "one insert a table into coverage.py's schema",
        "add_lines per context",
        schema.BATCH_NEEDS,
        schema.missing,
    ),
}


@dataclass(frozen=True)
class CoverageInternals:
    """What the start check found: the coverage.py and Python it ran on, every capability."""

    coverage_version: str
    python: str
    capabilities: tuple[Capability, ...]

    def __getitem__(self, name: str) -> Capability:
        for capability in self.capabilities:
            if capability.name == name:
                return capability
        raise KeyError(name)

    def fell_back(self, name: str, why: str) -> CoverageInternals:
        """This value, with ``name`` off because a later check found ``why``."""
        off = [
            dataclasses.replace(c, missing=(*c.missing, why)) if c.name == name else c
            for c in self.capabilities
        ]
        return dataclasses.replace(self, capabilities=tuple(off))

    def describe(self, name: str) -> str:
        """``name``'s path, and what is missing where it falls back."""
        capability = self[name]
        line = f"{name}: {capability.path}"
        if capability.missing:
            line += f" (coverage.py {self.coverage_version}: {', '.join(capability.missing)})"
        return line

    def fallbacks(self, names: Iterable[str] | None = None) -> list[str]:
        """A line for each capability (of ``names``, or all) that falls back."""
        wanted = [c.name for c in self.capabilities] if names is None else list(names)
        return [self.describe(n) for n in wanted if not self[n].on]


def check(cov: Coverage) -> CoverageInternals:
    """Check the installed coverage.py's internals on ``cov`` (started or not); never raises.

    A ``Coverage`` lacking an attribute (a coverage.py release that renamed it, or an instance
    where it was deleted) gives that capability's fallback.
    """
    found: dict[str, list[str]] = {}
    for name, (_, _, _, missing) in _CAPABILITIES.items():
        try:
            found[name] = [f"lacks {m}" for m in missing(cov)]
        except Exception as exc:  # whatever the check met: the fallback, never an error
            found[name] = [f"check failed: {type(exc).__name__}: {exc}"]
    if found[JOURNAL]:
        found[TAP].append("the tap needs the journal")
    capabilities = tuple(
        Capability(name, needs, on, fallback, tuple(found[name]))
        for name, (on, fallback, needs, _) in _CAPABILITIES.items()
    )
    python = f"{platform.python_implementation()} {'.'.join(map(str, sys.version_info[:3]))}"
    return CoverageInternals(coverage.__version__, python, capabilities)

"""``[run] patch = subprocess`` under pytest-distcov's own engines.

coverage.py measures the Python processes a measured process starts by handing them its
configuration: ``Coverage.start`` (``coverage.patch.apply_patches``) puts
``CoverageConfig.serialize()`` into the environment variable ``COVERAGE_PROCESS_CONFIG``, which
the ``.pth`` file coverage.py installs reads in every new process (``process_startup``). The
engines that do not call ``Coverage.start`` (sys.monitoring, branch markers, probes) do the same
here, at their start: each subprocess is then measured by coverage.py itself, with the same
configuration, and writes its data file where the C tracer's would have, which the run
combines as it does then. What that relies on, none of it documented: ``Coverage.config`` and
its ``serialize``, and the variable's name. :func:`missing` is the start check; where anything
is not there, such a run is measured by coverage.py's tracer, which patches by itself.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable, Iterator

import coverage.control
from coverage import Coverage

__all__ = ["PROCESS_CONFIG", "SUBPROCESS_NEEDS", "measure_subprocesses", "missing"]

#: The variable coverage.py's process start-up reads its configuration from.
PROCESS_CONFIG = "COVERAGE_PROCESS_CONFIG"
#: What measuring subprocesses relies on, as the start check names it.
SUBPROCESS_NEEDS = ("Coverage.config.serialize", PROCESS_CONFIG)


def missing(cov: Coverage) -> list[str]:
    """What of :data:`SUBPROCESS_NEEDS` this Coverage lacks: ``serialize``, and the variable's
    name among the strings of coverage.py's process start-up (``process_startup``)."""
    gone = []
    config = getattr(cov, "config", None)
    serialize = getattr(config, "serialize", None)
    if not callable(serialize):
        gone.append("Coverage.config.serialize")
    startup = getattr(getattr(coverage.control, "process_startup", None), "__code__", None)
    if not isinstance(startup, types.CodeType) or PROCESS_CONFIG not in set(_strings(startup)):
        gone.append(PROCESS_CONFIG)
    return gone


def _strings(code: types.CodeType) -> Iterator[str]:
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _strings(const)
        elif isinstance(const, str):
            yield const


def measure_subprocesses(cov: Coverage) -> Callable[[], None]:
    """What ``Coverage.start`` does for ``patch = subprocess``: the configuration, as it is
    now, for every process started from here on. Returns what undoes it (the variable as it
    was before)."""
    before = os.environ.get(PROCESS_CONFIG)
    ours = os.environ[PROCESS_CONFIG] = cov.config.serialize()

    def undo() -> None:
        if os.environ.get(PROCESS_CONFIG) != ours:
            return  # (set again since, by a test or coverage.py: theirs stays)
        if before is None:
            os.environ.pop(PROCESS_CONFIG, None)
        else:
            os.environ[PROCESS_CONFIG] = before

    return undo

"""Branch coverage on Python 3.10 and 3.11: branch markers observed by SlipCover's probes.

coverage.py measures branches there with its C tracer, a trace function called for every
line the process runs. This engine measures them as the branch engine of 3.12 and 3.13 does
(:mod:`.branches`), with SlipCover's probes (:mod:`.probes`) where that one has line events:

* each measured module is compiled from its source with branch markers (:mod:`.marks`, the
  same marking, the same mark cache, the same checks that the code is its source's, pytest's
  assertion rewriter for test modules, the marked twins of functions imported before the
  start, coverage.py's own tracer for a file that cannot be marked:
  :class:`~pytest_distcov.engine.branches.MarkedModules`), and SlipCover puts a probe at the
  start of each of its lines, markers included, as it does for any code;
* what the probes saw is recorded as the branch engine records what its line events saw: a
  marker as its arcs, a line ``L`` as the arc ``(-1, L)`` where no such arc starts or ends on
  it;
* where an exception raised on a branch line makes coverage.py's tracer record one of that
  line's branches (it left the code there, or a ``with`` or ``finally`` around it ran next),
  the marked code has a handler that records that arc (:mod:`.catchers`): there is no
  ``PY_UNWIND`` before Python 3.12.

The reports then give what coverage.py's C tracer gives (tests/test_branch_probes.py and
``benchmarks/bench_overhead.py --exactness`` compare them).
"""

from __future__ import annotations

import types
from typing import Any

from coverage import Coverage

from .branches import MarkCache, MarkedModules
from .catchers import ExceptionArcs, add_catchers, bind
from .imports import rewriter_missing
from .marks import MarkPlan
from .probes import Probes

__all__ = ["BRANCH_PROBES_IN_AUTO", "BranchProbes", "branch_probes_obstacle"]

#: ``auto`` measures branch coverage with this engine on 3.10 and 3.11 (else only
#: ``--distcov-engine=probes`` does).
BRANCH_PROBES_IN_AUTO = True


def branch_probes_obstacle() -> str:
    """'' if branch markers can be observed by probes here, else why not (for the header)."""
    gone = rewriter_missing()
    if gone:
        return f"branch markers need pytest's assertion rewriter ({', '.join(gone)})"
    return ""


class BranchProbes(MarkedModules, Probes):
    """Probes in marked code; the lines they saw, and the exception arcs, as coverage.py's arcs."""

    stopping = "branch markers"
    kind = "arcs"

    def __init__(self, cov: Coverage, cache: MarkCache | None = None) -> None:
        super().__init__(cov)
        self._init_marking(cov, cache)
        #: the arcs exceptions took (see .catchers), not yet taken into a phase
        self._caught = ExceptionArcs(self._recording)

    def extend(self, marks: MarkPlan, source: str, filename: str) -> None:
        add_catchers(marks)

    def bound(self, code: types.CodeType) -> types.CodeType:
        return bind(code, self._caught.hook)

    def adopt(self, func: types.FunctionType, twin: types.CodeType) -> None:
        func.__code__ = self._probed(twin)
        self.sci.functions.add(func)

    def recorded(self, filename: str, lines: set[int]) -> set[Any]:
        arcs = self.arcs_of(filename, lines)
        return set() if arcs is None else set(arcs)

    def add_more(self, named: dict[str, set[Any]]) -> None:
        caught = self._caught
        caught.take(named, self.side.name_for)
        caught.note_into(self.notes)
        super().add_more(named)

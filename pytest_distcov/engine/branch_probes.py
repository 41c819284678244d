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
  line ``L`` as the arc ``(-1, L)``, a marker as its arcs;
* where an exception raised on a branch line makes coverage.py's tracer record one of that
  line's branches (it left the code there, or a ``with`` or ``finally`` around it ran next),
  the marked code has a handler that records that arc (:mod:`.catchers`): there is no
  ``PY_UNWIND`` before Python 3.12.

The reports then give what coverage.py's C tracer gives (tests/test_branch_probes.py and
``benchmarks/bench_overhead.py --exactness`` compare them).
"""

from __future__ import annotations

import collections
import sys
import types
from collections.abc import Callable
from typing import Any

from coverage import Coverage

from .branches import Arc, MarkCache, MarkedModules
from .catchers import Table, add_catchers, at_yield, bind
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
        #: (file name, arc) an exception took (see .catchers), not yet taken: a deque, which
        #: the hook appends to and :meth:`add_more` takes from without a lock (a signal
        #: handler or a finalizer may run the hook in the middle of either)
        self._raised: collections.deque[tuple[str, Arc]] = collections.deque()
        #: what the hook has appended (without contexts, an arc counts once for the run)
        self._seen: set[tuple[str, Arc]] = set()
        self._hook = _exception_hook(self._raised, self._seen, self._recording)

    def _recording(self) -> bool:
        return self._started and not self._paused

    def extend(self, marks: MarkPlan, source: str, filename: str) -> None:
        add_catchers(marks)

    def bound(self, code: types.CodeType) -> types.CodeType:
        return bind(code, self._hook)

    def adopt(self, func: types.FunctionType, twin: types.CodeType) -> None:
        func.__code__ = self._probed(twin)
        self.sci.functions.add(func)

    def recorded(self, filename: str, lines: set[int]) -> set[Any]:
        arcs = self.arcs_of(filename, lines)
        return set() if arcs is None else set(arcs)

    def add_more(self, named: dict[str, set[Any]]) -> None:
        raised = self._raised
        while True:
            try:
                filename, arc = raised.popleft()
            except IndexError:
                break
            name = self.side.name_for(filename)
            if name is not None:
                named.setdefault(name, set()).add(arc)
        super().add_more(named)


#: On 3.11 a generator thrown into (``throw()``, ``close()``) at a ``yield`` shows the
#: tracer no line there, whatever handler the exception reaches (3.10: only where it leaves).
_THROWN_NO_ARC = sys.version_info >= (3, 11)


def _exception_hook(
    raised: collections.deque[tuple[str, Arc]],
    seen: set[tuple[str, Arc]],
    recording: Callable[[], bool],
) -> Callable[[Table, bool], None]:
    """The hook a catcher's handler calls (see :mod:`.catchers`): if the exception being
    handled was raised in the calling frame on a line of ``table``, that line's arc into
    ``raised`` (once: ``seen``). It never raises, and takes no lock: it runs in the user's
    code, on the way of their exception, perhaps in a signal handler that interrupted it."""
    getframe = sys._getframe
    exc_info = sys.exc_info
    thrown_no_arc = _THROWN_NO_ARC

    def on_exception(table: Table, exit: bool) -> None:
        try:
            if not recording():
                return
            frame = getframe(1)
            tb = exc_info()[2]
            while tb is not None and tb.tb_frame is not frame:
                tb = tb.tb_next
            if tb is None:
                return
            line = tb.tb_lineno
            for raised_on, start, end in table:
                if raised_on != line:
                    continue
                found = (frame.f_code.co_filename, (start, end))
                if found in seen:
                    continue
                if (thrown_no_arc or (exit and end < 0)) and at_yield(
                    frame.f_code.co_code, tb.tb_lasti
                ):
                    continue  # (the tracer sees no line there: no arc)
                seen.add(found)
                raised.append(found)
        except Exception:  # never in the way of the user's exception
            pass

    return on_exception

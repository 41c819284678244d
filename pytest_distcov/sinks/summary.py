"""The terminal summary: the last sink, for every run, whether its data file was written or not.

It writes to anything shaped like pytest's terminal reporter (:class:`Terminal`), so it knows
no pytest either; the controller hands it the reporter.

Every line goes through :func:`~pytest_distcov.errors.printable` on its way out. The strings
from workers and hosts in them (notes, host names, file names) are made printable where the
lines are composed, so that one line stays one line; this last pass escapes any control
character left (an ANSI escape in a file name of coverage.py's report, say), line breaks of our
own aside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pytest_distcov.errors import printable

__all__ = ["PREFIX", "Summary", "Terminal"]

#: What every line of ours starts with, so that it can be told from pytest's own.
PREFIX = "distcov: "


class Terminal(Protocol):
    """The part of pytest's terminal reporter the summary writes to."""

    def write_sep(self, sep: str, title: str) -> None: ...

    def write(self, content: str) -> None: ...

    def write_line(self, line: str, **markup: bool) -> None: ...


@dataclass(frozen=True)
class Summary:
    """What the run has to say, in the order it is shown.

    ``lines`` say what happened (recoveries, what the sinks did), ``notes`` come from the
    engines and workers, ``errors`` are shown in red: a ``FAIL`` one (it decided the exit
    status) as it is, the others after ``distcov: ``.
    """

    title: str
    report_text: str
    lines: Sequence[str]
    notes: Sequence[str]
    errors: Sequence[str]

    def run(self, terminal: Terminal) -> None:
        terminal.write_sep("-", printable(self.title))
        if self.report_text:
            terminal.write(printable(self.report_text, newlines=True))
        for line in [*self.lines, *self.notes]:
            terminal.write_line(printable(PREFIX + line, newlines=True))
        for err in self.errors:
            shown = err if err.startswith("FAIL") else PREFIX + err
            terminal.write_line(printable(shown, newlines=True), red=True, bold=True)

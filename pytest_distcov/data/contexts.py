"""Per-test contexts: their labels, and asking who covers a line.

With ``--distcov-context=test`` every line (and arc) is recorded under the label
``<node id>|setup``, ``|run`` or ``|teardown`` of the test phase that ran it, exactly as
pytest-cov's ``--cov-context=test`` labels a serial run. Code that runs outside any test
(imports during collection) keeps the empty context.

A worker streams its contexts with :class:`~pytest_distcov.data.readers.ContextDeltaReader`.
Nothing here imports pytest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coverage import CoverageData

from pytest_distcov.errors import SettingsError

__all__ = ["PHASES", "Found", "label", "parse_where", "who_covers"]

PHASES = ("setup", "run", "teardown")


def label(nodeid: str, phase: str) -> str:
    return f"{nodeid}|{phase}"


def test_of(context: str) -> str:
    """The node id in a context label (the label itself if it is not one of ours)."""
    nodeid, sep, phase = context.rpartition("|")
    return nodeid if sep and phase in PHASES else context


# -- who covers a line ---------------------------------------------------------------------------


def parse_where(text: str) -> tuple[str, range]:
    """``FILE:LINE`` or ``FILE:FIRST-LAST`` -> (file, range of lines)."""
    match = re.fullmatch(r"(.+):(\d+)(?:-(\d+))?", text.strip())
    if not match:
        raise SettingsError(f"expected FILE:LINE or FILE:FIRST-LAST, not {text!r}")
    first = int(match.group(2))
    last = int(match.group(3) or first)
    if first < 1 or last < first:
        raise SettingsError(f"bad line range in {text!r}: lines count from 1, FIRST <= LAST")
    return match.group(1), range(first, last + 1)


@dataclass
class Found:
    path: str
    by_line: dict[int, list[str]]
    tests: list[str]
    #: some of the lines ran outside any test (the empty context: imports, collection)
    outside: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.path,
            "lines": {str(n): contexts for n, contexts in sorted(self.by_line.items())},
            "tests": self.tests,
        }


def _find_file(data: CoverageData, file: str) -> str:
    measured = data.measured_files()
    wanted = str(Path(file).resolve())
    if wanted in measured:
        return wanted
    tail = "/" + Path(file).as_posix().removeprefix("./").lstrip("/")
    candidates = sorted(p for p in measured if Path(p).as_posix().endswith(tail))
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise SettingsError(
            f"{file} matches {len(candidates)} measured files ({', '.join(candidates[:3])}"
            f"{', ...' if len(candidates) > 3 else ''}): give more of its path"
        )
    raise SettingsError(
        f"{file} is not in the coverage data ({len(measured)} files measured); give its path"
        " as `coverage report` shows it"
    )


def who_covers(data: CoverageData, file: str, lines: range) -> Found:
    """The tests (and phases) that ran ``lines`` of ``file``, from per-test contexts."""
    if not (set(data.measured_contexts()) - {""}):
        raise SettingsError(
            f"{data.data_filename()} has no per-test contexts: measure with"
            " --distcov-context=test (or distcov_context = test in the ini file)"
        )
    path = _find_file(data, file)
    recorded = data.contexts_by_lineno(path)
    by_line = {n: sorted(c for c in recorded.get(n, []) if c) for n in lines}
    outside = any("" in recorded.get(n, []) for n in lines)
    by_line = {n: cs for n, cs in by_line.items() if cs}
    tests = sorted({test_of(c) for cs in by_line.values() for c in cs})
    return Found(path, by_line, tests, outside)

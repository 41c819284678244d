"""coverage.py's warnings, kept out of a suite that runs with ``filterwarnings = error``."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from coverage.exceptions import CoverageWarning

from pytest_distcov.errors import printable


@contextmanager
def capture_coverage_warnings(notes: list[str]) -> Iterator[None]:
    """Turn warnings raised inside coverage calls into plain notes (never raised in a suite
    that runs with ``filterwarnings = error``). A note is one printable line: coverage.py's
    warnings name files ("Couldn't parse '...' as Python"), and a file name may hold anything."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        prefix = "coverage" if issubclass(w.category, CoverageWarning) else w.category.__name__
        msg = printable(f"{prefix}: {w.message}")
        if msg not in notes:
            notes.append(msg)

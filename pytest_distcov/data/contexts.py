"""Per-test contexts: their labels, streaming them cheaply, and asking who covers a line.

With ``--distcov-context=test`` every line (and arc) is recorded under the label
``<node id>|setup``, ``|run`` or ``|teardown`` of the test phase that ran it, exactly as
pytest-cov's ``--cov-context=test`` labels a serial run. Code that runs outside any test
(imports during collection) keeps the empty context.

A worker with thousands of contexts cannot ask coverage's data API for each context's lines at
every chunk (one query per context and file). :class:`ContextDeltaReader` instead reads the
rows that changed since its last read straight from the data file's tables (coverage documents
its schema): arcs are only ever inserted, so new ones have higher rowids; a ``line_bits`` row
that grows is replaced, which gives it a rowid at least as high as the highest one before. One
query per table and chunk, whatever the number of contexts. Nothing here imports pytest.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coverage import CoverageData
from coverage.numbits import numbits_to_nums

from pytest_distcov.errors import DataFileError, SettingsError
from pytest_distcov.protocol import ContextData, Payload, empty_payload

from .union import KNOWN_SCHEMAS, read_only_uri

__all__ = ["PHASES", "ContextDeltaReader", "Found", "label", "parse_where", "who_covers"]

PHASES = ("setup", "run", "teardown")


def label(nodeid: str, phase: str) -> str:
    return f"{nodeid}|{phase}"


def test_of(context: str) -> str:
    """The node id in a context label (the label itself if it is not one of ours)."""
    nodeid, sep, phase = context.rpartition("|")
    return nodeid if sep and phase in PHASES else context


class ContextDeltaReader:
    """What is new in a worker's data file since the last read, all contexts at once."""

    def __init__(self, *, branch: bool) -> None:
        self.branch = branch
        # highest rowid (or id) read so far, per table
        self._line_mark = 0
        self._arc_mark = 0
        self._file_mark = 0
        self._context_mark = 0
        self._files: dict[int, str] = {}
        self._contexts: dict[int, str] = {}
        self._tracers: dict[str, str] = {}

    def delta_from_file(self, path: str | Path) -> Payload:
        if not Path(path).exists():
            return empty_payload()  # nothing flushed yet
        con = None
        try:
            con = sqlite3.connect(read_only_uri(path), uri=True)
            return self._delta(con, str(path))
        except sqlite3.Error as exc:
            raise DataFileError(f"cannot read coverage data file {path}: {exc}") from None
        finally:
            if con is not None:
                con.close()

    def _new(self, con: sqlite3.Connection, table: str, mark: int) -> list[tuple[int, str]]:
        query = f"SELECT id, {'path' if table == 'file' else 'context'} FROM {table} WHERE id > ?"
        return con.execute(query, (mark,)).fetchall()

    def _delta(self, con: sqlite3.Connection, path: str) -> Payload:
        payload = empty_payload()
        found = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'coverage_schema'")
        if found.fetchone() is None:
            return payload  # nothing written yet
        (version,) = con.execute("SELECT version FROM coverage_schema").fetchone()
        if version not in KNOWN_SCHEMAS:
            raise DataFileError(f"{path} has data schema {version}, which this reader cannot read")
        new_files = self._new(con, "file", self._file_mark)
        self._files.update(new_files)
        self._file_mark = max((fid for fid, _ in new_files), default=self._file_mark)
        new_contexts = self._new(con, "context", self._context_mark)
        self._contexts.update(new_contexts)
        self._context_mark = max((cid for cid, _ in new_contexts), default=self._context_mark)

        by_context: dict[str, ContextData] = {}
        if self.branch:
            rows = con.execute(
                "SELECT rowid, file_id, context_id, fromno, tono FROM arc WHERE rowid > ?",
                (self._arc_mark,),
            ).fetchall()
            for _, fid, cid, fromno, tono in rows:
                ctx = by_context.setdefault(self._contexts[cid], {"lines": {}, "arcs": {}})
                ctx["arcs"].setdefault(self._files[fid], []).append((fromno, tono))
            self._arc_mark = max((r[0] for r in rows), default=self._arc_mark)
        else:
            rows = con.execute(
                "SELECT rowid, file_id, context_id, numbits FROM line_bits WHERE rowid >= ?",
                (self._line_mark,),
            ).fetchall()
            for _, fid, cid, numbits in rows:
                ctx = by_context.setdefault(self._contexts[cid], {"lines": {}, "arcs": {}})
                ctx["lines"][self._files[fid]] = numbits_to_nums(numbits)
            self._line_mark = max((r[0] for r in rows), default=self._line_mark)
        payload["contexts"] = by_context
        for fid, tracer in con.execute("SELECT file_id, tracer FROM tracer").fetchall():
            fpath = self._files.get(fid)
            if fpath and tracer and self._tracers.get(fpath) != tracer:
                payload["tracers"][fpath] = self._tracers[fpath] = tracer
        for _, fpath in new_files:
            payload["touched"].setdefault(self._tracers.get(fpath, ""), []).append(fpath)
        return payload


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

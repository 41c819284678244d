"""Writing coverage.py's SQLite tables directly: the ``context batch``.

:func:`pytest_distcov.data.merge.add_contexts` adds thousands of per-test contexts to a data
file through an in-memory ``CoverageData`` (``no_disk=True``), merged into the file with one
public ``CoverageData.update``. Filling that batch context by context with ``add_lines`` costs
a few SQL statements and a context lookup for every context and file; :func:`fill_batch`
fills it with one ``executemany`` per table instead. That relies on what coverage.py does not
promise:

* the batch's ``data_filename()`` is the URI of a shared in-memory database
  (``file:coverage-...?mode=memory&cache=shared``) that a second connection opens;
* the schema (its "dbschema" page says "subject to change"): version :data:`SCHEMA_VERSION`,
  and the tables and columns of :data:`TABLES`, with the line numbers of a context's file as
  one ``coverage.numbits`` blob.

:func:`missing` checks both on a fresh batch (the start check's ``context batch``), and
:func:`fill_batch` checks them again on the batch it is given before it writes anything.
Fallback: ``add_lines`` (``add_arcs``) context by context into the batch, as before.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Mapping
from typing import Any

from coverage import Coverage, CoverageData
from coverage.numbits import nums_to_numbits

__all__ = ["BATCH_NEEDS", "SCHEMA_VERSION", "TABLES", "fill_batch", "missing"]

#: The schema version whose tables :func:`fill_batch` writes (``coverage_schema.version``).
SCHEMA_VERSION = 7
#: The tables :func:`fill_batch` writes or reads, and their columns in coverage.py's order.
TABLES: dict[str, tuple[str, ...]] = {
    "coverage_schema": ("version",),
    "context": ("id", "context"),
    "file": ("id", "path"),
    "line_bits": ("file_id", "context_id", "numbits"),
    "arc": ("file_id", "context_id", "fromno", "tono"),
}

#: What the context batch relies on, as the start check names it (see :func:`missing`).
BATCH_NEEDS = (
    "CoverageData(no_disk=True).data_filename(): a shared in-memory database",
    f"data schema version {SCHEMA_VERSION}",
    "tables "
    + ", ".join(f"{t}({', '.join(c)})" for t, c in TABLES.items() if t != "coverage_schema"),
)


def _connect(batch: CoverageData) -> sqlite3.Connection:
    """A second connection to ``batch``'s in-memory database (made by coverage.py once it has
    recorded anything: ``add_lines({})`` makes it)."""
    name = batch.data_filename()
    if not name.startswith("file:") or "mode=memory" not in name:
        raise sqlite3.OperationalError(f"not a shared in-memory database: {name!r}")
    return sqlite3.connect(name, uri=True)


def _differences(con: sqlite3.Connection) -> list[str]:
    """What in ``con``'s database is not the schema :func:`fill_batch` writes."""
    out = []
    row = con.execute("SELECT version FROM coverage_schema").fetchone()
    version = row[0] if row else None
    if version != SCHEMA_VERSION:
        out.append(f"data schema version {SCHEMA_VERSION} (it has {version})")
    for table, columns in TABLES.items():
        found = tuple(r[1] for r in con.execute(f"PRAGMA table_info({table})"))
        if found != columns:
            out.append(f"table {table}({', '.join(columns)}) (it has ({', '.join(found)}))")
    return out


def missing(cov: Coverage | None = None) -> list[str]:
    """What of :data:`BATCH_NEEDS` a fresh in-memory ``CoverageData`` lacks (``cov`` is not
    used: the schema is coverage.py's, not one object's)."""
    batch = CoverageData(no_disk=True)
    try:
        batch.add_lines({})
        try:
            con = _connect(batch)
        except sqlite3.Error as exc:
            return [f"a shared in-memory database ({exc})"]
        try:
            return _differences(con)
        except sqlite3.Error as exc:
            return [f"the tables it writes ({type(exc).__name__}: {exc})"]
        finally:
            con.close()
    finally:
        batch.close(force=True)


def fill_batch(
    batch: CoverageData,
    by_context: Mapping[str | None, Mapping[str, Collection[Any]]],
    *,
    arcs: bool,
) -> bool:
    """Write ``by_context`` into the empty in-memory ``batch`` (its tables made, nothing else
    in them) as ``add_lines``/``add_arcs`` would, context by context: a row for each context
    with a file (a label of None is coverage.py's ""), for each file, and for each context's
    file its line numbers as one numbits (a row per arc). False where the batch is not the
    shared in-memory database, its tables are not the ones this writes, or a write failed:
    then ``batch`` may hold part of it (coverage.py turns the in-memory database's journal
    off, so a rollback undoes nothing), and the caller must not use it."""
    contexts: dict[str, dict[str, Collection[Any]]] = {}
    for context, files in by_context.items():
        if files:
            into = contexts.setdefault(context or "", {})
            for name, items in files.items():
                if name in into:  # (None and "" are one context, as in coverage.py)
                    into[name] = [*into[name], *items]  # (items may be lists: unhashable)
                else:
                    into[name] = items
    if not contexts:
        return True
    file_ids: dict[str, int] = {}
    for files in contexts.values():
        for name, items in files.items():
            # (add_arcs skips a file without arcs; add_lines records it, with no lines)
            if name not in file_ids and (items or not arcs):
                file_ids[name] = len(file_ids) + 1
    try:
        con = _connect(batch)
    except sqlite3.Error:
        return False
    try:
        if _differences(con):
            return False
        with con:  # one transaction (in memory without a journal: an error leaves part)
            con.executemany(
                "INSERT INTO context (id, context) VALUES (?, ?)",
                ((i, c) for i, c in enumerate(contexts, 1)),
            )
            con.executemany(
                "INSERT INTO file (id, path) VALUES (?, ?)",
                ((i, name) for name, i in file_ids.items()),
            )
            if arcs:
                con.executemany(
                    "INSERT OR IGNORE INTO arc (file_id, context_id, fromno, tono)"
                    " VALUES (?, ?, ?, ?)",
                    (
                        (file_ids[name], i, fromno, tono)
                        for i, files in enumerate(contexts.values(), 1)
                        for name, items in files.items()
                        for fromno, tono in items
                    ),
                )
            else:
                con.executemany(
                    "INSERT INTO line_bits (file_id, context_id, numbits) VALUES (?, ?, ?)",
                    (
                        (file_ids[name], i, nums_to_numbits(items))
                        for i, files in enumerate(contexts.values(), 1)
                        for name, items in files.items()
                    ),
                )
    except sqlite3.Error:
        return False
    finally:
        con.close()
    return True

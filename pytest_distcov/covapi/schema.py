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

:func:`lines_union` reads a data file's line numbers of every context together, as
``CoverageData.lines`` gives them without a context query, from the same tables; where they
are not these, the caller reads them with ``CoverageData.lines``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from itertools import chain, islice
from typing import Any, TypeVar

from coverage import Coverage, CoverageData
from coverage.numbits import numbits_to_nums, nums_to_numbits

__all__ = [
    "BATCH_NEEDS",
    "SCHEMA_VERSION",
    "TABLES",
    "fill_batch",
    "fill_file",
    "lines_union",
    "missing",
]

#: The schema version whose tables :func:`fill_batch` writes (``coverage_schema.version``).
SCHEMA_VERSION = 7
#: The tables :func:`fill_batch` writes or reads, and their columns in coverage.py's order.
TABLES: dict[str, tuple[str, ...]] = {
    "coverage_schema": ("version",),
    "context": ("id", "context"),
    "file": ("id", "path"),
    "line_bits": ("file_id", "context_id", "numbits"),
    "arc": ("file_id", "context_id", "fromno", "tono"),
    "tracer": ("file_id", "tracer"),
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


def _grouped(
    by_context: Mapping[str | None, Mapping[str, Collection[Any]]],
    *,
    arcs: bool,
    known: Mapping[str, int] | None = None,
) -> tuple[dict[str, dict[str, Collection[Any]]], dict[str, int]]:
    """The contexts with a file (a label of None is coverage.py's ""), and each file's id:
    that of ``known`` (the files a table holds already), or a new one past them all."""
    known = known or {}
    top = max(known.values(), default=0) - len(known)
    contexts: dict[str, dict[str, Collection[Any]]] = {}
    for context, files in by_context.items():
        if files:
            into = contexts.setdefault(context or "", {})
            for name, items in files.items():
                if name in into:  # (None and "" are one context, as in coverage.py)
                    into[name] = [*into[name], *items]  # (items may be lists: unhashable)
                else:
                    into[name] = items
    file_ids: dict[str, int] = dict(known)
    for files in contexts.values():
        for name, items in files.items():
            # (add_arcs skips a file without arcs; add_lines records it, with no lines)
            if name not in file_ids and (items or not arcs):
                file_ids[name] = len(file_ids) + 1 + top
    return contexts, file_ids


def _insert(
    con: sqlite3.Connection,
    contexts: dict[str, dict[str, Collection[Any]]],
    file_ids: dict[str, int],
    *,
    arcs: bool,
    known: Collection[str] = (),
) -> None:
    """The rows of ``contexts`` into tables without contexts, as add_lines/add_arcs would
    write them (the files of ``known`` have their row already)."""
    con.executemany(
        "INSERT INTO context (id, context) VALUES (?, ?)",
        ((i, c) for i, c in enumerate(contexts, 1)),
    )
    con.executemany(
        "INSERT INTO file (id, path) VALUES (?, ?)",
        ((i, name) for name, i in file_ids.items() if name not in known),
    )
    if arcs:
        _insert_arcs(
            con,
            (
                (file_ids[name], i, items)
                for i, files in enumerate(contexts.values(), 1)
                for name, items in files.items()
                if items
            ),
        )
    else:
        numbits_of = _once_for_shared(
            (items for files in contexts.values() for items in files.values()), nums_to_numbits
        )
        con.executemany(
            "INSERT INTO line_bits (file_id, context_id, numbits) VALUES (?, ?, ?)",
            (
                (file_ids[name], i, numbits_of(items))
                for i, files in enumerate(contexts.values(), 1)
                for name, items in files.items()
            ),
        )


_T = TypeVar("_T")


def _once_for_shared(
    sets: Iterable[Collection[Any]], make: Callable[[Collection[Any]], _T]
) -> Callable[[Collection[Any]], _T]:
    """``make`` of a set, made in turn for a set ``sets`` holds once, and once only (then
    kept) for a set it holds more than once: many contexts share one object (see the
    protocol's decoding), and no result is kept that is not needed again. The sets must
    stay alive while the function is used (they are known by their ids)."""
    seen: set[int] = set()
    again: set[int] = set()
    for items in sets:
        (again if id(items) in seen else seen).add(id(items))
    kept: dict[int, _T] = {}

    def made(items: Collection[Any]) -> _T:
        key = id(items)
        if key not in again:
            return make(items)
        if key not in kept:
            kept[key] = make(items)
        return kept[key]

    return made


def _in_order(items: Collection[Any]) -> Collection[Any]:
    """``items`` sorted, or as they are where they cannot be compared (pairs of mixed
    kinds: the order only speeds the write up)."""
    try:
        return sorted(items)
    except TypeError:
        return items


#: Rows a statement inserts (:func:`_insert_rows`): at most 4 numbers each, far below SQLite's
#: oldest bound on a statement's parameters (999).
_ROWS_A_STATEMENT = 64
#: The temporary tables of :func:`_insert_arcs`: each set of arcs once, and each (file,
#: context) with its set's id.
_TEMP_TABLES = (
    "CREATE TEMP TABLE distcov_arc_sets (set_id INTEGER, fromno INTEGER, tono INTEGER)",
    "CREATE TEMP TABLE distcov_arc_uses (file_id INTEGER, context_id INTEGER, set_id INTEGER)",
)


def _insert_arcs(
    con: sqlite3.Connection, groups: Iterable[tuple[int, int, Collection[Any]]]
) -> None:
    """The arc rows of ``groups`` (file id, context id, arcs), in the order of the arc
    table's unique index (file, context, arc), so that SQLite adds each next to the last one.

    A run's hundreds of thousands of per-test arcs often hold few different sets (a worker
    sends the same set of a file for many test phases, and the controller keeps one object
    for each: see the protocol's decoding). Where the different sets hold less than 40% of
    the rows (about where the two ways cost the same), each goes once into a temporary
    table, each (file, context) with its set's id into another, and one ``INSERT … SELECT``
    joins them into the arc table in SQLite's own code: binding every row's four numbers
    from Python takes more time than SQLite's insert (jsonschema's 875,000 rows from 85,000
    different ones: 0.49 to 0.52 s instead of 0.65 s). Otherwise the rows go in straight,
    many a statement. The temporary tables are gone after."""
    uses = sorted(groups, key=lambda group: (group[0], group[1]))
    distinct: dict[int, Collection[Any]] = {}  # by the id of a set, alive in ``uses``
    rows = 0
    for _, _, items in uses:
        rows += len(items)
        distinct.setdefault(id(items), items)
    if 5 * sum(map(len, distinct.values())) >= 2 * rows:
        in_order = _once_for_shared((items for _, _, items in uses), _in_order)
        _insert_rows(
            con,
            _INSERT_ARCS,
            4,
            chain.from_iterable(
                (file_id, context_id, fromno, tono)
                for file_id, context_id, items in uses
                for fromno, tono in in_order(items)
            ),
        )
        return
    set_ids = {key: n for n, key in enumerate(distinct, 1)}
    try:
        con.execute("PRAGMA temp_store = MEMORY")
        for create in _TEMP_TABLES:
            con.execute(create)
        _insert_rows(
            con,
            "INSERT INTO temp.distcov_arc_sets VALUES ",
            3,
            chain.from_iterable(
                (set_ids[key], fromno, tono)
                for key, items in distinct.items()
                for fromno, tono in _in_order(items)
            ),
        )
        _insert_rows(
            con,
            "INSERT INTO temp.distcov_arc_uses VALUES ",
            3,
            chain.from_iterable(
                (file_id, context_id, set_ids[id(items)]) for file_id, context_id, items in uses
            ),
        )
        con.execute("CREATE INDEX temp.distcov_arc_set_ids ON distcov_arc_sets (set_id)")
        con.execute(
            _INSERT_ARCS.removesuffix(" VALUES ")
            + " SELECT u.file_id, u.context_id, s.fromno, s.tono"
            " FROM temp.distcov_arc_uses AS u JOIN temp.distcov_arc_sets AS s"
            " ON s.set_id = u.set_id ORDER BY u.rowid, s.rowid"
        )
    finally:
        for table in ("distcov_arc_uses", "distcov_arc_sets"):
            with contextlib.suppress(sqlite3.Error):
                con.execute(f"DROP TABLE IF EXISTS temp.{table}")


_INSERT_ARCS = "INSERT OR IGNORE INTO arc (file_id, context_id, fromno, tono) VALUES "


def _insert_rows(con: sqlite3.Connection, head: str, width: int, values: Iterable[Any]) -> None:
    """Rows of ``width`` columns, whose values ``values`` gives one after the other, through
    ``head`` (``INSERT … VALUES``), many a statement (binding a statement's parameters costs
    less than running it again: a run's per-test arcs take half the time they take one a
    statement)."""
    values = iter(values)  # (islice of a list would start again at each call)
    row = "(" + ", ".join(["?"] * width) + ")"
    size = width * _ROWS_A_STATEMENT
    rest: list[Any] = []

    def full() -> Iterator[list[Any]]:
        for chunk in iter(lambda: list(islice(values, size)), []):
            if len(chunk) < size:
                rest.extend(chunk)
                return
            yield chunk

    con.executemany(head + ", ".join([row] * _ROWS_A_STATEMENT), full())
    if rest:
        con.executemany(head + row, (rest[i : i + width] for i in range(0, len(rest), width)))


def fill_batch(
    batch: CoverageData,
    by_context: Mapping[str | None, Mapping[str, Collection[Any]]],
    *,
    arcs: bool,
    tracers: Mapping[str, str] | None = None,
) -> bool:
    """Write ``by_context`` into the empty in-memory ``batch`` (its tables made, nothing else
    in them) as ``add_lines``/``add_arcs`` would, context by context: a row for each context
    with a file (a label of None is coverage.py's ""), for each file, and for each context's
    file its line numbers as one numbits (a row per arc), and each of its files that
    ``tracers`` names a tracer for, that tracer. False where the batch is not the
    shared in-memory database, its tables are not the ones this writes, or a write failed:
    then ``batch`` may hold part of it (coverage.py turns the in-memory database's journal
    off, so a rollback undoes nothing), and the caller must not use it."""
    contexts, file_ids = _grouped(by_context, arcs=arcs)
    if not contexts:
        return True
    try:
        con = _connect(batch)
    except sqlite3.Error:
        return False
    try:
        if _differences(con):
            return False
        with con:  # one transaction (in memory without a journal: an error leaves part)
            _insert(con, contexts, file_ids, arcs=arcs)
            con.executemany(
                "INSERT INTO tracer (file_id, tracer) VALUES (?, ?)",
                ((file_ids[f], t) for f, t in (tracers or {}).items() if t and f in file_ids),
            )
    except sqlite3.Error:
        return False
    finally:
        con.close()
    return True


def fill_file(
    data: CoverageData,
    by_context: Mapping[str | None, Mapping[str, Collection[Any]]],
    *,
    arcs: bool,
) -> bool:
    """Write ``by_context`` straight into the on-disk ``data`` that holds no line, arc or
    context yet (its tables made: ``add_lines({})`` or ``add_arcs({})``; files measured with
    nothing recorded keep their rows), as :func:`fill_batch` writes a
    batch: no in-memory copy first, and no ``CoverageData.update`` to copy it (for a run's
    hundreds of thousands of arcs under per-test contexts, a third of the write).

    ``data`` is closed first, and read again after (its files as they are now). One
    transaction, its journal in memory: a failure rolls it back whole, and False is returned,
    as where ``data`` holds contexts, is of the other kind (lines, arcs) or not this schema;
    the caller then writes it another way. Nothing is synced here, as coverage.py syncs
    nothing of its own writes (``write_data_file`` syncs the combined file whole).
    """
    name = data.data_filename()
    if name.startswith("file:"):  # (in memory: a URI, that a plain connect would make a file)
        return False
    if not any(by_context.values()):
        return True
    data.close(force=True)
    try:
        con = sqlite3.connect(name, isolation_level=None)
    except sqlite3.Error:
        return False
    try:
        kind = con.execute("SELECT value FROM meta WHERE key = 'has_arcs'").fetchone()
        if (
            _differences(con)
            or kind != (str(int(arcs)),)  # (data of the other kind, or of no kind yet)
            or any(con.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone() for t in _EMPTY)
        ):
            return False
        known = dict(con.execute("SELECT path, id FROM file"))
        contexts, file_ids = _grouped(by_context, arcs=arcs, known=known)
        con.execute("PRAGMA journal_mode = MEMORY")
        con.execute("PRAGMA synchronous = OFF")
        con.execute("BEGIN IMMEDIATE")
        try:
            _insert(con, contexts, file_ids, arcs=arcs, known=known)
        except BaseException:
            if con.in_transaction:  # (SQLite rolls some errors back itself)
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
    except sqlite3.Error:
        return False
    finally:
        con.close()
    data.read()  # (its files again, as they are now: measured_files() does not look)
    return True


#: The tables :func:`fill_file` requires to be empty (the ``file`` table may hold files
#: measured with nothing recorded: coverage.py's never-imported files of ``[run] source``).
_EMPTY = ("context", "line_bits", "arc")


def _reading(name: str) -> sqlite3.Connection:
    """A connection that reads the data file ``name`` (an in-memory one's URI as it is), and
    makes no file where there is none."""
    if name.startswith("file:"):
        return sqlite3.connect(name, uri=True)
    return sqlite3.connect(f"file:{urllib.parse.quote(name)}?mode=ro", uri=True)


def lines_union(data: CoverageData) -> dict[str, list[int]] | None:
    """Each measured file of the on-disk line data ``data`` with its line numbers, every
    context's together, as ``CoverageData.lines`` gives them with no context query: that one
    turns each context's numbits into a list and adds them to a set, in Python (most of a
    report's time with thousands of per-test contexts); here each file's numbits are OR-ed as
    integers, and made numbers once. A file without lines has an empty list. None where the
    file is not the schema this knows or cannot be read: the caller then asks coverage.py."""
    try:
        con = _reading(data.data_filename())
    except sqlite3.Error:
        return None
    try:
        if _differences(con):
            return None
        union: dict[str, int] = {path: 0 for (path,) in con.execute("SELECT path FROM file")}
        rows = con.execute(
            "SELECT file.path, line_bits.numbits FROM line_bits"
            " JOIN file ON file.id = line_bits.file_id"
        )
        for path, numbits in rows:
            union[path] |= int.from_bytes(numbits, "little")
    except (sqlite3.Error, KeyError, TypeError):
        return None
    finally:
        con.close()
    return {
        path: numbits_to_nums(bits.to_bytes((bits.bit_length() + 7) // 8, "little"))
        for path, bits in union.items()
    }

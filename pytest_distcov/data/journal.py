"""The journal a worker keeps beside its data file: its format, encoded and decoded here only.

While a worker's engine flushes after a test, what is new goes to the journal instead of the
data file (:class:`pytest_distcov.engine.measure.NewOnly`): appending one line is one
``write``, where the data file would take an SQLite transaction. The journal is moved into the
data file before the worker reads that file, and at the end; a worker killed in between leaves
it beside its data file, and recovery reads both
(:func:`pytest_distcov.data.readers.update_from_file`).

A record is one line of JSON, ``[kind, {file: items}]``: kind ``"lines"`` with line numbers,
or ``"arcs"`` with ``[from, to]`` pairs. Such a record holds no context: NewOnly journals only
data recorded under one unchanging context, so a reader adds it under its target's context.
The monitor engine (per-test contexts, :mod:`pytest_distcov.engine.monitor`) journals each test
phase as ``[kind, {file: items}, context]``: :func:`read_entries` gives those with their
context (:func:`read_journal` and :func:`decode_record`, for records without one, refuse them).

A worker killed while it wrote a record leaves that last line cut short; it belonged to a test
that had not finished, and is skipped (as is any line that is not JSON). A line that is JSON but
not such a record means a file of something else, or damaged: a :class:`DataFileError` that
names the journal. Nothing here imports coverage.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from pytest_distcov.errors import DataFileError

__all__ = [
    "JOURNAL_SUFFIX",
    "KINDS",
    "Entry",
    "Record",
    "RecordEncoder",
    "decode_entry",
    "decode_record",
    "encode_record",
    "journal_for",
    "read_entries",
    "read_journal",
]

#: A worker's journal is its data file's name plus this.
JOURNAL_SUFFIX = ".journal"

#: The kinds of record: line numbers, or (from, to) arcs when branch coverage is on.
KINDS = ("lines", "arcs")

#: Line numbers are a code object's C ``int``: a number beyond is not one a worker recorded
#: (and would make coverage.py build a numbits blob of that many bits).
LINE_LIMIT = 1 << 31

#: (kind, file -> line numbers, or (from, to) tuples for arcs)
Record = tuple[str, dict[str, list[Any]]]
#: (the context label the record was measured under, or None: its reader's; the record)
Entry = tuple[str | None, Record]


#: One encoder for every record: ``json.dumps`` with any option makes a new one at each call,
#: which cost more than the encoding of a short test's record.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def journal_for(data_file: Path) -> Path:
    """The journal beside ``data_file``."""
    return data_file.with_name(data_file.name + JOURNAL_SUFFIX)


def encode_record(
    kind: str, items: Mapping[str, Collection[Any]], context: str | None = None
) -> bytes:
    """One record, a whole line: ``kind`` and each file's items, sorted (and the context label
    it was measured under, if given)."""
    record = {name: sorted(found) for name, found in items.items()}
    entry: list[Any] = [kind, record] if context is None else [kind, record, context]
    return (_ENCODER.encode(entry) + "\n").encode()


class RecordEncoder:
    """:func:`encode_record` for many records of one kind, each file's items encoded once
    for all the records that hold the very same ones (a frozenset: most tests of a suite run
    one of a few ways through each file, and the engine hands the same set again). Up to
    ``keep`` of them are kept; then all are forgotten."""

    def __init__(self, kind: str, keep: int = 4096) -> None:
        self._head = _ENCODER.encode(kind)
        self._keep = keep
        self._encoded: dict[tuple[str, frozenset[Any]], str] = {}

    def encode(self, items: Mapping[str, Collection[Any]], context: str | None = None) -> bytes:
        """What ``encode_record(kind, items, context)`` encodes (the same JSON value)."""
        encoded = self._encoded
        parts = []
        for name, found in items.items():
            key = (name, found) if type(found) is frozenset else None
            part = encoded.get(key) if key is not None else None
            if part is None:
                part = f"{_ENCODER.encode(name)}:{_ENCODER.encode(sorted(found))}"
                if key is not None:
                    if len(encoded) >= self._keep:
                        encoded.clear()
                    encoded[key] = part
            parts.append(part)
        tail = "" if context is None else "," + _ENCODER.encode(context)
        return f"[{self._head},{{{','.join(parts)}}}{tail}]\n".encode()


def decode_record(text: str) -> Record | None:
    """The record (without a context) on one line; None for a line that is not JSON (cut short
    by a kill).

    Raises :class:`ValueError`, saying why, for JSON that is not a record of this format.
    """
    entry = _decode(text, with_context=False)
    return None if entry is None else entry[1]


def decode_entry(text: str) -> Entry | None:
    """:func:`decode_record` for a record with or without a context label."""
    return _decode(text, with_context=True)


def _decode(text: str, *, with_context: bool) -> Entry | None:
    try:
        found = json.loads(text)
    except ValueError:
        return None  # torn: the worker died while writing it
    except RecursionError:
        raise ValueError("not a journal record (nested too deeply)") from None
    sizes = (2, 3) if with_context else (2,)
    if not (isinstance(found, list) and len(found) in sizes and found[0] in KINDS):
        raise ValueError(f"not a journal record: {text[:80]!r}")
    kind, files = found[:2]
    context = found[2] if len(found) == 3 else None
    if not isinstance(files, dict):
        raise ValueError(f"a {kind} record holds no files: {text[:80]!r}")
    if context is not None and not isinstance(context, str):
        raise ValueError(f"a {kind} record's context is not a label: {text[:80]!r}")
    decode = _arcs if kind == "arcs" else _lines
    return context, (kind, {name: decode(name, items) for name, items in files.items()})


def _is_number(value: object, low: int) -> bool:
    return type(value) is int and low <= value < LINE_LIMIT  # (a bool is no line number)


def _lines(name: str, items: object) -> list[Any]:
    if not isinstance(items, list) or not all(_is_number(n, 0) for n in items):
        raise ValueError(f"the lines of {name!r} are not line numbers")
    return items


def _arcs(name: str, items: object) -> list[Any]:
    arcs: list[Any] = []
    if isinstance(items, list):
        for arc in items:
            if not (isinstance(arc, list) and len(arc) == 2):
                break
            first, second = arc
            if not (_is_number(first, 1 - LINE_LIMIT) and _is_number(second, 1 - LINE_LIMIT)):
                break
            arcs.append((first, second))
        else:
            return arcs
    raise ValueError(f"the arcs of {name!r} are not pairs of line numbers")


def read_journal(path: str | os.PathLike[str]) -> Iterator[Record]:
    """The records of the journal at ``path``, in the order written.

    Raises :class:`DataFileError` naming the journal when it cannot be read (not UTF-8) or holds
    a record of another format: after every good record has been given, so that one bad record
    costs only itself (the error names the first bad line).
    """
    for _, record in _read(path, with_context=False):
        yield record


def read_entries(path: str | os.PathLike[str]) -> Iterator[Entry]:
    """:func:`read_journal` for records with or without a context label."""
    return _read(path, with_context=True)


def _read(path: str | os.PathLike[str], *, with_context: bool) -> Iterator[Entry]:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFileError(f"cannot read journal {os.fspath(path)}: {exc}") from None
    first_bad: str | None = None
    for number, text in enumerate(lines, 1):
        try:
            record = _decode(text, with_context=with_context)
        except ValueError as exc:
            if first_bad is None:
                first_bad = f"cannot combine journal {os.fspath(path)}: line {number}: {exc}"
            continue
        if record is not None:
            yield record
    if first_bad is not None:
        raise DataFileError(first_bad)

"""Messages between a worker and the controller, versioned; standard library only.

A worker sends, on its private execnet channel, in this order:

* one ``hello``: who it is (id, host, pid, Python, coverage version) and where its durable
  data file lives, so that the controller can recover that file if the worker dies (and
  removes it once the combined data file is written: the worker leaves it there);
* any number of ``chunk`` messages: coverage data that is new since the previous message;
* one ``final``: the rest of its data, after its session ended cleanly.

Payloads are made of the builtin types execnet can carry (dict, list, tuple, str, int, bytes),
never coverage's own ``dumps()`` bytes: those only load into the very same coverage version,
while this shape is ours and stable. On the wire (:func:`packed`) a file's line numbers (or its
arcs, each pair as two numbers) travel as one ``bytes`` of little-endian 32-bit integers:
execnet serializes a list item by item in Python (a few calls per line number, in the worker
and again in the controller), a blob in one piece; :func:`decode` turns them back into lists (a
list is accepted as well). Every message carries ``proto``; a message of another
protocol version, or of the wrong shape, raises :class:`~pytest_distcov.errors.ProtocolError`.

:func:`decode` checks every field of every message, down to each line number, before the
controller uses any of it: a worker (or the host it runs on) may send anything, and a value
accepted here is merged into the run's data and written to its data file at the end, where a
single bad one would stop the write. A refused message is left out whole; nothing of it is
merged.
"""

from __future__ import annotations

import functools
import reprlib
import sys
from array import array
from collections.abc import Callable, Collection, Iterator
from itertools import chain, islice
from typing import Any, Literal, TypedDict, cast

from .errors import ProtocolError

__all__ = [
    "MAX_LINE",
    "PROTOCOL_VERSION",
    "Blobs",
    "Chunk",
    "Hello",
    "Message",
    "Payload",
    "Recovered",
    "decode",
    "empty_payload",
    "packed",
]

#: A dead worker's recovered data file: (worker id, local path, its path mapper or None), as
#: the local and the remote recovery hand it to the finish step.
Recovered = tuple[str, str, Callable[[str], str] | None]

#: Bumped whenever a message changes shape. Worker and controller must agree exactly.
#: (2: line numbers and arcs travel packed, see :func:`packed`.)
PROTOCOL_VERSION = 2

Arc = tuple[int, int]


class ContextData(TypedDict):
    """Lines or arcs measured under one coverage context, by file name."""

    lines: dict[str, Collection[int]]
    arcs: dict[str, Collection[Arc]]


class Payload(TypedDict):
    """Coverage data, in builtin types.

    ``contexts`` maps a context label ("" when none) to its lines or arcs; ``tracers`` maps a
    file to the coverage plugin that traced it; ``touched`` maps a plugin name ("" for Python)
    to files that may have run but have no data yet (coverage reports them as 0 %).
    """

    contexts: dict[str, ContextData]
    tracers: dict[str, str]
    touched: dict[str, list[str]]


class Hello(TypedDict):
    proto: int
    kind: Literal["hello"]
    worker: str
    host: str
    pid: int
    python: str
    coverage: str
    core: str
    datadir: str
    notes: list[str]  # what the worker's user should know from the start (e.g. a slow core)


class Chunk(TypedDict):
    proto: int
    kind: Literal["chunk", "final"]
    worker: str
    seq: int
    tests: int
    data: Payload
    notes: list[str]


Message = Hello | Chunk


def empty_payload() -> Payload:
    return {"contexts": {}, "tracers": {}, "touched": {}}


def payload_is_empty(payload: Payload) -> bool:
    return not (payload["contexts"] or payload["tracers"] or payload["touched"])


#: The largest line number a message may carry, and the smallest negated one (an arc enters or
#: leaves a code object at its first line, negated). coverage.py stores a file's lines as
#: numbits, one bit a line up to the largest, so one line number sets the size of a blob in the
#: data file: this bound keeps it within 4 MiB a file and context. A source file of 33 million
#: lines would be a gigabyte of source; a larger number is no measurement. (It is also the range
#: in which ``combine`` packs arcs, so that every arc a run writes reads back fast.)
MAX_LINE = (1 << 25) - 1

#: The array type code of a 32-bit signed integer (``i`` on every platform CPython supports).
_INT32 = next(code for code in "ilh" if array(code).itemsize == 4)
#: Packed numbers are little-endian on the wire, whatever the byte order of either end.
_SWAP = sys.byteorder == "big"


def _pack(numbers: Any) -> Any:
    """Numbers (from -2**31 to 2**31-1) as little-endian 32-bit bytes; the list itself if one
    is beyond (the controller refuses it either way, but names it)."""
    try:
        packed = array(_INT32, numbers)
    except (OverflowError, TypeError):
        return numbers
    if _SWAP:  # pragma: no cover - no big-endian machine runs the tests
        packed.byteswap()
    return packed.tobytes()


def _unpack(blob: bytes) -> list[int]:
    """The numbers :func:`_pack` made (``blob``'s length a multiple of 4)."""
    numbers = array(_INT32)
    numbers.frombytes(blob)
    if _SWAP:  # pragma: no cover - no big-endian machine runs the tests
        numbers.byteswap()
    return numbers.tolist()


def packed(payload: Payload, kept: dict[frozenset[Any], Any] | None = None) -> Payload:
    """``payload`` as it goes on the wire: every file's line numbers, and every file's arcs
    (flattened, two numbers an arc), as one ``bytes`` each (see :func:`_pack`). The payload
    itself is left as it is. With ``kept``, a file's items given as a frozenset are packed
    once for every payload that holds the very same set (the monitor engine hands the same
    one for every test phase that ran the same way through a file); up to :data:`KEPT`."""

    def pack(items: Any, arcs: bool) -> Any:
        if kept is None or type(items) is not frozenset:
            return _pack(list(chain.from_iterable(items)) if arcs else list(items))
        found = kept.get(items)
        if found is None:
            found = _pack(list(chain.from_iterable(items)) if arcs else list(items))
            if len(kept) >= KEPT:
                kept.clear()
            kept[items] = found
        return found

    contexts: dict[str, Any] = {}
    for label, ctx in payload["contexts"].items():
        contexts[label] = {
            "lines": {path: pack(items, False) for path, items in ctx["lines"].items()},
            "arcs": {path: pack(items, True) for path, items in ctx["arcs"].items()},
        }
    return {**payload, "contexts": contexts}


#: Packed items :func:`packed` keeps (all forgotten when there are this many).
KEPT = 4096


#: How much of a value a refusal quotes (a file name is quoted whole, up to its own bound).
_QUOTE = 60
_QUOTE_NAME = 300


class _Short(reprlib.Repr):
    """``repr`` bounded everywhere: at most ``limit`` characters of a string or bytes, a few
    items of a list, a few levels of lists in lists, no huge integer written out. Control
    characters are escaped (each piece is the builtin ``repr`` of a short slice)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.maxlevel = 4
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 8
        self.maxdict = 4
        self.maxstring = self.maxother = limit

    def repr_bytes(self, value: bytes, level: int) -> str:
        more = "..." if len(value) > self.maxstring else ""
        return repr(value[: self.maxstring]) + more

    repr_bytearray = repr_bytes

    # (reprlib sorts a dict's keys or a set's items before it takes the first few: in message
    # order instead, never a sort of all of them)
    def repr_dict(self, value: dict[Any, Any], level: int) -> str:
        pieces = (
            f"{self.repr1(key, level - 1)}: {self.repr1(item, level - 1)}"
            for key, item in value.items()
        )
        if not value:
            return "{}"
        return self._first(pieces, len(value), self.maxdict, level, around=("{", "}"))

    def repr_set(self, value: set[Any], level: int) -> str:
        pieces = (self.repr1(item, level - 1) for item in value)
        if not value:
            return "set()"
        return self._first(pieces, len(value), self.maxset, level, around=("{", "}"))

    def repr_frozenset(self, value: frozenset[Any], level: int) -> str:
        pieces = (self.repr1(item, level - 1) for item in value)
        if not value:
            return "frozenset()"
        most = self.maxfrozenset
        return self._first(pieces, len(value), most, level, around=("frozenset({", "})"))

    @staticmethod
    def _first(
        pieces: Iterator[str], count: int, most: int, level: int, *, around: tuple[str, str]
    ) -> str:
        """The first ``most`` of ``count`` pieces (made only as taken) between the two of
        ``around``; ``...`` for the rest, or for all of them at the last level."""
        left, right = around
        if level <= 0:
            return f"{left}...{right}"
        shown = list(islice(pieces, most))
        if count > most:
            shown.append("...")
        return left + ", ".join(shown) + right

    def repr_int(self, value: int, level: int) -> str:
        if value.bit_length() > 128:
            return f"<an integer of {value.bit_length()} bits>"
        return repr(value)


@functools.cache
def _short(limit: int) -> _Short:
    return _Short(limit)


def _quote(value: Any, limit: int = _QUOTE) -> str:
    """A value as a refusal names it: a bounded ``repr`` (:class:`_Short`), cut to ``limit``.
    It never builds the ``repr`` of a whole large value, nested or not."""
    try:
        text = _short(limit).repr(value)
    except Exception:  # (whatever a value of a type not foreseen here does)
        return f"a {type(value).__name__} that cannot be shown"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _name(value: Any) -> str:
    """A file name or label as a refusal names it: whole, unless it is very long."""
    return _quote(value, _QUOTE_NAME)


class _Malformed(Exception):
    """What is wrong with a message; :func:`decode` names the kind of message."""


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise _Malformed(what)


def _is_int(value: Any) -> bool:
    return type(value) is int  # neither a bool nor a subclass that compares oddly


def _is_name(value: Any) -> bool:
    """A string that can go into a data file: SQLite takes UTF-8, so no lone surrogates."""
    if type(value) is not str:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_path(value: Any) -> bool:
    """A file name: a non-empty string that can go into a data file, with no NUL (no file
    system has one in a name, and the reports could not open it)."""
    return _is_name(value) and bool(value) and "\x00" not in value


def _is_strings(value: Any) -> bool:
    return type(value) in (list, tuple) and all(type(v) is str for v in value)


def _lines_ok(items: Any) -> bool:
    """Line numbers: integers from 0 to MAX_LINE. (Every test here loops in C: ``map``, ``set``,
    ``min`` and ``max``; a chunk can hold hundreds of thousands of numbers.)"""
    if type(items) not in (list, tuple):
        return False
    if not items:
        return True
    return set(map(type, items)) == {int} and min(items) >= 0 and max(items) <= MAX_LINE


def _arcs_ok(items: Any) -> bool:
    """Arcs: pairs of integers from -MAX_LINE to MAX_LINE (negative at a code object's entry
    and exit), tested in C as the line numbers are."""
    if type(items) not in (list, tuple):
        return False
    if not items:
        return True
    if not set(map(type, items)) <= {list, tuple} or set(map(len, items)) != {2}:
        return False
    numbers = list(chain.from_iterable(items))
    return (
        set(map(type, numbers)) == {int} and min(numbers) >= -MAX_LINE and max(numbers) <= MAX_LINE
    )


class Blobs:
    """Blobs decoded lately, by kind and content: give one to :func:`decode` for the messages
    of one run (the controller's receiver does; one thread only: it drains its inbox on the
    main thread).

    A worker sends the same set of a file for many test phases (jsonschema's 48,000
    per-phase records of a run hold 2,900 different sets): each blob is checked and decoded
    once, and every payload that holds it gets the same frozenset, which nothing changes.

    Bounded by what the kept sets cost in memory, estimated from their blobs (measured on
    3.13 with tracemalloc: 16 bytes of set for each byte of a large blob of line numbers, up
    to 29 for one of 100 numbers, 23 for arcs, and a few hundred bytes for each entry), at
    most :attr:`BUDGET` in all; a worker sending ever new blobs only empties it. A blob
    larger than :attr:`BLOB` is decoded but not kept."""

    #: the estimated memory of the kept sets before all are forgotten
    BUDGET = 32 << 20
    #: the largest blob kept
    BLOB = 1 << 14
    #: the estimated cost of a kept blob: this much a byte of it, and :attr:`ENTRY` more
    PER_BYTE = 30
    ENTRY = 400

    def __init__(self) -> None:
        self.found: dict[tuple[str, bytes], frozenset[Any]] = {}
        self.cost = 0

    def clear(self) -> None:
        """Forget every blob (the run's messages are all in)."""
        self.found.clear()
        self.cost = 0

    def __call__(self, kind: str, blob: bytes) -> frozenset[Any] | str:
        if len(blob) > self.BLOB:  # (never kept: no hash of it either)
            return _unpacked(kind, blob)
        key = (kind, blob)
        found = self.found.get(key)
        if found is not None:
            return found
        unpacked = _unpacked(kind, blob)
        if type(unpacked) is frozenset:
            cost = self.PER_BYTE * len(blob) + self.ENTRY
            if self.cost + cost > self.BUDGET:
                self.clear()
            self.found[key] = unpacked
            self.cost += cost
        return unpacked


def _unpacked(kind: str, blob: bytes) -> frozenset[Any] | str:
    """A file's packed lines (or arcs) as a frozenset (arcs: of pairs), every number checked;
    or, where the blob is not that, what it is instead (for the refusal: never its bytes,
    which may be many)."""
    arcs = kind == "arcs"
    size = 8 if arcs else 4
    if len(blob) % size:
        whole = "pairs of 32-bit numbers" if arcs else "32-bit numbers"
        return f"a packed blob of {len(blob)} bytes, not whole {whole}"
    numbers = _unpack(blob)
    if numbers:  # (min and max loop in C: a chunk can hold hundreds of thousands)
        low, high = min(numbers), max(numbers)
        if low < (-MAX_LINE if arcs else 0) or high > MAX_LINE:
            bad = high if high > MAX_LINE else low
            count = f"{len(numbers)} number{'' if len(numbers) == 1 else 's'}"
            return f"a packed blob of {count}, {bad} among them"
    if arcs:
        pairs = iter(numbers)
        return frozenset(zip(pairs, pairs, strict=True))  # (an even count)
    return frozenset(numbers)


def _check_measured(
    label: str, kind: str, found: Any, named: set[str], blobs: Blobs | None
) -> None:
    """One context's lines or arcs: file name -> line numbers (or arcs), packed ones unpacked
    in place (a list is accepted too: a worker sends one where a number does not pack)."""
    if type(found) is not dict:
        raise _Malformed(f"context {_name(label)}: {kind} is not a dict")
    ok = _arcs_ok if kind == "arcs" else _lines_ok
    what = "pairs of line numbers" if kind == "arcs" else "line numbers"
    for path, items in found.items():
        # The messages are made only for a refusal: accepted chunks must not pay for a repr.
        if path not in named:  # (``named``: the file names found good in this payload)
            if not _is_path(path):
                raise _Malformed(f"context {_name(label)}: {kind} of a file named {_name(path)}")
            named.add(path)
        if type(items) is bytes:
            unpacked = _unpacked(kind, items) if blobs is None else blobs(kind, items)
            if type(unpacked) is frozenset:
                found[path] = unpacked  # (a value replaced: no new key)
                continue
            shown = unpacked
        elif ok(items):
            continue
        else:
            shown = _quote(items)
        raise _Malformed(
            f"{kind} of {_name(path)} are not {what} from"
            f" {-MAX_LINE if kind == 'arcs' else 0} to {MAX_LINE}: {shown}"
        )


def _check_payload(data: Any, blobs: Blobs | None = None) -> Payload:
    """Every field of a payload, down to each line number: what is accepted here merges into
    the controller's data and is written to the data file, where one bad value would stop the
    whole write at the end of the run."""
    if type(data) is not dict:  # the repr only for a refusal (a chunk can be large)
        raise _Malformed(f"the payload is not a dict: {_quote(data)}")
    for key in ("contexts", "tracers", "touched"):
        _require(type(data.get(key)) is dict, f"the payload's {key!r} is not a dict")
    named: set[str] = set()
    for label, ctx in data["contexts"].items():
        # (no _require: its message would be made for every one of thousands of labels)
        if not _is_name(label):
            raise _Malformed(f"a context label {_name(label)}")
        if type(ctx) is not dict:
            raise _Malformed(f"context {_name(label)} is not a dict")
        _check_measured(label, "lines", ctx.get("lines"), named, blobs)
        _check_measured(label, "arcs", ctx.get("arcs"), named, blobs)
    for path, plugin in data["tracers"].items():
        if not _is_path(path):
            raise _Malformed(f"a tracer for a file named {_name(path)}")
        if not (_is_name(plugin) and bool(plugin)):
            raise _Malformed(f"the tracer of {_name(path)}: {_name(plugin)}")
    for plugin, paths in data["touched"].items():
        if not _is_name(plugin):
            raise _Malformed(f"files touched by a plugin named {_name(plugin)}")
        if not (type(paths) in (list, tuple) and all(_is_path(p) for p in paths)):
            raise _Malformed(
                f"the files touched by {_quote(plugin)} are not file names: {_quote(paths)}"
            )
    return cast(Payload, data)


def _check_notes(raw: dict[str, Any]) -> None:
    _require(
        _is_strings(raw.get("notes")), f"its notes are not strings: {_quote(raw.get('notes'))}"
    )


#: How a refusal names each kind of message.
_KINDS = {"hello": "hello", "chunk": "chunk", "final": "final message"}


def decode(raw: Any, blobs: Blobs | None = None) -> Message:
    """Validate one message received from a worker, every field of it, and return it typed
    (``blobs``: the blobs of lines and arcs decoded lately, to decode each only once).

    Raises :class:`ProtocolError` saying what is wrong ("a malformed chunk: ...", the values
    it quotes escaped and cut short); the message is then to be left out whole.
    """
    kind = raw.get("kind") if type(raw) is dict else None
    try:
        return _decode(raw, blobs)
    except _Malformed as exc:
        what = _KINDS.get(kind, "message") if type(kind) is str else "message"
        raise ProtocolError(f"a malformed {what}: {exc}") from None


def _decode(raw: Any, blobs: Blobs | None) -> Message:
    _require(type(raw) is dict, f"expected a dict, got {type(raw).__name__}")
    proto = raw.get("proto")
    if not _is_int(proto) or proto != PROTOCOL_VERSION:
        raise ProtocolError(
            f"a message of pytest-distcov protocol {_quote(proto)}, the controller speaks"
            f" {PROTOCOL_VERSION}: install the same pytest-distcov version on every host"
        )
    kind = raw.get("kind")
    _require(type(raw.get("worker")) is str, f"its worker id is {_quote(raw.get('worker'))}")
    if kind == "hello":
        for key in ("host", "python", "coverage", "core"):
            _require(type(raw.get(key)) is str, f"its {key!r} is {_quote(raw.get(key))}")
        _require(_is_path(raw.get("datadir")), f"its 'datadir' is {_quote(raw.get('datadir'))}")
        pid = raw.get("pid")
        _require(_is_int(pid) and pid > 0, f"its 'pid' is {_quote(pid)}")
        raw.setdefault("notes", [])
        _check_notes(raw)
        return cast(Hello, raw)
    if kind in ("chunk", "final"):
        for key in ("seq", "tests"):
            value = raw.get(key)
            _require(_is_int(value) and value >= 0, f"its {key!r} is {_quote(value)}")
        _check_notes(raw)
        _check_payload(raw.get("data"), blobs)
        return cast(Chunk, raw)
    raise _Malformed(f"unknown kind {_quote(kind)}")

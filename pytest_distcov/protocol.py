"""Messages between a worker and the controller, versioned; standard library only.

A worker sends, on its private execnet channel, in this order:

* one ``hello``: who it is (id, host, pid, Python, coverage version) and where its durable
  data file lives, so that the controller can recover that file if the worker dies (and
  removes it once the combined data file is written: the worker leaves it there);
* any number of ``chunk`` messages: coverage data that is new since the previous message;
* one ``final``: the rest of its data, after its session ended cleanly.

Payloads are made of the builtin types execnet can carry (dict, list, tuple, str, int), never
coverage's own ``dumps()`` bytes: those only load into the very same coverage version, while
this shape is ours and stable. Every message carries ``proto``; a message of another protocol
version, or of the wrong shape, raises :class:`~pytest_distcov.errors.ProtocolError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypedDict, cast

from .errors import ProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "Chunk",
    "Hello",
    "Message",
    "Payload",
    "Recovered",
    "decode",
    "empty_payload",
]

#: A dead worker's recovered data file: (worker id, local path, its path mapper or None), as
#: the local and the remote recovery hand it to the finish step.
Recovered = tuple[str, str, Callable[[str], str] | None]

#: Bumped whenever a message changes shape. Worker and controller must agree exactly.
PROTOCOL_VERSION = 1

Arc = tuple[int, int]


class ContextData(TypedDict):
    """Lines or arcs measured under one coverage context, by file name."""

    lines: dict[str, list[int]]
    arcs: dict[str, list[Arc]]


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


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise ProtocolError(f"malformed message from a worker: {what}")


def _check_payload(data: Any) -> Payload:
    _require(isinstance(data, dict), "payload is not a dict")
    for key in ("contexts", "tracers", "touched"):
        _require(isinstance(data.get(key), dict), f"payload field {key!r} missing")
    for label, ctx in data["contexts"].items():
        _require(isinstance(label, str), "context label is not a string")
        _require(isinstance(ctx, dict), "context data is not a dict")
        _require(isinstance(ctx.get("lines"), dict), "context lines missing")
        _require(isinstance(ctx.get("arcs"), dict), "context arcs missing")
    return cast(Payload, data)


def decode(raw: Any) -> Message:
    """Validate one message received from a worker and return it typed."""
    _require(isinstance(raw, dict), f"expected a dict, got {type(raw).__name__}")
    proto = raw.get("proto")
    if proto != PROTOCOL_VERSION:
        raise ProtocolError(
            f"a worker speaks pytest-distcov protocol {proto!r}, the controller {PROTOCOL_VERSION}:"
            " install the same pytest-distcov version on every host"
        )
    kind = raw.get("kind")
    _require(isinstance(raw.get("worker"), str), "no worker id")
    if kind == "hello":
        for key in ("host", "python", "coverage", "core", "datadir"):
            _require(isinstance(raw.get(key), str), f"hello without {key!r}")
        _require(isinstance(raw.get("pid"), int), "hello without 'pid'")
        _require(isinstance(raw.setdefault("notes", []), list), "hello with bad 'notes'")
        return cast(Hello, raw)
    if kind in ("chunk", "final"):
        _require(isinstance(raw.get("seq"), int), "chunk without 'seq'")
        _require(isinstance(raw.get("tests"), int), "chunk without 'tests'")
        _require(isinstance(raw.get("notes"), list), "chunk without 'notes'")
        _check_payload(raw.get("data"))
        return cast(Chunk, raw)
    raise ProtocolError(f"malformed message from a worker: unknown kind {kind!r}")

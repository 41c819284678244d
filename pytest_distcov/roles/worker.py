"""The worker role: an xdist worker (local or on a remote host) that measures and streams.

After every test the engine makes what the test ran durable: what its data file does not hold
yet is appended to a journal beside it (most tests add nothing), so if the worker is killed,
the controller recovers both. Streaming to the controller is batched by time: a chunk is what
the engine's flushes added since the previous chunk, which it keeps in memory (where it cannot,
a chunk is what is new in the data file, after the journal is moved into it). The pause
between chunks grows with what a chunk costs, so streaming never takes more than about 2 % of
the worker's time.
"""

from __future__ import annotations

import os
import platform
import sqlite3
import time
from collections.abc import Generator
from typing import Any

import coverage
import pytest
from coverage.exceptions import CoverageException

from pytest_distcov.covapi.warnings import capture_coverage_warnings
from pytest_distcov.data.contexts import label
from pytest_distcov.data.readers import (
    ContextDeltaReader,
    DeltaReader,
    MemoryContextDelta,
    read_data_file,
)
from pytest_distcov.engine.measure import Engine
from pytest_distcov.errors import DataFileError
from pytest_distcov.protocol import (
    PROTOCOL_VERSION,
    Chunk,
    Hello,
    Payload,
    empty_payload,
    packed,
    payload_is_empty,
)

__all__ = ["ContextHooks", "NoCoverHooks", "WorkerRole"]

#: The pause is at least this many times what the last chunk cost, bounding the overhead (~2 %).
COST_FACTOR = 50.0


class NoCoverHooks:
    """pytest-cov's ``no_cover`` marker and fixture: the test's call phase is not measured."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        if item.get_closest_marker("no_cover") or "no_cover" in getattr(item, "fixturenames", ()):
            self.engine.pause()
            try:
                return (yield)
            finally:
                self.engine.resume()
        return (yield)


class ContextHooks:
    """Per-test contexts: each test phase's lines go under ``<node id>|<phase>``.

    Plain hooks registered at session start, as pytest-cov's ``--cov-context=test`` does, so
    that every other plugin's and conftest's code in these hooks lands in the same context as in
    a serial pytest-cov run.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self.engine.switch(label(item.nodeid, "setup"))

    def pytest_runtest_call(self, item: pytest.Item) -> None:
        self.engine.switch(label(item.nodeid, "run"))

    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        self.engine.switch(label(item.nodeid, "teardown"))


class WorkerRole:
    """Streams this worker's coverage to the controller over a private execnet channel."""

    def __init__(
        self, engine: Engine, channel: Any, worker_id: str, *, min_interval: float
    ) -> None:
        self.engine = engine
        self.channel = channel
        self.worker_id = worker_id
        self.reader: DeltaReader | ContextDeltaReader = (
            ContextDeltaReader(branch=engine.branch)
            if engine.context
            else DeltaReader(branch=engine.branch)
        )
        #: per-test contexts an engine keeps in memory (the monitor engine's)
        self.memory = MemoryContextDelta(branch=engine.branch)
        #: each file's items packed for the wire, for the next chunk holding the same set
        self._packs: dict[frozenset[Any], Any] = {}
        self.seq = 0
        self.tests = 0
        self.notes_sent = len(engine.notes)  # (the hello carries these)
        self.min_interval = min_interval
        self.interval = min_interval
        self.last_send = time.monotonic()
        engine.stream_from_memory()
        hello: Hello = {
            "proto": PROTOCOL_VERSION,
            "kind": "hello",
            "worker": worker_id,
            "host": platform.node(),
            "pid": os.getpid(),
            "python": platform.python_version(),
            "coverage": coverage.__version__,
            "core": engine.core,
            "datadir": str(engine.data_dir),
            "notes": list(engine.notes),
        }
        channel.send(hello)

    def _send(self, kind: str, payload: Payload, notes: list[str] | None = None) -> None:
        self.seq += 1
        chunk: Chunk = {
            "proto": PROTOCOL_VERSION,
            "kind": kind,  # type: ignore[typeddict-item]
            "worker": self.worker_id,
            "seq": self.seq,
            "tests": self.tests,
            "data": packed(payload, self._packs),
            "notes": notes or [],
        }
        self.channel.send(chunk)

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logfinish(self) -> None:
        self.engine.flush()
        self.tests += 1
        now = time.monotonic()
        if now - self.last_send < self.interval:
            return
        try:
            payload = self._fresh_payload()
        except (CoverageException, DataFileError, sqlite3.Error, OSError) as exc:
            # Streaming is a convenience: the data is durable in the file and goes out whole
            # at the end. A failed read must never break the user's run.
            self._note(f"could not read {self.engine.data_path} to stream it: {exc}")
        else:
            # A note (e.g. the data file could not be written) goes with the next chunk, so that
            # the controller has it even if this worker dies later.
            notes = self.engine.notes[self.notes_sent :]
            if notes or not payload_is_empty(payload):
                self.notes_sent += len(notes)
                self._send("chunk", payload, notes)
        done = time.monotonic()
        self.last_send = done
        # An explicit 0 means "after every test", whatever it costs.
        if self.min_interval > 0:
            self.interval = max(self.min_interval, COST_FACTOR * (done - now))

    def _fresh_payload(self) -> Payload:
        """What is new since the last chunk: kept in memory by the engine, or else read from
        the data file (after the journal is moved into it)."""
        contexts = self.engine.take_fresh_contexts()
        if contexts is not None:
            return self.memory.delta_of(contexts)
        fresh = self.engine.take_fresh()
        if fresh is not None and isinstance(self.reader, DeltaReader):
            return self.reader.delta_of(*fresh)
        with capture_coverage_warnings(self.engine.notes):
            self.engine.consolidate()
            return self.reader.delta_from_file(str(self.engine.data_path))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self) -> None:
        data = self.engine.finish()
        contexts = self.engine.take_fresh_contexts()
        if contexts:  # what the last chunk did not carry; the data file then adds the rest
            self._send("chunk", self.memory.delta_of(contexts))
        if isinstance(self.reader, ContextDeltaReader):
            try:
                data.write()  # everything is in the file: the reader reads it there
                self._send("chunk", self.reader.delta_from_file(self.engine.data_path))
            except (CoverageException, DataFileError, sqlite3.Error, OSError) as exc:
                self._note(
                    f"could not read {self.engine.data_path} at the end ({exc}): what this"
                    " worker measured after its last chunk is lost"
                )
        else:
            self._send("chunk", self.reader.delta(data))
        # Data of measured subprocesses, each file whole (the controller takes the union).
        for path in self.engine.subprocess_files():
            try:
                sub = read_data_file(path)
            except DataFileError as exc:
                # The note names the file: the controller then leaves this directory alone.
                self._note(f"{exc}; the file is kept for inspection")
                continue
            try:
                self._send("chunk", DeltaReader(branch=self.engine.branch).delta(sub))
            finally:
                sub.close(force=True)
        self._send("final", empty_payload(), self.engine.notes)
        # The durable copy stays: until the controller has written the combined data file, the
        # union in its memory is not safe. It removes this directory (named in the hello) then.

    def _note(self, note: str) -> None:
        if note not in self.engine.notes:
            self.engine.notes.append(note)

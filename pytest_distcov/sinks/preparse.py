"""Parsing the files a report will need while the tests still run, on CPU the run leaves idle.

In a first run (nothing in the :class:`~pytest_distcov.sinks.parses.ParseCache`) the report
parses every measured file after the last test, all of it added to the run's wall time. But
while the tests run, the CPU is not always busy (benchmarks/bench_overhead.py's ``distcov-cold``
mode times such first runs). So, as the controller learns of measured files (the first chunk of
every worker names the files it has run), it hands their names to a helper process at the lowest
scheduling priority (``nice`` 19), which parses them as coverage.py's report would and sends
each parse back. Under full load the helper gets next to no CPU and changes nothing; where a
core idles, it does the report's parsing there.

The report takes what the helper has sent, file by file as it needs them, into the parse
cache (each parse is checked against the file's text as the cache always does), and parses
the others itself; then the helper is stopped. Only POSIX (``nice``, non-blocking pipes), only
for files the cache does not know by name, and never under ``-O`` (the helper would have to
run with the same flags).
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import subprocess
import sys
from collections.abc import Iterable
from typing import IO

from .parses import ParseCache, parse_entry

__all__ = ["PreParser", "main"]

_LENGTH = 4  # bytes of the big-endian length before each record

#: Environment that would have coverage.py measure the helper (``patch = subprocess``, or a
#: sitecustomize that starts coverage): the helper is not part of the measured run.
_UNMEASURED = ("COVERAGE_PROCESS_START", "COVERAGE_PROCESS_CONFIG")


class PreParser:
    """The controller's side: starts the helper on the first file name it is given."""

    def __init__(
        self, cache: ParseCache, exclude: str | None, *, arcs: bool, relative_files: bool
    ) -> None:
        self.cache = cache
        self.exclude = exclude
        self.arcs = arcs
        self.relative_files = relative_files
        self._offered: set[str] = set()
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        #: names not yet written to the helper (its stdin pipe was full)
        self._outbox = bytearray()
        self._broken = False
        #: parses the helper sent back (a figure for tests and the curious)
        self.received = 0

    @staticmethod
    def possible() -> bool:
        return os.name == "posix" and hasattr(os, "nice") and not sys.flags.optimize

    def offer(self, names: Iterable[str]) -> None:
        """Have the helper parse these files (those not offered before, not in the cache).

        Never waits: the names are queued and written as far as the pipe takes them now; the
        rest goes with a later call (or never, and the report parses those files itself).
        """
        if self._broken:
            return
        fresh = [n for n in names if n not in self._offered and not self.cache.knows(n)]
        if not fresh:
            return
        self._offered.update(fresh)
        self._outbox += "".join(f"{name}\n" for name in fresh).encode("utf-8", "surrogateescape")
        if self._proc is None:
            try:
                self._start()
            except (OSError, ValueError):  # it could not start: the report parses
                self._broken = True
                return
        self.pump()

    def pump(self) -> None:
        """Move names to the helper and its parses to the cache, as far as that goes at once.

        Both pipes are non-blocking on this side, so a helper that is slow, stuck or gone never
        stalls the controller. Reading its output here (not only at report time) keeps the
        helper from blocking on a full stdout pipe, and so from no longer reading its stdin.
        """
        proc = self._proc
        if proc is None or proc.stdin is None or self._broken:
            return
        self.take()
        while self._outbox:
            try:
                sent = os.write(proc.stdin.fileno(), self._outbox[: 1 << 16])
            except BlockingIOError:
                return  # the pipe is full: the rest goes with a later call
            except (OSError, ValueError):  # the helper is gone: the report parses the rest
                self._broken = True
                self._outbox.clear()
                return
            del self._outbox[:sent]

    def _start(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k not in _UNMEASURED}
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest_distcov.sinks.preparse"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
        self._proc = proc
        assert proc.stdin is not None
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        os.set_blocking(proc.stdin.fileno(), False)
        settings = {"exclude": self.exclude, "arcs": self.arcs, "relative": self.relative_files}
        self._outbox[:0] = json.dumps(settings).encode() + b"\n"
        return proc

    def take(self) -> int:
        """Put what the helper has sent so far into the cache (without waiting for more)."""
        proc = self._proc
        if proc is None or proc.stdout is None:
            return 0
        chunks = [self._buffer]
        with contextlib.suppress(BlockingIOError, OSError, ValueError):
            while block := os.read(proc.stdout.fileno(), 1 << 16):
                chunks.append(block)
        data = b"".join(chunks)
        taken = 0
        while len(data) >= _LENGTH:
            size = int.from_bytes(data[:_LENGTH], "big")
            if len(data) < _LENGTH + size:
                break
            record, data = data[_LENGTH : _LENGTH + size], data[_LENGTH + size :]
            try:
                name, digest, blob = marshal.loads(record)
            except (EOFError, ValueError, TypeError):
                continue
            if isinstance(name, str) and isinstance(digest, bytes) and isinstance(blob, bytes):
                self.cache.adopt(name, digest, blob)
                taken += 1
        self._buffer = data
        self.received += taken
        return taken

    def stop(self) -> None:
        """Stop the helper (whatever it is doing) and wait for it to go."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _send(out: IO[bytes], record: bytes) -> None:
    out.write(len(record).to_bytes(_LENGTH, "big") + record)
    out.flush()


def main() -> None:
    """The helper: file names in on stdin, one a line; parses out on stdout."""
    with contextlib.suppress(OSError):
        os.nice(19)
    stdin = sys.stdin.buffer
    settings = json.loads(stdin.readline() or b"{}")
    exclude, arcs = settings.get("exclude"), bool(settings.get("arcs"))
    relative = bool(settings.get("relative"))
    out = sys.stdout.buffer
    for line in stdin:
        name = line.rstrip(b"\n").decode("utf-8", "surrogateescape")
        entry = parse_entry(name, exclude, arcs=arcs, relative_files=relative)
        if entry is not None:
            try:
                _send(out, marshal.dumps(entry))
            except (BrokenPipeError, OSError):
                return


if __name__ == "__main__":
    main()

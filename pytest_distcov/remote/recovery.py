"""Recovering a dead remote worker's data: fetched from its host, off the main thread.

The controller learns of the death while the tests run. Whether the host still answers is
asked at once, on the main thread and bounded by the ping's timeout: xdist's restart of the
worker needs that answer now, and the remote hooks' rerouting reads it next (a ping made by the
fetch thread would hold the host's lock and leave them a stale answer). The fetch, which can
take up to its own timeout, runs on a thread of its own; :meth:`RemoteRecovery.collect` waits
for the fetches still under way at the end of the run, all together no longer than
:data:`FETCH_WAIT`, and abandons the rest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pytest_distcov.protocol import Hello, Recovered

from .fleet import HostSession, RemoteHooks

__all__ = ["FETCH_WAIT", "RemoteRecovery"]

#: Seconds the end of the run waits for a dead remote worker's data still being fetched (the
#: fetch's own timeout, plus the ping before it).
FETCH_WAIT = 130.0


class RemoteRecovery:
    """Fetches what dead workers flushed on their hosts into ``into`` (a directory each).

    ``say`` takes the summary's lines (from any thread); ``count_files`` describes the files
    fetched ("2 data files").
    """

    def __init__(
        self,
        hooks: RemoteHooks,
        into: Path,
        say: Callable[[str], None],
        count_files: Callable[[Sequence[str]], str],
    ) -> None:
        self.hooks = hooks
        self.into = into
        self.say = say
        self.count_files = count_files
        #: fetches under way, and what they brought (filled by their threads)
        self.fetches: list[threading.Thread] = []
        self.fetched: list[Recovered] = []
        self.abandoned = threading.Event()

    def recover(self, worker_id: str, hello: Hello, why: str) -> None:
        """Ask whether the host answers (here, on the main thread); then fetch on a thread."""
        host = self.hooks.host_of(worker_id)
        assert host is not None, worker_id
        if not self.hooks.fleet.ping(host):
            self.say(
                f"worker {worker_id} on host {host.spec.label} went down ({why}) and the host"
                " does not answer: keeping the coverage it streamed until then; what it"
                " measured after its last chunk is lost"
            )
            return
        thread = threading.Thread(
            target=self._fetch,
            args=(worker_id, hello["datadir"], why, host),
            name=f"distcov-fetch-{worker_id}",
            daemon=True,
        )
        self.fetches.append(thread)
        thread.start()

    def _fetch(self, worker_id: str, datadir: str, why: str, host: HostSession) -> None:
        fleet = self.hooks.fleet
        where = f"worker {worker_id} on host {host.spec.label}"
        try:
            files = fleet.fetch(host, datadir)
            if self.abandoned.is_set():
                return  # too late: the run's data is being written without it
            target = self.into / f"recovered-{worker_id}"
            target.mkdir(parents=True, exist_ok=True)
            mapper = fleet.path_mapper(host)
            for name, content in files:
                path = target / name
                path.write_bytes(content)
                self.fetched.append((worker_id, str(path), mapper))
        except Exception as exc:  # whatever the host or the disk says: one line
            self.say(f"{where} crashed; fetching its data failed: {exc}")
            return
        self.hooks.leftovers.setdefault(host.spec.label, []).append(datadir)
        self.say(
            f"{where} crashed ({why}); recovered the data of its finished tests from the"
            f" host: {self.count_files([name for name, _ in files])}"
        )

    def collect(self) -> list[Recovered]:
        """Wait for the fetches still under way, all of them together no longer than
        FETCH_WAIT; a fetch still under way then keeps what it brings to itself."""
        deadline = time.monotonic() + FETCH_WAIT
        for thread in self.fetches:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self.say(
                    f"{thread.name.removeprefix('distcov-fetch-')}: its host did not hand"
                    f" over the worker's data within {FETCH_WAIT:.0f} s; what it measured"
                    " after its last chunk is lost"
                )
        self.abandoned.set()
        self.fetches.clear()
        fetched, self.fetched = self.fetched, []
        return fetched

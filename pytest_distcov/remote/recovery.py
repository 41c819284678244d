"""Recovering a dead remote worker's data: fetched from its host, off the main thread.

The controller learns of the death while the tests run. Whether the host still answers is
asked at once, on the main thread and bounded by the ping's timeout: xdist's restart of the
worker needs that answer now, and the remote hooks' rerouting reads it next (a ping made by the
fetch thread would hold the host's lock and leave them a stale answer). The fetch, which can
take up to its own timeout, runs on a thread of its own; :meth:`RemoteRecovery.collect` waits
for the fetches still under way at the end of the run, all together no longer than
:data:`FETCH_WAIT`, and abandons the rest.

The directory fetched (and removed on the host at the end) is the one the worker's hello named,
and only when it is that worker's directory of this run, directly in the host's run directory
(:meth:`~pytest_distcov.tempdirs.RunDirs.remote`). What the host answers is shown through
:func:`~pytest_distcov.errors.printable`, like everything a host says.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pytest_distcov.errors import printable
from pytest_distcov.protocol import Hello, Recovered
from pytest_distcov.tempdirs import RunDirs

from .fleet import HostSession, RemoteHooks

__all__ = ["FETCH_WAIT", "RemoteRecovery"]

#: Seconds the end of the run waits for a dead remote worker's data still being fetched (the
#: fetch's own timeout, plus the ping before it).
FETCH_WAIT = 130.0


class RemoteRecovery:
    """Fetches what dead workers flushed on their hosts into ``into`` (a directory each).

    ``say`` takes the summary's lines (from any thread); ``count_files`` describes the files
    fetched ("2 data files"); ``dirs`` says which directories a worker's hello may name.
    """

    def __init__(
        self,
        hooks: RemoteHooks,
        into: Path,
        say: Callable[[str], None],
        count_files: Callable[[Sequence[str]], str],
        dirs: RunDirs,
    ) -> None:
        self.hooks = hooks
        self.into = into
        self._say = say
        self.count_files = count_files
        self.dirs = dirs
        #: fetches under way, and what they brought (filled by their threads)
        self.fetches: list[threading.Thread] = []
        self.fetched: list[Recovered] = []
        self.abandoned = threading.Event()

    def say(self, line: str) -> None:
        """A line for the summary (from any thread), with what the host said made printable."""
        self._say(printable(line))

    def recover(self, worker_id: str, hello: Hello, why: str, *, refused: bool = False) -> None:
        """Ask whether the host answers (here, on the main thread); then fetch on a thread.
        ``refused``: the worker finished, but a message of it was refused (``why``)."""
        host = self.hooks.host_of(worker_id)
        assert host is not None, worker_id
        where = f"worker {worker_id} on host {host.spec.label}"
        event = f"{where} {why}" if refused else f"{where} went down ({why})"
        datadir = self.dirs.remote(worker_id, hello["datadir"], host.info.get("run_dir"))
        if datadir is None:
            self.say(
                f"{event}; its directory {hello['datadir']} is not one of this run's there:"
                " nothing is fetched from it; the coverage it streamed is kept"
            )
            return
        if not self.hooks.fleet.ping(host):
            lost = "in the messages refused" if refused else "after its last chunk"
            self.say(
                f"{event} and the host does not answer: keeping the coverage it streamed"
                f" until then; what it measured {lost} is lost"
            )
            return
        event = f"{where} {why}" if refused else f"{where} crashed ({why})"
        thread = threading.Thread(
            target=self._fetch,
            args=(worker_id, datadir, host, event, refused),
            name=f"distcov-fetch-{worker_id}",
            daemon=True,
        )
        self.fetches.append(thread)
        thread.start()

    def _fetch(
        self, worker_id: str, datadir: str, host: HostSession, event: str, refused: bool
    ) -> None:
        """Fetch the worker's data files; ``event`` says what happened to the worker."""
        fleet = self.hooks.fleet
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
            self.say(f"{event}; fetching its data failed: {exc}")
            return
        self.hooks.leftovers.setdefault(host.spec.label, []).append(datadir)
        what = "all of its data" if refused else "the data of its finished tests"
        self.say(
            f"{event}; recovered {what} from the host:"
            f" {self.count_files([name for name, _ in files])}"
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

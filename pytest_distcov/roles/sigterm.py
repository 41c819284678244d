"""SIGTERM (what CI sends on a timeout or a cancel) stops the run as Ctrl-C does."""

from __future__ import annotations

import signal
import threading
from collections.abc import Generator
from typing import Protocol

import pytest

__all__ = ["RunState", "SigtermStop"]


class RunState(Protocol):
    """What the handler asks of the controller."""

    @property
    def finished(self) -> bool:
        """The run's data is being (or has been) saved."""

    @property
    def merging(self) -> bool:
        """A merge of received data is under way."""

    @property
    def session(self) -> pytest.Session | None: ...


class SigtermStop:
    """SIGTERM stops the run as Ctrl-C does.

    The handler raises KeyboardInterrupt in the main thread, so pytest's own interrupt handling
    runs (xdist's shuts the workers down); the controller then saves the data of every test
    that finished, reports, and pytest exits with ``ExitCode.INTERRUPTED``. It is installed only
    where SIGTERM has its default action (a handler installed by someone else is left alone),
    and the default comes back at the end. Further SIGTERMs are ignored: the run is stopping
    already, and one while the data is being saved would lose it (SIGKILL still ends it). A
    merge in progress is finished before the interrupt is raised.
    """

    MESSAGE = "SIGTERM: stopping as on Ctrl-C"

    def __init__(self, run: RunState) -> None:
        self.run = run
        self.installed = False
        self.received = 0
        self.stopped = False
        self.deferred = False
        #: the session is finishing (see pytest_sessionfinish)
        self.ending = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set in the main thread
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        signal.signal(signal.SIGTERM, self._handle)
        self.installed = True

    def uninstall(self) -> None:
        if self.installed and signal.getsignal(signal.SIGTERM) == self._handle:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.installed = False

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_sessionfinish(self) -> Generator[None, object, object]:
        """From here on the session is ending: a SIGTERM now is counted, never raised (an
        interrupt in a session-finish hook would escape pytest and lose the run's data)."""
        self.ending = True
        return (yield)

    def _handle(self, signum: int, frame: object) -> None:
        self.received += 1
        if self.received > 1 or self.ending or self.run.finished:
            return  # stopping (or saving) already
        self.stopped = True
        session = self.run.session
        if session is not None:
            # if a test swallows the KeyboardInterrupt, pytest still stops after that test
            session.shouldstop = self.MESSAGE
        if self.run.merging:
            self.deferred = True
            return
        raise KeyboardInterrupt(self.MESSAGE)

    def raise_if_deferred(self) -> None:
        if self.deferred and not self.run.finished:
            self.deferred = False
            raise KeyboardInterrupt(self.MESSAGE)

    def note(self) -> str | None:
        """A line for the summary (after ``distcov: ``), if a SIGTERM came."""
        if not self.stopped:
            return (
                "SIGTERM received while the run was finishing: ignored" if self.received else None
            )
        more = self.received - 1
        ignored = f"; {more} more SIGTERM ignored while finishing" if more else ""
        return (
            "stopped by SIGTERM (as by Ctrl-C); the coverage of the tests that"
            f" finished is kept{ignored}"
        )

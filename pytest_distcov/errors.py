"""The exceptions pytest-distcov raises.

Hierarchy::

    DistCovError                 anything pytest-distcov reports as a clear, one-line error
    ├── SettingsError            a bad option, ini value or coverage config (-> pytest.UsageError)
    ├── ProtocolError            a worker message we cannot understand (version, shape)
    ├── DataFileError            a coverage data file that cannot be read or written
    ├── RemoteError              a remote host that cannot be used (one line per host)
    ├── StoreError               a shard store that cannot be read or written
    └── ReportError              a report that cannot be produced
        └── NothingToReport      no data matched what the reports were asked to show

Every message is written for the user: it names the option, file or worker concerned and, where
there is one, what to do. The edges (the pytest plugin and the command line) turn these into
``pytest.UsageError``, a terminal line, or an exit status; users never see a traceback for them.

A message often quotes what another process or machine said: a worker's notes, a host's name or
error, a file name a worker measured. :func:`printable` is the one place such a string goes
through before it is part of a line for the terminal, so that it stays text on one line.
"""

from __future__ import annotations

__all__ = [
    "DataFileError",
    "DistCovError",
    "NothingToReport",
    "ProtocolError",
    "RemoteError",
    "ReportError",
    "SettingsError",
    "StoreError",
    "UntrustedPath",
    "printable",
]


class DistCovError(Exception):
    """Base class of every error pytest-distcov reports to the user."""


class SettingsError(DistCovError):
    """A bad command-line option, ini value, or coverage configuration."""


class ProtocolError(DistCovError):
    """A message between worker and controller that does not follow the protocol."""


class DataFileError(DistCovError):
    """A coverage data file that cannot be read or written."""


class RemoteError(DistCovError):
    """A remote host that cannot be used: one line per host, each naming what to do."""


class StoreError(DistCovError):
    """A shard store (directory or S3 prefix) that cannot be listed, read or written."""


class ReportError(DistCovError):
    """A report that cannot be produced."""


class NothingToReport(ReportError):
    """The data holds nothing the reports could show (e.g. ``source`` matched no file)."""


class UntrustedPath(ValueError):
    """A path a path mapper refuses: one that another machine (or a worker) wrote and that
    would lead outside the project (``../../etc/passwd``, ``/etc/hostname``) or name what is
    no regular file here (a FIFO, ``/dev/zero``). The message says why, starting with "it
    names" (the file or message that holds it is the subject)."""


def printable(text: str, *, newlines: bool = False) -> str:
    """``text`` as it may be shown on a terminal: every character that is not printable (control
    characters such as ANSI escapes, ``\\r``, ``\\n`` and ``\\x00``, Unicode line separators and
    format characters, lone surrogates of an undecodable file name) escaped as a ``repr`` would
    escape it; everything else as it is (a backslash too, so Windows paths stay readable).

    A string from another process (a worker's note, a host's name or error, a measured file's
    name) can hold anything a file name or a program can: in a terminal, ``\\x1b[2J`` clears
    the screen, ``\\r`` overwrites the line, and ``\\n`` splits one line of ours into two,
    the second of which looks like anything. With ``newlines`` a ``\\n`` is kept (a text of
    several lines, made here); every other character is escaped all the same.
    """
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() or (newlines and ch == "\n") else repr(ch)[1:-1] for ch in text
    )

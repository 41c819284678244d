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

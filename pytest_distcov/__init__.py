"""pytest-distcov: exact coverage from parallel and distributed pytest runs, combined live.

The pytest plugin is :mod:`pytest_distcov.plugin` (entry point ``distcov``); the command line
is ``pytest-distcov`` / ``python -m pytest_distcov``. This module imports nothing heavy.
"""

from __future__ import annotations

from .errors import (
    DataFileError,
    DistCovError,
    NothingToReport,
    ProtocolError,
    RemoteError,
    ReportError,
    SettingsError,
    StoreError,
)

__all__ = [
    "DataFileError",
    "DistCovError",
    "NothingToReport",
    "ProtocolError",
    "RemoteError",
    "ReportError",
    "SettingsError",
    "StoreError",
    "__version__",
]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import version

        return version("pytest-distcov")
    raise AttributeError(f"module 'pytest_distcov' has no attribute {name!r}")

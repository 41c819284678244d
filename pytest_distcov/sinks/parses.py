"""Source parses for reports: one a file for all of a run's reports, and kept across runs.

coverage.py parses every file it reports (tokens, AST, code objects: statements, exclusions,
multi-line statements, arcs) again for every report, and again in every run. Parsing is most of
a report's time, spent by the controller after every worker is done (benchmarks/bench_scale.py
times the end of a run and ``coverage report`` alone). A parse depends only on the file's name
and text, the exclusion regex, the interpreter (its version and ``-O``) and coverage.py's
version. So:

* :func:`share_parses` has one ``Coverage`` keep the parse of each file (its state, compact,
  without the AST: as coverage.py itself, no reporter is kept once its file is reported, so
  memory grows with the parses' state, not with whole parsers), so every report of a run
  restores the parse the first one made;
* with a :class:`ParseCache` (the plugin keeps one in pytest's cache directory), a parse is
  stored under a digest of all of the above, and a later run of the same files restores it
  in a small part of the time a parse takes (benchmarks/bench_overhead.py: ``distcov``, whose
  cache persists, against ``distcov-cold``, which clears it before every run).

Both reach into coverage.py (``Coverage._get_file_reporter``, ``PythonFileReporter._parser``
and the parser's attributes, stored and restored as a whole, whatever they are) through
:mod:`pytest_distcov.covapi.parser`, and are off where it finds them missing. A parse is
restored only into the coverage.py version that made it (its version is in the digest).
Anything unexpected (an unreadable cache file, state that is not plain data) means the file is
parsed as coverage.py always does; a cache never makes a report fail. The cache is read with
``marshal``, as Python reads the ``.pyc`` files beside it: it is trusted as much as the
checkout's ``__pycache__``.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import sys
from collections.abc import Callable
from pathlib import Path

import coverage
from coverage import Coverage

from pytest_distcov.covapi.parser import (
    Parser,
    keep_parses,
    parse_file,
    parse_of,
    parser_inputs,
    state_of,
)

__all__ = ["ParseCache", "SharedParses", "parse_entry", "share_parses"]

#: Bump when what is stored changes meaning.
_FORMAT = 1
#: Entries kept at most; beyond it only the files of the latest run are kept.
_MAX_ENTRIES = 5000


def _digest(filename: str, exclude: str | None, text: str) -> bytes:
    h = hashlib.sha256()
    for part in (
        str(_FORMAT),
        coverage.__version__,
        sys.version,
        str(sys.flags.optimize),  # -O drops asserts from the code objects coverage.py reads
        filename,
        exclude or "",
    ):
        h.update(part.encode("utf-8", "surrogatepass") + b"\0")
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.digest()


class ParseCache:
    """Parses of source files, in one file (``path``), by file name and digest."""

    def __init__(self, path: Path | None) -> None:
        """``path`` None: kept in memory only, for the reports of one run."""
        self.path = path
        self._entries: dict[str, tuple[bytes, bytes]] = {}
        self._changed: dict[str, tuple[bytes, bytes]] = {}
        #: called before each lookup: adopts parses made elsewhere meanwhile (preparse.py)
        self.incoming: Callable[[], object] | None = None
        self._read()

    def _read(self) -> None:
        if self.path is None:
            return
        try:
            blob = marshal.loads(self.path.read_bytes())
        except (OSError, EOFError, ValueError, TypeError):
            return  # none yet, or unreadable: it is rebuilt by this run
        if not (isinstance(blob, tuple) and len(blob) == 2 and blob[0] == _FORMAT):
            return
        entries = blob[1]
        if not isinstance(entries, dict):
            return
        self._entries = {
            name: entry
            for name, entry in entries.items()
            if isinstance(name, str)
            and isinstance(entry, tuple)
            and len(entry) == 2
            and all(isinstance(part, bytes) for part in entry)
        }

    def restore(
        self, filename: str, exclude: str | None, text: str, *, arcs: bool
    ) -> dict[str, object] | None:
        """The stored parser state of this very text, or None. With ``arcs``, only a state
        that has the arcs (a parse restored without them could not compute them)."""
        if self.incoming is not None:
            self.incoming()
        entry = self._entries.get(filename)
        if entry is None or entry[0] != _digest(filename, exclude, text):
            return None
        try:
            parse = marshal.loads(entry[1])
        except (EOFError, ValueError, TypeError):
            return None
        return state_of(parse, arcs=arcs)

    def knows(self, filename: str) -> bool:
        """True if a parse of some text of this file is stored (maybe not of today's text)."""
        return filename in self._entries

    def keep(self, parser: Parser) -> None:
        """Remember ``parser``'s parse (saved by :meth:`save`)."""
        entry = _entry_of(parser)
        if entry is not None:
            self.adopt(parser_inputs(parser)[0], *entry)

    def adopt(self, filename: str, digest: bytes, blob: bytes) -> None:
        """Remember a parse made elsewhere (:func:`parse_entry`); restored like any other."""
        entry = (digest, blob)
        if self._entries.get(filename) != entry:
            self._entries[filename] = self._changed[filename] = entry

    def save(self) -> None:
        """Write the cache if this run parsed anything new; failing to write loses nothing."""
        if not self._changed or self.path is None:
            return
        entries = {**self._entries, **self._changed}
        if len(entries) > _MAX_ENTRIES:
            entries = dict(self._changed)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(marshal.dumps((_FORMAT, entries)))
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return
        self._entries, self._changed = entries, {}


def _entry_of(parser: Parser) -> tuple[bytes, bytes] | None:
    """(digest, stored state) of a parse, or None when its state is not plain data."""
    parse = parse_of(parser)
    if parse is None:
        return None
    try:
        blob = marshal.dumps(parse)
    except ValueError:
        return None  # coverage.py keeps something that is not plain data: not cached
    return _digest(*parser_inputs(parser)), blob


def parse_entry(
    name: str, exclude: str | None, *, arcs: bool, relative_files: bool = False
) -> tuple[str, bytes, bytes] | None:
    """(file name, digest, stored state) of the parse a report makes of the measured file
    ``name``, as :meth:`ParseCache.adopt` takes it; None if it is not Python or not there.

    The file name is the one coverage.py's reporter gives the file, the parse is what its
    report asks for (see :func:`pytest_distcov.covapi.parser.parse_file`).
    """
    parser = parse_file(name, exclude, arcs=arcs, relative_files=relative_files)
    if parser is None:
        return None
    entry = _entry_of(parser)
    return None if entry is None else (parser_inputs(parser)[0], *entry)


class SharedParses:
    """The parses one ``Coverage`` shares between its reports (see :func:`share_parses`)."""

    def __init__(self, cache: ParseCache | None) -> None:
        #: in memory only when the run keeps no cache on disk
        self.cache = cache if cache is not None else ParseCache(None)
        #: True when the reports share parses; False when this coverage.py lacks what that
        #: needs (see :mod:`pytest_distcov.covapi.parser`): then each report parses, as
        #: coverage does
        self.active = False
        #: files coverage.py parsed, and parses restored from the cache (figures for tests)
        self.parsed = 0
        self.restored = 0

    def restore(
        self, filename: str, exclude: str | None, text: str, *, arcs: bool
    ) -> dict[str, object] | None:
        """A parse of this very text from the cache (for the reporter that needs it)."""
        state = self.cache.restore(filename, exclude, text, arcs=arcs)
        if state is not None:
            self.restored += 1
        return state

    def keep(self, parser: Parser) -> None:
        """A parse coverage.py made: into the cache."""
        self.cache.keep(parser)
        self.parsed += 1

    def save(self) -> None:
        """Store the parses this run made in the cache, if it has a file."""
        self.cache.save()


def share_parses(cov: Coverage, cache: ParseCache | None = None) -> SharedParses:
    """Have ``cov`` parse each source file once for all its reports (and, with ``cache``,
    restore parses an earlier run made of the same text).

    Each file reporter coverage.py makes for a Python file (never a coverage plugin's) keeps
    its parse in the cache as soon as it is made, and restores it in the next report; what
    each report says is unchanged (see :func:`pytest_distcov.covapi.parser.keep_parses`).
    Where this coverage.py lacks what that needs, reports parse as they always do.
    """
    shared = SharedParses(cache)
    shared.active = keep_parses(cov, shared)
    return shared

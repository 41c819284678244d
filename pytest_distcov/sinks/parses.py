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

Both reach into coverage.py: ``Coverage._get_file_reporter``, ``PythonFileReporter._parser``
and the parser's attributes, which are stored and restored as a whole, whatever they are. A
parse is restored only into the coverage.py version that made it (its version is in the
digest). Anything unexpected (an unreadable cache file, state that is not plain data) means
the file is parsed as coverage.py always does; a cache never makes a report fail. The cache
is read with ``marshal``, as Python reads the ``.pyc`` files beside it: it is trusted as much
as the checkout's ``__pycache__``.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import marshal
import os
import sys
from collections.abc import Callable
from pathlib import Path

import coverage
from coverage import Coverage
from coverage.exceptions import CoverageException
from coverage.files import canonical_filename
from coverage.parser import PythonParser
from coverage.plugin import FileReporter
from coverage.python import PythonFileReporter, source_for_morf
from coverage.types import TMorf

__all__ = ["ParseCache", "SharedParses", "parse_entry", "share_parses"]

#: Bump when what is stored changes meaning.
_FORMAT = 1
#: Parser attributes that are not the parse: its inputs, the AST (dropped by coverage.py
#: itself once it has the arcs) and a memo that grows with what a report asks.
_NOT_STATE = frozenset({"text", "filename", "exclude", "_ast_root", "_first_line_cache"})
#: The parser attribute that holds the arcs, None until branch reporting asks for them.
_ARCS = "_all_arcs"
#: The factories of the ``defaultdict`` attributes a parser may have, by name.
_FACTORIES: dict[str, type] = {"list": list, "set": set, "dict": dict, "int": int}
_FACTORY_NAMES: dict[object, str] = {factory: name for name, factory in _FACTORIES.items()}
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
            state, defaults = marshal.loads(entry[1])
        except (EOFError, ValueError, TypeError):
            return None
        if not (isinstance(state, dict) and isinstance(defaults, dict)):
            return None
        if arcs and state.get(_ARCS) is None:
            return None
        for name, factory in defaults.items():
            value = state.get(name)
            if not isinstance(value, dict) or factory not in _FACTORIES:
                return None
            state[name] = collections.defaultdict(_FACTORIES[factory], value)
        return state

    def knows(self, filename: str) -> bool:
        """True if a parse of some text of this file is stored (maybe not of today's text)."""
        return filename in self._entries

    def keep(self, parser: PythonParser) -> None:
        """Remember ``parser``'s parse (saved by :meth:`save`)."""
        entry = _entry_of(parser)
        if entry is not None:
            self.adopt(parser.filename, *entry)

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


def _entry_of(parser: PythonParser) -> tuple[bytes, bytes] | None:
    """(digest, stored state) of a parse, or None when its state is not plain data."""
    state: dict[str, object] = {}
    defaults: dict[str, str] = {}
    for name, value in vars(parser).items():
        if name in _NOT_STATE:
            continue
        if isinstance(value, collections.defaultdict):
            factory = _FACTORY_NAMES.get(value.default_factory)
            if factory is None:
                return None  # not a kind of state this cache knows how to keep
            defaults[name] = factory
            state[name] = dict(value)
        else:
            state[name] = value
    try:
        blob = marshal.dumps((state, defaults))
    except ValueError:
        return None  # coverage.py keeps something that is not plain data: not cached
    return _digest(parser.filename, parser.exclude, parser.text), blob


def parse_entry(
    name: str, exclude: str | None, *, arcs: bool, relative_files: bool = False
) -> tuple[str, bytes, bytes] | None:
    """(file name, digest, stored state) of the parse a report makes of the measured file
    ``name``, as :meth:`ParseCache.adopt` takes it; None if it is not Python or not there.

    The file name is the one coverage.py's reporter gives the file (``PythonFileReporter``),
    the parse is what its report asks for: statements, exclusions, multi-line statements and,
    with ``arcs``, the arcs and their descriptions.
    """
    try:
        filename = source_for_morf(name)
        if not relative_files:
            filename = canonical_filename(filename)
        parser = PythonParser(filename=filename, exclude=exclude)
        parser.parse_source()
        if arcs:
            parser.arcs()
    except Exception:  # whatever coverage.py's report would say about it, it says it then
        return None
    entry = _entry_of(parser)
    return None if entry is None else (filename, *entry)


class _SharedReporter(PythonFileReporter):
    """coverage.py's reporter of a Python file whose parse is restored from, or kept in, a
    :class:`ParseCache`."""

    def __init__(self, morf: TMorf, cov: Coverage, shared: SharedParses, arcs: bool) -> None:
        super().__init__(morf, coverage=cov)
        self._distcov_shared = shared
        self._distcov_arcs = arcs

    @property
    def parser(self) -> PythonParser:
        if getattr(self, "_parser", None) is None:
            self._restore()
            if getattr(self, "_parser", None) is None:
                try:
                    parser = super().parser
                    if self._distcov_arcs:
                        parser.arcs()  # what the report of arc data asks next, kept with it
                except BaseException:
                    # coverage.py keeps the half-made parser of a file that is not Python, and
                    # would hand it to the next report as if it were whole; a reporter of its
                    # own (as each coverage.py report makes) fails there the same way again.
                    self._parser = None
                    raise
                self._distcov_shared.cache.keep(parser)
                self._distcov_shared.parsed += 1
                return parser
        return super().parser

    def _restore(self) -> None:
        assert self.coverage is not None
        exclude = self.coverage._exclude_regex("exclude")
        try:
            text = self.source()
        except (CoverageException, OSError):
            return  # coverage.py's own parse says what is wrong with the file
        shared = self._distcov_shared
        state = shared.cache.restore(self.filename, exclude, text, arcs=self._distcov_arcs)
        if state is None:
            return
        shared.restored += 1
        parser = PythonParser(text=text, filename=self.filename, exclude=exclude)
        vars(parser).update(state)
        self._parser = parser


class SharedParses:
    """The parses one ``Coverage`` shares between its reports (see :func:`share_parses`)."""

    def __init__(self, cache: ParseCache | None) -> None:
        #: in memory only when the run keeps no cache on disk
        self.cache = cache if cache is not None else ParseCache(None)
        #: True when the reports share parses; False when this coverage.py has no
        #: ``Coverage._get_file_reporter`` to wrap (then each report parses, as coverage does)
        self.active = False
        #: files coverage.py parsed, and parses restored from the cache (figures for tests)
        self.parsed = 0
        self.restored = 0

    def save(self) -> None:
        """Store the parses this run made in the cache, if it has a file."""
        self.cache.save()


def share_parses(cov: Coverage, cache: ParseCache | None = None) -> SharedParses:
    """Have ``cov`` parse each source file once for all its reports (and, with ``cache``,
    restore parses an earlier run made of the same text).

    Each file reporter coverage.py makes for a Python file (never a coverage plugin's) keeps
    its parse in the cache as soon as it is made, and restores it in the next report; what
    each report says is unchanged. The reporters themselves are not kept (coverage.py lets go
    of each once its file is reported, and so do we: a parser holds the file's AST). It wraps
    ``Coverage._get_file_reporter`` (not public); without it, reports parse as they always do.
    """
    shared = SharedParses(cache)
    original: Callable[[TMorf], FileReporter] | None = getattr(cov, "_get_file_reporter", None)
    if original is None:
        return shared
    arcs: bool | None = None

    def file_reporter(morf: TMorf) -> FileReporter:
        nonlocal arcs
        reporter = original(morf)
        if not isinstance(morf, str) or type(reporter) is not PythonFileReporter:
            return reporter
        if arcs is None:
            arcs = cov.get_data().has_arcs()
        return _SharedReporter(morf, cov, shared, arcs)

    cov._get_file_reporter = file_reporter  # type: ignore[method-assign]
    shared.active = True
    return shared

"""coverage.py's parses of source files, as the reports' parse sharing keeps and restores them.

coverage.py parses every file it reports again for every report (see
:mod:`pytest_distcov.sinks.parses`, which keeps parses in a cache). What that needs of
coverage.py, none of it public:

* ``Coverage._get_file_reporter`` (wrapped on the instance, so each report's reporter of a
  Python file is a :class:`PythonFileReporter` that restores or keeps its parse);
* ``PythonFileReporter._parser`` (where its ``parser`` property keeps the parse it made), set
  to a parser restored from the cache;
* ``Coverage._exclude_regex("exclude")`` (the regex the reporter's parser excludes lines by,
  part of what a parse depends on);
* ``PythonParser`` (``coverage.parser``) and its attributes, stored and restored as a whole,
  whatever they are, except its inputs, its AST and a memo (:data:`_NOT_STATE`), and
  ``source_for_morf`` and ``canonical_filename`` to name a file as the reporter does.

:func:`missing` is the start check; where anything is not there, reports parse as coverage.py
always does (:func:`keep_parses` returns False).
"""

from __future__ import annotations

import ast
import collections
from collections.abc import Callable
from typing import Protocol

from coverage import Coverage
from coverage.exceptions import CoverageException
from coverage.files import canonical_filename
from coverage.parser import PythonParser
from coverage.plugin import FileReporter
from coverage.python import PythonFileReporter, source_for_morf
from coverage.types import TMorf

__all__ = [
    "PARSES_NEEDS",
    "Parse",
    "ParseKeeper",
    "Parser",
    "exclude_regex",
    "exits_of",
    "keep_parses",
    "missing",
    "parse_file",
    "parse_of",
    "parser_inputs",
    "state_of",
]

#: coverage.py's parser of a Python file (the type the cache's signatures name).
Parser = PythonParser
#: A parse as plain data (``marshal`` writes it): the parser's attributes, each ``defaultdict``
#: as a dict, and by attribute name the factory of each ``defaultdict``.
Parse = tuple[dict[str, object], dict[str, str]]

#: What parse sharing relies on, as the start check names it (see :func:`missing`).
PARSES_NEEDS = (
    "Coverage._get_file_reporter",
    "Coverage._exclude_regex",
    "PythonFileReporter._parser",
)

#: Parser attributes that are not the parse: its inputs, the AST (dropped by coverage.py
#: itself once it has the arcs) and a memo that grows with what a report asks.
_NOT_STATE = frozenset({"text", "filename", "exclude", "_ast_root", "_first_line_cache"})
#: The parser attribute that holds the arcs, None until branch reporting asks for them.
_ARCS = "_all_arcs"
#: The factories of the ``defaultdict`` attributes a parser may have, by name.
_FACTORIES: dict[str, type] = {"list": list, "set": set, "dict": dict, "int": int}
_FACTORY_NAMES: dict[object, str] = {factory: name for name, factory in _FACTORIES.items()}


def missing(cov: Coverage) -> list[str]:
    """Parse sharing's internals this Coverage (and coverage.py's reporter) lacks."""
    out = [
        f"Coverage.{name}"
        for name in ("_get_file_reporter", "_exclude_regex")
        if not callable(getattr(cov, name, None))
    ]
    prop = getattr(PythonFileReporter, "parser", None)
    code = getattr(prop.fget if isinstance(prop, property) else None, "__code__", None)
    if code is None or "_parser" not in code.co_names:
        out.append("PythonFileReporter._parser")
    return out


def exclude_regex(cov: Coverage) -> str | None:
    """The regex ``cov``'s reports exclude lines by (``[report] exclude_lines``); None where
    this coverage.py does not say (then :func:`keep_parses` is off too)."""
    regex: Callable[[str], str] | None = getattr(cov, "_exclude_regex", None)
    return regex("exclude") if callable(regex) else None


def parser_inputs(parser: PythonParser) -> tuple[str, str | None, str]:
    """(file name, exclusion regex, text): what ``parser``'s parse depends on in the file."""
    return parser.filename, parser.exclude, parser.text


def parse_of(parser: PythonParser) -> Parse | None:
    """``parser``'s parse as plain data, or None when its state is of a kind not kept here
    (a ``defaultdict`` of another factory). Whether each value is plain data is the caller's
    to check (``marshal`` refuses what is not)."""
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
    return state, defaults


def state_of(parse: object, *, arcs: bool) -> dict[str, object] | None:
    """The parser attributes a :data:`Parse` read back restores, or None if it is not one.
    With ``arcs``, only a parse that has the arcs (one without could not compute them)."""
    if not (isinstance(parse, tuple) and len(parse) == 2):
        return None
    state, defaults = parse
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


def parse_file(
    name: str, exclude: str | None, *, arcs: bool, relative_files: bool = False
) -> PythonParser | None:
    """The parser a report makes of the measured file ``name``, parsed as the report asks
    (statements, exclusions, multi-line statements and, with ``arcs``, the arcs and their
    descriptions); None if it is not Python or not there.

    The file name is the one coverage.py's reporter gives the file (``PythonFileReporter``).
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
    return parser


#: What :func:`exits_of` finds: each line's exits, each line's exit count, and the source's
#: AST (or None).
Exits = tuple[dict[int, set[int]], dict[int, int], ast.Module | None]


def exits_of(text: str, filename: str) -> Exits:
    """The exits coverage.py's parser finds for each line of the Python source ``text``
    (the destinations of its possible arcs, by the line they leave; lines as the report
    numbers them), its exit counts (a line with more than one is a branch line), and the
    AST the parser made of ``text``, which the caller may change once this returns (None if
    the parser keeps it no more where it did: ``PythonParser._ast_root``, read before the arc
    analysis, which only reads it, drops it)."""
    parser = PythonParser(text=text, filename=filename)
    parser.parse_source()
    tree = getattr(parser, "_ast_root", None)
    exits: dict[int, set[int]] = {}
    for first, second in parser.arcs():
        if first > 0:
            exits.setdefault(first, set()).add(second)
    return exits, parser.exit_counts(), tree if type(tree) is ast.Module else None


class ParseKeeper(Protocol):
    """Where reports' parses are kept and restored from (see :func:`keep_parses`)."""

    def restore(
        self, filename: str, exclude: str | None, text: str, *, arcs: bool
    ) -> dict[str, object] | None:
        """The parser attributes of a kept parse of this very text, or None."""

    def keep(self, parser: PythonParser) -> None:
        """A parse coverage.py just made."""


class _KeepingReporter(PythonFileReporter):
    """coverage.py's reporter of a Python file whose parse is restored from, or kept by, a
    :class:`ParseKeeper`."""

    def __init__(self, morf: TMorf, cov: Coverage, keeper: ParseKeeper, arcs: bool) -> None:
        super().__init__(morf, coverage=cov)
        self._distcov_keeper = keeper
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
                self._distcov_keeper.keep(parser)
                return parser
        return super().parser

    def _restore(self) -> None:
        assert self.coverage is not None
        exclude = self.coverage._exclude_regex("exclude")
        try:
            text = self.source()
        except (CoverageException, OSError):
            return  # coverage.py's own parse says what is wrong with the file
        keeper = self._distcov_keeper
        state = keeper.restore(self.filename, exclude, text, arcs=self._distcov_arcs)
        if state is None:
            return
        parser = PythonParser(text=text, filename=self.filename, exclude=exclude)
        vars(parser).update(state)
        self._parser = parser


def keep_parses(cov: Coverage, keeper: ParseKeeper) -> bool:
    """Have each of ``cov``'s reporters of a Python file (never a coverage plugin's) restore
    its parse from ``keeper`` or, when it parses, give the parse to ``keeper``; False (and
    ``cov`` untouched) where this coverage.py lacks what that needs (:func:`missing`).

    Wraps ``Coverage._get_file_reporter`` on the instance. The reporters themselves are not
    kept (coverage.py lets go of each once its file is reported, and so do we: a parser holds
    the file's AST).
    """
    if missing(cov):
        return False
    original: Callable[[TMorf], FileReporter] = cov._get_file_reporter
    arcs: bool | None = None

    def file_reporter(morf: TMorf) -> FileReporter:
        nonlocal arcs
        reporter = original(morf)
        if not isinstance(morf, str) or type(reporter) is not PythonFileReporter:
            return reporter
        if arcs is None:
            arcs = cov.get_data().has_arcs()
        return _KeepingReporter(morf, cov, keeper, arcs)

    cov._get_file_reporter = file_reporter  # type: ignore[method-assign]
    return True

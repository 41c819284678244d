"""Command-line options and ini keys, declared once, resolved once into a frozen :class:`Settings`.

Every option is one :class:`Option` in :data:`OPTIONS`: its flag, its ini key and that key's real
type, both help texts, its default and its converter. :func:`add_options` registers the table
with pytest, and :func:`lookup` is the one precedence rule, highest first: command line, then the
pytest ini file (pytest.ini, pyproject.toml, tox.ini or setup.cfg, whichever pytest chose), then
an environment variable where an option has one, then coverage.py's own configuration where it is
a layer of the option, then the default. A value keeps where it came from, so every bad value
raises :class:`SettingsError` naming its origin, e.g.
``invalid value 'abc' for distcov_fail_under in pytest.ini: expected a number from 0 to 100``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pytest_distcov.errors import SettingsError, StoreError

from .reportspec import REPORT_KINDS, ReportSpec, parse_percent, parse_report_spec

if TYPE_CHECKING:
    import pytest

    from .hosts import HostSpec

# Every pytest start imports this module (the options are declared here), with or without
# --distcov, and so does the `pytest-distcov report` command (the report sink reads fail-under's
# coverage layer through it): it imports neither pytest nor coverage.py at module level, and what
# only remote hosts or stores need is imported when they are asked for.

__all__ = ["OPTIONS", "Found", "Layers", "Option", "Settings", "add_options", "lookup", "resolve"]


@dataclass(frozen=True)
class Settings:
    """Everything the run needs to know about pytest-distcov's options, validated."""

    enabled: bool
    source: tuple[str, ...] | None
    reports: tuple[ReportSpec, ...]
    fail_under: float | None
    branch: bool | None
    config_file: str | bool
    append: bool
    stream_interval: float
    remote: tuple[HostSpec, ...] = ()
    remote_ignore: tuple[str, ...] = ()
    #: patterns of secret-looking project files to ship all the same
    remote_include: tuple[str, ...] = ()
    #: seconds a host may take to connect, start its Python and answer
    remote_timeout: float = 30.0
    #: bytes a host's cache of shipped files may hold (least recently used pruned first)
    remote_cache_size: int = 2 << 30
    coveralls: bool = False
    coveralls_required: bool = False
    #: a directory (absolute) or s3://bucket/prefix that receives this run's shard
    store: str | None = None
    #: "test" for per-test contexts, else None
    context: str | None = None
    #: what measures: "auto", "coverage" (coverage.py's cores) or "probes" (SlipCover's)
    engine: str = "auto"


# -- the precedence rule ------------------------------------------------------------------------

T = TypeVar("T")
B = TypeVar("B")

#: The layers a value can come from, highest first.
Layer = Literal["command line", "ini file", "environment", "coverage config", "default"]
#: The types pytest's ``Parser.addini`` knows.
IniType = Literal["string", "paths", "pathlist", "args", "linelist", "bool", "int", "float"]


@dataclass(frozen=True)
class Found:
    """A raw value as a layer gave it, and where: ``origin`` is how messages name it."""

    raw: Any
    layer: Layer
    origin: str
    #: the directory a relative path from this layer is relative to: the ini file's (None: the
    #: current directory, as for the command line)
    base: Path | None = None

    def path(self, text: str | Path) -> Path:
        return self.base / text if self.base is not None else Path(text)


@dataclass(frozen=True)
class Layers:
    """Where values may come from; a layer that is None is skipped.

    The plugin resolves with a config and the environment, and no coverage.py (starting pytest
    must stay light): an option whose coverage layer is left out then settles on its default,
    None, which tells coverage.py to apply its own configuration. The report sink, which has a
    ``Coverage`` at hand, reads fail-under's coverage layer with ``Layers(coverage=...)``.
    """

    #: its command line (the known args, parsed early) and its ini file
    config: pytest.Config | None = None
    environ: Mapping[str, str] | None = None
    #: coverage.py's ``Coverage.get_option``
    coverage: Callable[[str], object] | None = None


@dataclass(frozen=True)
class Option(Generic[T]):
    """One option: everything pytest registers for it, and how its raw value becomes a setting.

    ``name`` is both argparse's dest and the ini key (a check below keeps the flag in step), so
    a value can never be asked for under a name pytest does not know.
    """

    name: str
    #: raw value (as the layer in ``found`` gave it) -> setting; a SettingsError names the origin
    convert: Callable[[Any, Found], T]
    #: the setting when no layer gives a value (already a setting: not converted)
    default: T
    flag: str | None = None  # None: an ini key only
    help: str = ""
    metavar: str | None = None
    action: Literal["store", "store_true", "append"] = "store"
    ini_type: IniType | None = None  # None: a command-line flag only
    ini_help: str = ""
    #: an environment variable, read below the ini file
    env: str | None = None
    #: coverage.py's own option ("report:fail_under"), read below the ini file and the environment
    coverage: str | None = None
    #: the layers where a blank value ("" or an empty list) means "not given" rather than "none"
    blank_is_unset: tuple[Layer, ...] = ()

    def __post_init__(self) -> None:
        if self.flag is not None and self.flag != "--" + self.name.replace("_", "-"):
            raise ValueError(f"option {self.name}: flag {self.flag} is not its dest's")
        if self.flag is None and self.ini_type is None:
            raise ValueError(f"option {self.name}: neither a flag nor an ini key")

    def on_command_line(self, config: pytest.Config) -> Any:
        """The command line's raw value (None when not given or not a flag)."""
        if self.flag is None:
            return None
        return getattr(config.known_args_namespace, self.name, None)

    def settle(self, found: Found) -> T:
        """The setting for a value ``lookup`` found."""
        return self.default if found.layer == "default" else self.convert(found.raw, found)

    def value(self, layers: Layers) -> T:
        return self.settle(lookup(self, layers))


def lookup(option: Option[Any], layers: Layers) -> Found:
    """The precedence rule for every option: the first layer that gives a value, and where.

    None means "not given" in every layer; a blank value is a value (an empty
    ``--distcov-report=`` turns reports off) unless the option says blank unsets it in that layer.
    coverage.py has no "not given": its false values (fail_under 0, no source) are its defaults.
    """
    config = layers.config
    if config is not None:
        raw = option.on_command_line(config)
        if _given(option, raw, "command line"):
            assert option.flag is not None
            return Found(raw, "command line", option.flag)
        if option.ini_type is not None:
            raw = _ini(config, option.name)
            if _given(option, raw, "ini file"):
                return Found(raw, "ini file", _ini_origin(config, option.name), _ini_dir(config))
    if option.env is not None and layers.environ is not None:
        raw = layers.environ.get(option.env)
        if _given(option, raw, "environment"):
            return Found(raw, "environment", f"the {option.env} environment variable")
    if option.coverage is not None and layers.coverage is not None:
        raw = layers.coverage(option.coverage)
        if raw:
            section, _, key = option.coverage.partition(":")
            return Found(raw, "coverage config", f"[{section}] {key} in the coverage configuration")
    return Found(option.default, "default", "the default")


def _given(option: Option[Any], raw: object, layer: Layer) -> bool:
    if raw is None:
        return False
    blank = isinstance(raw, (str, list)) and not raw
    return not (blank and layer in option.blank_is_unset)


def _ini_origin(config: pytest.Config, key: str) -> str:
    where = config.inipath.name if config.inipath else "the ini file"
    return f"{key} in {where}"


def _ini(config: pytest.Config, key: str) -> Any:
    """The ini value of ``key`` (None when unset), or a SettingsError naming the key."""
    import pytest  # loaded already: there is a config

    try:
        return config.getini(key)
    except (pytest.UsageError, ValueError, TypeError) as exc:
        raise SettingsError(f"invalid value for {_ini_origin(config, key)}: {exc}") from None


def _ini_dir(config: pytest.Config) -> Path:
    return config.inipath.parent if config.inipath else config.rootpath


# -- converters: raw value -> setting, or a SettingsError naming where the value came from --------


def _flag(raw: object, _found: Found) -> bool:
    return bool(raw)


def _percent(raw: object, found: Found) -> float:
    return parse_percent(raw, found.origin)


def _seconds(raw: object, found: Found) -> float:
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if math.isnan(value) or value < 0:
        raise SettingsError(
            f"invalid value {raw!r} for {found.origin}: expected a number of seconds, 0 or more"
        )
    return value


def _positive_seconds(raw: object, found: Found) -> float:
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):  # a wait must end: no 0, nan or inf
        raise SettingsError(
            f"invalid value {raw!r} for {found.origin}: expected a number of seconds above 0"
        )
    return value


def _size(raw: object, found: Found) -> int:
    from pytest_distcov.sinks.store import parse_size

    try:
        return parse_size(str(raw))
    except ValueError:
        raise SettingsError(
            f"invalid value {raw!r} for {found.origin}: expected a size in bytes, 1 or more,"
            " such as 500M or 2G"
        ) from None


def _reports(raw: list[str], found: Found) -> tuple[ReportSpec, ...]:
    specs: list[ReportSpec] = []
    for entry in raw:
        text = entry.strip()
        if not text:  # "--distcov-report=" turns reports off
            continue
        try:
            specs.append(parse_report_spec(text))
        except SettingsError as exc:
            raise SettingsError(f"invalid value {text!r} for {found.origin}: {exc}") from None
    return tuple(specs)


def _sources(raw: list[str], found: Found) -> tuple[str, ...]:
    if found.base is None:
        return tuple(str(s) for s in raw)
    # Paths in an ini file are relative to that file; package names stay as they are.
    return tuple(str(found.path(s)) if found.path(s).is_dir() else s for s in raw)


def _config_file(raw: str, found: Found) -> str | bool:
    path = found.path(raw)
    if not path.is_file():
        raise SettingsError(
            f"coverage config file {str(path)!r} given by {found.origin} does not exist"
        )
    return str(path.resolve())


def _ssh_config(raw: str, found: Found) -> str | None:
    text = raw if found.base is None else str(found.path(raw))
    if not Path(text).is_file():
        raise SettingsError(f"ssh config file {text!r} given by {found.origin} does not exist")
    return str(Path(text).resolve())


def _remote_python(raw: str, _found: Found) -> str:
    if not raw.strip():
        raise SettingsError("--distcov-remote-python is empty: give the Python command to run")
    return raw.strip()


def _entries(raw: str | list[str], _found: Found) -> tuple[str, ...]:
    return (raw,) if isinstance(raw, str) else tuple(raw)


def _store(raw: str, found: Found) -> str | None:
    if not raw.strip():
        return None  # an empty value turns an ini store off
    from pytest_distcov.sinks.store import check_spec, s3_environment_problem

    try:
        text = check_spec(raw)
    except StoreError as exc:
        raise SettingsError(f"invalid value {raw!r} for {found.origin}: {exc}") from None
    if text.startswith("s3:"):
        problem = s3_environment_problem(os.environ)
        if problem:
            raise SettingsError(f"cannot use the store {text} ({found.origin}): {problem}")
        return text
    return str(found.path(Path(text).expanduser()).resolve())


def _one_of(choices: tuple[str, ...], blank: B) -> Callable[[str, Found], str | B]:
    """A converter to one of ``choices``; a blank value gives ``blank``."""
    expected = " or ".join(filter(None, [", ".join(choices[:-1]), choices[-1]]))

    def convert(raw: str, found: Found) -> str | B:
        if not raw.strip():
            return blank
        if raw.strip() not in choices:
            raise SettingsError(f"invalid value {raw!r} for {found.origin}: expected {expected}")
        return raw.strip()

    return convert


# -- the table ----------------------------------------------------------------------------------

DEFAULT_STREAM_INTERVAL = 0.5
CONTEXTS = ("test",)
ENGINES = ("auto", "coverage", "probes")
#: The environment variable that chooses the engine (remote_worker.ENGINE_ENV, which a test
#: keeps equal: that stdlib-only module cannot import this one).
ENGINE_ENV = "DISTCOV_ENGINE"

DISTCOV: Option[bool] = Option(
    "distcov",
    _flag,
    False,
    flag="--distcov",
    action="store_true",
    help="Measure coverage in the controller and every worker, and report it combined.",
    ini_type="bool",
    ini_help="Measure coverage (like --distcov).",
)
NO_DISTCOV: Option[bool] = Option(
    "no_distcov",
    _flag,
    False,
    flag="--no-distcov",
    action="store_true",
    help="Do not measure coverage, even if the ini file turns it on.",
)
SOURCE: Option[tuple[str, ...] | None] = Option(
    "distcov_source",
    _sources,
    None,
    flag="--distcov-source",
    action="append",
    metavar="PATH_OR_PACKAGE",
    help="A directory or package to measure (repeatable). Default: coverage's [run] source.",
    ini_type="linelist",
    ini_help="Directories or packages to measure, one per line (like --distcov-source).",
    coverage="run:source",
    blank_is_unset=("command line", "ini file"),
)
REPORTS: Option[tuple[ReportSpec, ...]] = Option(
    "distcov_report",
    _reports,
    (ReportSpec("term"),),
    flag="--distcov-report",
    action="append",
    metavar="TYPE[:DEST]",
    help=(
        "Report to produce (repeatable): "
        + ", ".join(REPORT_KINDS)
        + "; 'term-missing:skip-covered' hides complete files; an empty value turns reports"
        " off. Default: term."
    ),
    ini_type="linelist",
    ini_help="Reports to produce, one per line (like --distcov-report).",
)
FAIL_UNDER: Option[float | None] = Option(
    "distcov_fail_under",
    _percent,
    None,
    flag="--distcov-fail-under",
    metavar="PCT",
    help="Fail the run when the total coverage is below PCT (0 to 100).",
    ini_type="float",
    ini_help="Fail when total coverage is below this percentage.",
    coverage="report:fail_under",
)
BRANCH: Option[bool | None] = Option(
    "distcov_branch",
    _flag,
    None,
    flag="--distcov-branch",
    action="store_true",
    help="Measure branch coverage too. Default: coverage's [run] branch.",
    ini_type="bool",
    ini_help="Measure branch coverage.",
    coverage="run:branch",
)
CONFIG: Option[str | bool] = Option(
    "distcov_config",
    _config_file,
    True,  # coverage's own search
    flag="--distcov-config",
    metavar="FILE",
    help=(
        "coverage.py configuration file. Default: coverage's own search "
        "(.coveragerc, setup.cfg, tox.ini, pyproject.toml)."
    ),
    ini_type="string",
    ini_help="coverage.py configuration file.",
    blank_is_unset=("command line", "ini file"),
)
APPEND: Option[bool] = Option(
    "distcov_append",
    _flag,
    False,
    flag="--distcov-append",
    action="store_true",
    help="Add to the existing coverage data file instead of starting fresh.",
    ini_type="bool",
    ini_help="Add to existing coverage data.",
)
STREAM_INTERVAL: Option[float] = Option(
    "distcov_stream_interval",
    _seconds,
    DEFAULT_STREAM_INTERVAL,
    flag="--distcov-stream-interval",
    metavar="SECONDS",
    help=(
        "Shortest pause between two chunks a worker streams to the controller (default 0.5;"
        " it grows on its own when chunks are costly; 0 streams after every test). Data is"
        " safe on the worker's disk after every test either way; this bounds what a lost"
        " remote host can take with it."
    ),
    ini_type="float",
    ini_help="Shortest pause between two streamed chunks, in seconds.",
)
REMOTE: Option[tuple[str, ...]] = Option(
    "distcov_remote",
    _entries,  # the hosts are parsed by _hosts, with REMOTE_PYTHON and SSH_CONFIG
    (),
    flag="--distcov-remote",
    metavar="HOSTS",
    help=(
        "Run workers on these hosts over ssh: comma-separated [N*][user@]host[:port] (N"
        " workers on that host, default 1) or full execnet specs (ssh=host//python=...)."
        " The hosts need only ssh and a python3 of this Python's minor version."
    ),
    ini_type="linelist",
    ini_help="Remote hosts for workers, one or more per line (like --distcov-remote).",
)
SSH_CONFIG: Option[str | None] = Option(
    "distcov_ssh_config",
    _ssh_config,
    None,
    flag="--distcov-ssh-config",
    metavar="FILE",
    help="ssh client configuration for every connection to a remote host.",
    ini_type="string",
    ini_help="ssh client configuration file for remote hosts.",
    blank_is_unset=("ini file",),
)
REMOTE_PYTHON: Option[str] = Option(
    "distcov_remote_python",
    _remote_python,
    "python3",
    flag="--distcov-remote-python",
    metavar="CMD",
    help="The Python on the remote hosts (default python3).",
    ini_type="string",
    ini_help="The Python on the remote hosts (default python3).",
    blank_is_unset=("ini file",),
)
REMOTE_TIMEOUT: Option[float] = Option(
    "distcov_remote_timeout",
    _positive_seconds,
    30.0,
    flag="--distcov-remote-timeout",
    metavar="SECONDS",
    help=(
        "Seconds a remote host may take to connect, start its Python and answer before the run"
        " stops with an error naming it (default 30)."
    ),
    ini_type="float",
    ini_help="Seconds a remote host may take to connect and answer (default 30).",
)
REMOTE_CACHE_SIZE: Option[int] = Option(
    "distcov_remote_cache_size",
    _size,
    2 << 30,
    flag="--distcov-remote-cache-size",
    metavar="SIZE",
    help=(
        "The most a remote host's cache of shipped files (objects, package trees,"
        " environments) may hold: at the start of a run the least recently used are removed"
        " beyond it, never what a live run uses (K, M, G: 1024s; default 2G)."
    ),
    ini_type="string",
    ini_help="The most a remote host's cache may hold, e.g. 500M or 2G (default 2G).",
)
REMOTE_IGNORE: Option[tuple[str, ...]] = Option(
    "distcov_remote_ignore",
    _entries,
    (),
    ini_type="linelist",
    ini_help=(
        "Extra patterns of project files not to ship to remote hosts, one per line (fnmatch, on"
        " a file's path under the rootdir or any part of it)."
    ),
)
REMOTE_INCLUDE: Option[tuple[str, ...]] = Option(
    "distcov_remote_include",
    _entries,
    (),
    ini_type="linelist",
    ini_help=(
        "Files that look like secrets (.env*, *.pem, *.key, id_*, .netrc, .ssh/, .aws/, ...)"
        " to ship to remote hosts all the same, one pattern per line (as"
        " distcov_remote_ignore)."
    ),
)
COVERALLS: Option[bool] = Option(
    "distcov_coveralls",
    _flag,
    False,
    flag="--distcov-coveralls",
    action="store_true",
    help=(
        "Upload the combined coverage to Coveralls at the end (token from"
        " COVERALLS_REPO_TOKEN, or GITHUB_TOKEN on GitHub Actions; never from a file)."
    ),
    ini_type="bool",
    ini_help="Upload to Coveralls (like --distcov-coveralls).",
)
COVERALLS_REQUIRED: Option[bool] = Option(
    "distcov_coveralls_required",
    _flag,
    False,
    flag="--distcov-coveralls-required",
    action="store_true",
    help="A failed Coveralls upload fails the run (default: a warning only).",
    ini_type="bool",
    ini_help="A failed Coveralls upload fails the run.",
)
STORE: Option[str | None] = Option(
    "distcov_store",
    _store,
    None,
    flag="--distcov-store",
    metavar="DIR|s3://BUCKET/PREFIX",
    help=(
        "At the end, also write the run's combined data to this store as one uniquely"
        " named shard, paths relative to the rootdir (see `pytest-distcov combine`)."
    ),
    ini_type="string",
    ini_help=(
        "Store for this run's shard: a directory (relative to the ini file) or s3://bucket/prefix."
    ),
)
CONTEXT: Option[str | None] = Option(
    "distcov_context",
    _one_of(CONTEXTS, None),
    None,
    flag="--distcov-context",
    metavar="test",
    help=(
        "Record which test ran each line: 'test' labels lines with <node id>|setup, |run"
        " and |teardown (as pytest-cov's --cov-context=test)."
    ),
    ini_type="string",
    ini_help="Per-test contexts: test (like --distcov-context).",
)
ENGINE: Option[str] = Option(
    "distcov_engine",
    _one_of(ENGINES, "auto"),
    "auto",
    flag="--distcov-engine",
    metavar="auto|coverage|probes",
    help=(
        "What measures: coverage.py's cores, or (Python 3.10/3.11, pytest-distcov[fast])"
        " SlipCover's bytecode probes. Default auto: sysmon on 3.12+, probes on 3.10/3.11"
        " where they can measure the run, else coverage.py's C tracer."
    ),
    ini_type="string",
    ini_help="What measures: auto, coverage or probes (like --distcov-engine).",
    env=ENGINE_ENV,
)

#: Every option, in the order ``pytest --help`` lists them (flags, then ini keys).
OPTIONS: tuple[Option[Any], ...] = (
    DISTCOV,
    NO_DISTCOV,
    SOURCE,
    REPORTS,
    FAIL_UNDER,
    BRANCH,
    CONFIG,
    APPEND,
    STREAM_INTERVAL,
    REMOTE,
    SSH_CONFIG,
    REMOTE_PYTHON,
    REMOTE_TIMEOUT,
    REMOTE_CACHE_SIZE,
    REMOTE_IGNORE,
    REMOTE_INCLUDE,
    COVERALLS,
    COVERALLS_REQUIRED,
    STORE,
    CONTEXT,
    ENGINE,
)


def add_options(parser: pytest.Parser) -> None:
    """Register every flag and ini key of :data:`OPTIONS`.

    Nothing has a pytest-level default: None is how :func:`lookup` knows a layer gave nothing.
    """
    group = parser.getgroup("distcov", "distributed coverage (pytest-distcov)")
    for option in OPTIONS:
        if option.flag is not None:
            extra = {"metavar": option.metavar} if option.metavar else {}
            group.addoption(
                option.flag,
                action=option.action,
                dest=option.name,
                default=None,
                help=option.help,
                **extra,
            )
    for option in OPTIONS:
        if option.ini_type is not None:
            parser.addini(option.name, option.ini_help, type=option.ini_type, default=None)


# -- resolution ---------------------------------------------------------------------------------


def _hosts(layers: Layers) -> tuple[HostSpec, ...]:
    """The remote hosts: REMOTE's entries with REMOTE_PYTHON and SSH_CONFIG, which are read only
    when there are hosts (a missing ssh config file does not matter to a run without)."""
    found = lookup(REMOTE, layers)
    entries = REMOTE.settle(found)
    if not entries:
        return ()
    python = REMOTE_PYTHON.value(layers)
    ssh_config = SSH_CONFIG.value(layers)
    from .hosts import parse_hosts

    try:
        return parse_hosts(entries, python=python, ssh_config=ssh_config)
    except SettingsError as exc:
        raise SettingsError(f"invalid value for {found.origin}: {exc}") from None


def resolve(config: pytest.Config, *, worker: bool = False) -> Settings:
    """Resolve every option once. Call with the early config (known args already parsed).

    A worker ignores the remote-host options: they are the controller's business (and name
    files that only the controller has). The options are resolved in a fixed order, so that of
    two bad values the same one is always named.
    """
    layers = Layers(config, environ=os.environ)
    return Settings(
        enabled=DISTCOV.value(layers) and not NO_DISTCOV.value(layers),
        fail_under=FAIL_UNDER.value(layers),
        source=SOURCE.value(layers),
        reports=REPORTS.value(layers),
        branch=BRANCH.value(layers),
        config_file=CONFIG.value(layers),
        append=APPEND.value(layers),
        stream_interval=STREAM_INTERVAL.value(layers),
        remote=() if worker else _hosts(layers),
        remote_ignore=REMOTE_IGNORE.value(layers),
        remote_include=REMOTE_INCLUDE.value(layers),
        remote_timeout=REMOTE_TIMEOUT.value(layers),
        remote_cache_size=REMOTE_CACHE_SIZE.value(layers),
        store=None if worker else STORE.value(layers),
        context=CONTEXT.value(layers),
        engine=ENGINE.value(layers),
        coveralls=COVERALLS.value(layers),
        coveralls_required=COVERALLS_REQUIRED.value(layers),
    )

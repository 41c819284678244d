"""Command-line options and ini keys, resolved once into a frozen :class:`Settings`.

Precedence, highest first: command line, then the pytest ini file (pytest.ini, pyproject.toml,
tox.ini or setup.cfg, whichever pytest chose), then coverage.py's own configuration, then
coverage's defaults. Every bad value raises :class:`SettingsError` naming where it came from, e.g.
``invalid value 'abc' for distcov_fail_under in pytest.ini: expected a number from 0 to 100``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_distcov.errors import SettingsError, StoreError

from .reportspec import REPORT_KINDS, ReportSpec, parse_percent, parse_report_spec

if TYPE_CHECKING:
    from .hosts import HostSpec

# Every pytest start imports this module (the options are declared here), with or without
# --distcov: what only remote hosts or stores need is imported when they are asked for.

__all__ = ["Settings", "add_options", "resolve"]


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
    coveralls: bool = False
    coveralls_required: bool = False
    #: a directory (absolute) or s3://bucket/prefix that receives this run's shard
    store: str | None = None
    #: "test" for per-test contexts, else None
    context: str | None = None
    #: what measures: "auto", "coverage" (coverage.py's cores) or "probes" (SlipCover's)
    engine: str = "auto"


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("distcov", "distributed coverage (pytest-distcov)")
    group.addoption(
        "--distcov",
        action="store_true",
        default=None,
        help="Measure coverage in the controller and every worker, and report it combined.",
    )
    group.addoption(
        "--no-distcov",
        action="store_true",
        default=False,
        help="Do not measure coverage, even if the ini file turns it on.",
    )
    group.addoption(
        "--distcov-source",
        action="append",
        metavar="PATH_OR_PACKAGE",
        default=None,
        help="A directory or package to measure (repeatable). Default: coverage's [run] source.",
    )
    group.addoption(
        "--distcov-report",
        action="append",
        metavar="TYPE[:DEST]",
        default=None,
        help=(
            "Report to produce (repeatable): "
            + ", ".join(REPORT_KINDS)
            + "; 'term-missing:skip-covered' hides complete files; an empty value turns reports"
            " off. Default: term."
        ),
    )
    group.addoption(
        "--distcov-fail-under",
        metavar="PCT",
        default=None,
        help="Fail the run when the total coverage is below PCT (0 to 100).",
    )
    group.addoption(
        "--distcov-branch",
        action="store_true",
        default=None,
        help="Measure branch coverage too. Default: coverage's [run] branch.",
    )
    group.addoption(
        "--distcov-config",
        metavar="FILE",
        default=None,
        help=(
            "coverage.py configuration file. Default: coverage's own search "
            "(.coveragerc, setup.cfg, tox.ini, pyproject.toml)."
        ),
    )
    group.addoption(
        "--distcov-append",
        action="store_true",
        default=None,
        help="Add to the existing coverage data file instead of starting fresh.",
    )

    group.addoption(
        "--distcov-stream-interval",
        metavar="SECONDS",
        default=None,
        help=(
            "Shortest pause between two chunks a worker streams to the controller (default 0.5;"
            " it grows on its own when chunks are costly; 0 streams after every test). Data is"
            " safe on the worker's disk after every test either way; this bounds what a lost"
            " remote host can take with it."
        ),
    )

    group.addoption(
        "--distcov-remote",
        metavar="HOSTS",
        default=None,
        help=(
            "Run workers on these hosts over ssh: comma-separated [N*][user@]host[:port] (N"
            " workers on that host, default 1) or full execnet specs (ssh=host//python=...)."
            " The hosts need only ssh and a python3 of this Python's minor version."
        ),
    )
    group.addoption(
        "--distcov-ssh-config",
        metavar="FILE",
        default=None,
        help="ssh client configuration for every connection to a remote host.",
    )
    group.addoption(
        "--distcov-remote-python",
        metavar="CMD",
        default=None,
        help="The Python on the remote hosts (default python3).",
    )

    group.addoption(
        "--distcov-coveralls",
        action="store_true",
        default=None,
        help=(
            "Upload the combined coverage to Coveralls at the end (token from"
            " COVERALLS_REPO_TOKEN, or GITHUB_TOKEN on GitHub Actions; never from a file)."
        ),
    )
    group.addoption(
        "--distcov-coveralls-required",
        action="store_true",
        default=None,
        help="A failed Coveralls upload fails the run (default: a warning only).",
    )

    group.addoption(
        "--distcov-store",
        metavar="DIR|s3://BUCKET/PREFIX",
        default=None,
        help=(
            "At the end, also write the run's combined data to this store as one uniquely"
            " named shard, paths relative to the rootdir (see `pytest-distcov combine`)."
        ),
    )
    group.addoption(
        "--distcov-context",
        metavar="test",
        default=None,
        help=(
            "Record which test ran each line: 'test' labels lines with <node id>|setup, |run"
            " and |teardown (as pytest-cov's --cov-context=test)."
        ),
    )
    group.addoption(
        "--distcov-engine",
        metavar="auto|coverage|probes",
        default=None,
        help=(
            "What measures: coverage.py's cores, or (Python 3.10/3.11, pytest-distcov[fast])"
            " SlipCover's bytecode probes. Default auto: sysmon on 3.12+, probes on 3.10/3.11"
            " where they can measure the run, else coverage.py's C tracer."
        ),
    )

    parser.addini("distcov", "Measure coverage (like --distcov).", type="bool", default=None)
    parser.addini(
        "distcov_engine",
        "What measures: auto, coverage or probes (like --distcov-engine).",
        type="string",
        default=None,
    )
    parser.addini(
        "distcov_source",
        "Directories or packages to measure, one per line (like --distcov-source).",
        type="linelist",
        default=None,
    )
    parser.addini(
        "distcov_report",
        "Reports to produce, one per line (like --distcov-report).",
        type="linelist",
        default=None,
    )
    parser.addini(
        "distcov_fail_under",
        "Fail when total coverage is below this percentage.",
        type="float",
        default=None,
    )
    parser.addini("distcov_branch", "Measure branch coverage.", type="bool", default=None)
    parser.addini("distcov_config", "coverage.py configuration file.", type="string", default=None)
    parser.addini("distcov_append", "Add to existing coverage data.", type="bool", default=None)
    parser.addini(
        "distcov_stream_interval",
        "Shortest pause between two streamed chunks, in seconds.",
        type="float",
        default=None,
    )
    parser.addini(
        "distcov_coveralls",
        "Upload to Coveralls (like --distcov-coveralls).",
        type="bool",
        default=None,
    )
    parser.addini(
        "distcov_coveralls_required",
        "A failed Coveralls upload fails the run.",
        type="bool",
        default=None,
    )
    parser.addini(
        "distcov_store",
        "Store for this run's shard: a directory (relative to the ini file) or s3://bucket/prefix.",
        type="string",
        default=None,
    )
    parser.addini(
        "distcov_context",
        "Per-test contexts: test (like --distcov-context).",
        type="string",
        default=None,
    )
    parser.addini(
        "distcov_remote",
        "Remote hosts for workers, one or more per line (like --distcov-remote).",
        type="linelist",
        default=None,
    )
    parser.addini(
        "distcov_ssh_config",
        "ssh client configuration file for remote hosts.",
        type="string",
        default=None,
    )
    parser.addini(
        "distcov_remote_python",
        "The Python on the remote hosts (default python3).",
        type="string",
        default=None,
    )
    parser.addini(
        "distcov_remote_ignore",
        "Extra patterns of project files not to ship to remote hosts, one per line (fnmatch, on"
        " a file's path under the rootdir or any part of it).",
        type="linelist",
        default=None,
    )


# -- resolution ---------------------------------------------------------------------------------


def _ini_origin(config: pytest.Config, key: str) -> str:
    where = config.inipath.name if config.inipath else "the ini file"
    return f"{key} in {where}"


def _ini(config: pytest.Config, key: str) -> Any:
    """The ini value of ``key`` (None when unset), or a SettingsError naming the key."""
    try:
        return config.getini(key)
    except (pytest.UsageError, ValueError, TypeError) as exc:
        raise SettingsError(f"invalid value for {_ini_origin(config, key)}: {exc}") from None


def _ini_dir(config: pytest.Config) -> Path:
    return config.inipath.parent if config.inipath else config.rootpath


DEFAULT_STREAM_INTERVAL = 0.5


def _resolve_stream_interval(config: pytest.Config, ns: Any) -> float:
    raw: object = getattr(ns, "distcov_stream_interval", None)
    origin = "--distcov-stream-interval"
    if raw is None:
        raw = _ini(config, "distcov_stream_interval")
        origin = _ini_origin(config, "distcov_stream_interval")
    if raw is None:
        return DEFAULT_STREAM_INTERVAL
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if math.isnan(value) or value < 0:
        raise SettingsError(
            f"invalid value {raw!r} for {origin}: expected a number of seconds, 0 or more"
        )
    return value


def _resolve_reports(config: pytest.Config, ns: Any) -> tuple[ReportSpec, ...]:
    raw: list[str] | None = getattr(ns, "distcov_report", None)
    origin = "--distcov-report"
    if raw is None:
        raw = _ini(config, "distcov_report")
        origin = _ini_origin(config, "distcov_report")
    if raw is None:
        raw = ["term"]
    specs: list[ReportSpec] = []
    for entry in raw:
        text = entry.strip()
        if not text:  # "--distcov-report=" turns reports off
            continue
        try:
            specs.append(parse_report_spec(text))
        except SettingsError as exc:
            raise SettingsError(f"invalid value {text!r} for {origin}: {exc}") from None
    return tuple(specs)


def _resolve_source(config: pytest.Config, ns: Any) -> tuple[str, ...] | None:
    cli: list[str] | None = getattr(ns, "distcov_source", None)
    if cli:
        return tuple(cli)
    ini: list[str] | None = _ini(config, "distcov_source")
    if ini:
        # Paths in an ini file are relative to that file; package names stay as they are.
        base = _ini_dir(config)
        return tuple(str(base / s) if (base / s).is_dir() else s for s in ini)
    return None


def _resolve_config_file(config: pytest.Config, ns: Any) -> str | bool:
    raw: str | None = getattr(ns, "distcov_config", None)
    origin = "--distcov-config"
    path: Path | None = Path(raw) if raw else None
    if path is None:
        ini = _ini(config, "distcov_config")
        if ini:
            path = _ini_dir(config) / ini
            origin = _ini_origin(config, "distcov_config")
    if path is None:
        return True  # coverage's own search
    if not path.is_file():
        raise SettingsError(f"coverage config file {str(path)!r} given by {origin} does not exist")
    return str(path.resolve())


def _resolve_remote(config: pytest.Config, ns: Any) -> tuple[HostSpec, ...]:
    cli: str | None = getattr(ns, "distcov_remote", None)
    origin = "--distcov-remote"
    entries: list[str] = [cli] if cli is not None else []
    if cli is None:
        entries = _ini(config, "distcov_remote") or []
        origin = _ini_origin(config, "distcov_remote")
    if not entries:
        return ()
    python: str | None = getattr(ns, "distcov_remote_python", None)
    if python is None:
        python = _ini(config, "distcov_remote_python") or "python3"
    if not python.strip():
        raise SettingsError("--distcov-remote-python is empty: give the Python command to run")
    ssh_config: str | None = getattr(ns, "distcov_ssh_config", None)
    ssh_origin = "--distcov-ssh-config"
    if ssh_config is None:
        ini = _ini(config, "distcov_ssh_config")
        if ini:
            ssh_config = str(_ini_dir(config) / ini)
            ssh_origin = _ini_origin(config, "distcov_ssh_config")
    if ssh_config is not None:
        if not Path(ssh_config).is_file():
            raise SettingsError(
                f"ssh config file {ssh_config!r} given by {ssh_origin} does not exist"
            )
        ssh_config = str(Path(ssh_config).resolve())
    from .hosts import parse_hosts

    try:
        hosts = parse_hosts(entries, python=python.strip(), ssh_config=ssh_config)
    except SettingsError as exc:
        raise SettingsError(f"invalid value for {origin}: {exc}") from None
    return hosts


def _resolve_store(config: pytest.Config, ns: Any) -> str | None:
    raw: str | None = getattr(ns, "distcov_store", None)
    origin = "--distcov-store"
    base = Path.cwd()
    if raw is None:
        raw = _ini(config, "distcov_store")
        origin = _ini_origin(config, "distcov_store")
        base = _ini_dir(config)
    if raw is None:
        return None
    if not raw.strip():
        return None  # an empty value turns an ini store off
    from pytest_distcov.sinks.store import check_spec, s3_environment_problem

    try:
        text = check_spec(raw)
    except StoreError as exc:
        raise SettingsError(f"invalid value {raw!r} for {origin}: {exc}") from None
    problem = s3_environment_problem(os.environ) if text.startswith("s3:") else ""
    if problem:
        raise SettingsError(f"cannot use the store {text} ({origin}): {problem}")
    return text if text.startswith("s3:") else str((base / Path(text).expanduser()).resolve())


CONTEXTS = ("test",)


def _choice(
    config: pytest.Config, ns: Any, key: str, choices: tuple[str, ...], env: str | None = None
) -> str | None:
    """One of ``choices`` from --KEY, else the ini key, else ``env``; None if none is set."""
    option = "--" + key.replace("_", "-")
    raw: str | None = getattr(ns, key, None)
    origin = option
    if raw is None:
        raw = _ini(config, key)
        origin = _ini_origin(config, key)
    if raw is None and env is not None:
        raw = os.environ.get(env)
        origin = f"the {env} environment variable"
    if raw is None or not raw.strip():
        return None
    if raw.strip() not in choices:
        expected = " or ".join(filter(None, [", ".join(choices[:-1]), choices[-1]]))
        raise SettingsError(f"invalid value {raw!r} for {origin}: expected {expected}")
    return raw.strip()


ENGINES = ("auto", "coverage", "probes")
#: the engine when neither the command line nor the ini file names one
#: The environment variable that chooses the engine (remote_worker.ENGINE_ENV, which a test
#: keeps equal: that stdlib-only module cannot import this one).
ENGINE_ENV = "DISTCOV_ENGINE"


def _flag(config: pytest.Config, ns: Any, dest: str, key: str) -> bool | None:
    cli = getattr(ns, dest, None)
    if cli is not None:
        return bool(cli)
    ini = _ini(config, key)
    return None if ini is None else bool(ini)


def resolve(config: pytest.Config, *, worker: bool = False) -> Settings:
    """Resolve every option once. Call with the early config (known args already parsed).

    A worker ignores the remote-host options: they are the controller's business (and name
    files that only the controller has).
    """
    ns = config.known_args_namespace
    enabled = bool(_flag(config, ns, "distcov", "distcov")) and not getattr(ns, "no_distcov", False)

    fail_under: float | None = None
    cli_fail = getattr(ns, "distcov_fail_under", None)
    if cli_fail is not None:
        fail_under = parse_percent(cli_fail, "--distcov-fail-under")
    else:
        ini_fail = _ini(config, "distcov_fail_under")
        if ini_fail is not None:
            fail_under = parse_percent(ini_fail, _ini_origin(config, "distcov_fail_under"))

    return Settings(
        enabled=enabled,
        source=_resolve_source(config, ns),
        reports=_resolve_reports(config, ns),
        fail_under=fail_under,
        branch=_flag(config, ns, "distcov_branch", "distcov_branch"),
        config_file=_resolve_config_file(config, ns),
        append=bool(_flag(config, ns, "distcov_append", "distcov_append")),
        stream_interval=_resolve_stream_interval(config, ns),
        remote=() if worker else _resolve_remote(config, ns),
        remote_ignore=tuple(_ini(config, "distcov_remote_ignore") or ()),
        store=None if worker else _resolve_store(config, ns),
        context=_choice(config, ns, "distcov_context", CONTEXTS),
        engine=_choice(config, ns, "distcov_engine", ENGINES, ENGINE_ENV) or "auto",
        coveralls=bool(_flag(config, ns, "distcov_coveralls", "distcov_coveralls")),
        coveralls_required=bool(
            _flag(config, ns, "distcov_coveralls_required", "distcov_coveralls_required")
        ),
    )

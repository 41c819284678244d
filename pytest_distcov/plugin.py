"""The pytest entry point ``distcov``: options, an early start, then one role object.

* ``pytest_load_initial_conftests`` (before any conftest is imported): resolve the settings once,
  validate them, and start measuring, in the controller and in every xdist worker alike (a worker
  is known by ``PYTEST_XDIST_WORKER``, which xdist sets before the worker's config exists).
* ``pytest_configure``: register exactly one role object: :class:`~.worker.WorkerRole` in an
  xdist worker, :class:`~.controller.ControllerRole` elsewhere (plus its xdist hooks only when
  xdist distributes the run). No hook body asks "am I a worker?".
  The controller's header gets a line for each fallback its engine takes where the installed
  coverage.py lacks an internal (:class:`FallbackHeader`, :mod:`.covapi.check`).

Installing the plugin changes nothing until ``--distcov`` or ``distcov = true`` asks for it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .errors import DistCovError, printable
from .settings.options import COVERALLS, NO_DISTCOV, Settings, add_options, resolve

if TYPE_CHECKING:
    from .engine.measure import Engine, MeasureSpec
    from .remote.fleet import RemoteHooks
    from .roles.controller import OutputPlan
    from .tempdirs import HeldDir

# The role modules (and coverage.py, execnet, sqlite3 with them) are imported only when a run
# measures: an installed plugin that is not asked for costs a pytest start next to nothing.
ENGINE_KEY: pytest.StashKey[Engine] = pytest.StashKey()
SETTINGS_KEY: pytest.StashKey[Settings] = pytest.StashKey()
SPEC_KEY: pytest.StashKey[MeasureSpec] = pytest.StashKey()
PLAN_KEY: pytest.StashKey[OutputPlan] = pytest.StashKey()
DIR_KEY: pytest.StashKey[HeldDir] = pytest.StashKey()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def _expects_xdist_controller(config: pytest.Config, settings: Settings) -> bool:
    """Will xdist distribute this run? (xdist decides later; this mirrors its test.)"""
    if not config.pluginmanager.has_plugin("xdist"):
        return False
    ns = config.known_args_namespace
    return bool(
        settings.remote
        or getattr(ns, "numprocesses", None)
        or getattr(ns, "dist", "no") != "no"
        or getattr(ns, "distload", False)
    )


def _usage_error(exc: DistCovError) -> pytest.UsageError:
    # (a RemoteError has a line a host; what a host said in it is made printable where it is)
    return pytest.UsageError(printable(f"distcov: {exc}", newlines=True))


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    worker_id = os.environ.get("PYTEST_XDIST_WORKER")
    try:
        settings = resolve(early_config, worker=worker_id is not None)
    except DistCovError as exc:
        raise _usage_error(exc) from None
    early_config.stash[SETTINGS_KEY] = settings
    ns = early_config.known_args_namespace
    if ns.help or ns.version:
        return
    if settings.remote and not settings.enabled:
        raise pytest.UsageError(
            "distcov: --distcov-remote runs measured workers on other hosts; it needs --distcov"
            " (or distcov = true in the ini file)"
        )
    if settings.remote and not early_config.pluginmanager.has_plugin("xdist"):
        raise pytest.UsageError(
            "distcov: --distcov-remote needs pytest-xdist, which is not active (-p no:xdist?)"
        )
    coveralls_alone = COVERALLS.on_command_line(early_config) and not settings.enabled
    if coveralls_alone and not NO_DISTCOV.on_command_line(early_config):
        raise pytest.UsageError(
            "distcov: --distcov-coveralls uploads what --distcov measures; add --distcov (or"
            " distcov = true in the ini file), or upload a data file with"
            " `pytest-distcov coveralls`"
        )
    if not settings.enabled or getattr(ns, "collectonly", False):
        return
    if getattr(ns, "cov_source", None):
        raise pytest.UsageError(
            "distcov: --cov (pytest-cov) and --distcov both measure coverage; use one of them"
        )
    from .engine.measure import Engine, MeasureSpec
    from .tempdirs import HeldDir

    spec = MeasureSpec(
        settings.source, settings.branch, settings.config_file, settings.context, settings.engine
    )
    early_config.stash[SPEC_KEY] = spec
    dist = worker_id is None and _expects_xdist_controller(early_config, settings)
    try:
        if worker_id is None:
            # (only here: a worker imports none of the controller's modules, which pytest's
            # assertion rewriter would otherwise go through in every worker)
            from .roles.controller import OutputPlan

            # Validate where the data goes (and --distcov-append) before anything runs.
            early_config.stash[PLAN_KEY] = OutputPlan.make(settings, spec)
        # held while this process lives, so that no other run takes it for a killed run's
        # A worker's directory carries its run's tag: the controller takes no other for it.
        run = os.environ.get("PYTEST_XDIST_TESTRUNUID") if worker_id is not None else None
        early_config.stash[DIR_KEY] = held = HeldDir.create(worker_id or "controller", run=run)
        engine = Engine(
            spec,
            held.path,
            worker_id or "controller",
            subprocesses=not dist,
            partial=worker_id is not None or dist,
            marks_cache=_marks_cache_dir(early_config),
        )
        engine.start()
    except DistCovError as exc:
        raise _usage_error(exc) from None
    early_config.stash[ENGINE_KEY] = engine


def _marks_cache_dir(config: pytest.Config) -> Path | None:
    """Where the branch engine keeps marked modules across runs: in pytest's cache directory
    (``cache_dir``, resolved as pytest resolves it), None without pytest's cache plugin."""
    if not config.pluginmanager.has_plugin("cacheprovider"):
        return None
    try:
        name = os.path.expandvars(os.path.expanduser(str(config.getini("cache_dir"))))
    except (ValueError, TypeError):
        return None
    return Path(os.path.abspath(config.rootpath / name)) / "d" / "distcov" / "marks"


def _worker_count(config: pytest.Config) -> int:
    total = 0
    for spec in config.getoption("tx", None) or []:  # -n N has become N popen entries here
        mult, star, _ = str(spec).partition("*")
        total += int(mult) if star and mult.isdigit() else 1
    n = config.getoption("numprocesses", None)
    return total or (n if isinstance(n, int) and n > 0 else 0)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "no_cover: do not measure coverage in this test's call phase (as with pytest-cov).",
    )
    engine = config.stash.get(ENGINE_KEY, None)
    if engine is None:
        return
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        _configure_worker(config, engine, workerinput)
    else:
        _configure_controller(config, engine)


def _configure_worker(config: pytest.Config, engine: Engine, workerinput: dict[str, Any]) -> None:
    from .roles.worker import NoCoverHooks, WorkerRole

    channel = workerinput.get("distcov_channel")
    if channel is None:  # the controller does not collect coverage: nothing to send to
        engine.finish()
        shutil.rmtree(engine.data_dir, ignore_errors=True)
        return
    role = WorkerRole(
        engine,
        channel,
        workerinput["workerid"],
        min_interval=config.stash[SETTINGS_KEY].stream_interval,
    )
    config.pluginmanager.register(role, "distcov-worker")
    config.pluginmanager.register(NoCoverHooks(engine), "distcov-no-cover")


def _configure_controller(config: pytest.Config, engine: Engine) -> None:
    from .remote.fleet import start_remote
    from .roles.controller import ControllerRole, OutputPlan, XdistControllerHooks
    from .roles.worker import NoCoverHooks

    settings = config.stash[SETTINGS_KEY]
    spec = config.stash[SPEC_KEY]
    plan = config.stash.get(PLAN_KEY, None)
    if plan is None:  # a nested pytest that inherited PYTEST_XDIST_WORKER
        try:
            plan = OutputPlan.make(settings, spec)
        except DistCovError as exc:
            raise _usage_error(exc) from None
    remote: RemoteHooks | None = None
    if settings.remote and not config.getoption("collectonly", False):
        try:
            remote = start_remote(config, settings)
        except DistCovError as exc:
            raise _usage_error(exc) from None
    dist = (
        config.pluginmanager.has_plugin("xdist")
        and config.getoption("dist", "no") != "no"
        and not config.getoption("collectonly", False)
    )
    role = ControllerRole(
        config,
        settings,
        spec,
        plan,
        engine,
        workers=_worker_count(config) if dist else 0,
        remote=remote,
    )
    config.pluginmanager.register(role, "distcov-controller")
    config.pluginmanager.register(FallbackHeader(engine), "distcov-fallbacks")
    config.pluginmanager.register(role.sigterm, "distcov-sigterm")
    if remote is not None:
        config.pluginmanager.register(remote, "distcov-remote")
    if dist:
        config.pluginmanager.register(XdistControllerHooks(role), "distcov-xdist")
    else:
        config.pluginmanager.register(NoCoverHooks(engine), "distcov-no-cover")


class FallbackHeader:
    """The controller's header lines for the fallbacks its engine takes because the installed
    coverage.py lacks an internal (see :mod:`pytest_distcov.covapi.check`): none where it takes
    none. Registered after the controller role, so they follow its lines."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def pytest_report_header(self) -> list[str]:
        return [f"distcov: {line}" for line in self.engine.fallbacks]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Per-test contexts start with the session, in the process that runs the tests."""
    config = session.config
    engine = config.stash.get(ENGINE_KEY, None)
    if engine is None or not engine.context or not engine.running:
        return
    if config.pluginmanager.has_plugin("distcov-xdist"):
        return  # the xdist controller runs no tests
    from .roles.worker import ContextHooks

    config.pluginmanager.register(ContextHooks(engine), "distcov-contexts")


def pytest_unconfigure(config: pytest.Config) -> None:
    """A run that stopped before its session finished: stop measuring, leave no files behind."""
    engine = config.stash.get(ENGINE_KEY, None)
    if engine is not None and engine.running:
        engine.pause()
        shutil.rmtree(engine.data_dir, ignore_errors=True)
    held = config.stash.get(DIR_KEY, None)
    if held is not None:
        # A worker's directory outlives it: its controller removes it (or keeps it and says so)
        held.release(handed_over=hasattr(config, "workerinput"))


@pytest.fixture
def no_cover() -> None:
    """A test that uses this fixture is not measured during its call phase (as with pytest-cov)."""

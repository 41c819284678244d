"""Finding the measured code as it is imported: what the probe and monitor engines share.

Neither engine asks the interpreter about every function it runs (that is what makes a trace
function, or ``sys.monitoring``'s global events, expensive): each is handed the code objects of
the modules coverage.py would measure, once, and prepares them (the probe engine rewrites them
with SlipCover's probes; the monitor engine turns on ``sys.monitoring`` line events for them).
Measured code reaches them three ways:

* modules imported from now on: a ``sys.meta_path`` finder wraps a measured module's loader,
  whose ``get_code`` hands the module's code to the engine (:class:`_Finder`, :class:`_Loader`);
  the module still runs under importlib's own ``exec_module``;
* modules pytest's assertion rewriter executes itself (test modules and conftests), with its
  own ``exec``: the rewriter's global name ``exec`` is pointed at the engine
  (:meth:`ImportedCode.hook_pytest_rewriter`);
* modules imported before measuring started: their functions, found on the heap
  (:meth:`ImportedCode.loaded_functions`). Their import-time code has run, and is not
  measured, as under coverage.py.

Which modules are measured, and under which file names, is coverage.py's own decision
(:class:`pytest_distcov.covapi.probes.CoverageSide`).
"""

from __future__ import annotations

import abc
import ast
import contextlib
import functools
import gc
import hashlib
import importlib.machinery
import inspect
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coverage import Coverage, CoverageData

from pytest_distcov.covapi import subprocesses
from pytest_distcov.covapi.probes import CoverageSide

__all__ = ["ImportedCode", "plain_source", "rewriter_missing"]


def tracer_setting(cov: Coverage, *more: tuple[object, str], branch: bool = True) -> str:
    """The first setting of this run (``more`` first, then those both import-hook engines
    share) that needs coverage.py's own tracer, named for the header; '' if there is none.
    Without ``branch``, branch coverage is not one of them (the branch engine measures it)."""
    concurrency_option = cov.get_option("run:concurrency") or []
    patch_option = cov.get_option("run:patch") or []
    assert isinstance(concurrency_option, list)
    assert isinstance(patch_option, list)
    concurrency = [str(c) for c in concurrency_option if c != "thread"]
    # (``subprocess``: these engines hand coverage.py's configuration on as it would)
    own_patch = () if subprocesses.missing(cov) else ("subprocess",)
    patch = [str(p) for p in patch_option if p not in own_patch]
    settings = [
        (
            branch and cov.get_option("run:branch"),
            "branch coverage ([run] branch or --distcov-branch)",
        ),
        *more,
        (cov.get_option("run:plugins"), "coverage plugins ([run] plugins)"),
        (concurrency, f"[run] concurrency = {', '.join(concurrency)}"),
        (patch, f"[run] patch = {', '.join(patch)}"),
        (cov.get_option("run:timid"), "[run] timid"),
    ]
    return next((setting for present, setting in settings if present), "")


class ImportedCode(abc.ABC):
    """The measured modules' code, handed to :meth:`prepare` and :meth:`execute` as it comes.

    A base class: an engine says what it does with a module's code (:meth:`prepare`) and with
    the functions of modules loaded before it started (:meth:`adopt_loaded`).
    """

    #: what the note says stopped when coverage.py fails to decide about a module
    stopping = "measuring"

    def __init__(self, cov: Coverage) -> None:
        self.side = CoverageSide(cov)
        self._finder = _Finder(self)
        self._hooked = False
        #: what went wrong with single modules (for the run's notes)
        self.notes: list[str] = []
        #: True once coverage.py failed to decide about a module: no new code (see decides)
        self._off = False
        self._off_lock = threading.Lock()

    @property
    def data(self) -> CoverageData:
        return self.side.data

    @abc.abstractmethod
    def prepare(self, code: types.CodeType, module_globals: dict[str, Any]) -> types.CodeType:
        """The code to run for a measured module about to run in ``module_globals``."""

    def execute(self, code: types.CodeType, module_globals: dict[str, Any]) -> None:
        """Run a measured module's code (one pytest's assertion rewriter executes)."""
        exec(self.prepare(code, module_globals), module_globals)

    @abc.abstractmethod
    def adopt_loaded(self) -> None:
        """Measure the functions of the modules imported before the hooks were installed."""

    def measures(self, filename: str, module_globals: dict[str, Any] | None = None) -> bool:
        return self.side.name_for(filename, module_globals) is not None

    def decides(self, filename: str, module_globals: dict[str, Any]) -> bool:
        """:meth:`measures` for a module being imported or executed, where an exception must
        never reach the user's ``import``: coverage.py failing to decide turns the hooks off
        for the rest of the run (with a note), and the module is imported unmeasured."""
        if self._off:
            return False
        try:
            return self.measures(filename, module_globals)
        except Exception as exc:  # coverage.py's internals, in the middle of a user's import
            self._turn_off(str(module_globals.get("__name__") or filename), exc)
            return False

    def _turn_off(self, module: str, exc: Exception) -> None:
        """No more new code; the code already prepared still records what it runs."""
        with self._off_lock:
            if self._off:
                return
            self._off = True
        self.notes.append(
            f"{self.stopping} turned off at `import {module}`: coverage.py failed to decide"
            f" whether to measure it ({type(exc).__name__}: {exc}); from there on this process"
            " measures only the modules imported before it, so the data lacks the code"
            " imported later"
        )
        self.unhook()

    def hook(self) -> None:
        """Install the import hooks, then adopt what was loaded before."""
        if self._hooked:
            return
        self._hooked = True
        sys.meta_path.insert(0, self._finder)
        self.hook_pytest_rewriter(self._exec_rewritten)
        self.adopt_loaded()

    def unhook(self) -> None:
        self._hooked = False
        self.hook_pytest_rewriter(exec)
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self._finder)

    @staticmethod
    def hook_pytest_rewriter(hook: Any) -> None:
        """Route the modules pytest's assertion rewriter executes (test modules, conftests).

        The rewriter runs a module's code with ``exec``, a global name it finds in builtins: a
        module global of that name in ``_pytest.assertion.rewrite`` is found first. (SlipCover's
        ``wrap_pytest`` rewrites the rewriter's bytecode to call ``_Slipcover_exec_wrapper``
        instead, a cost every process would pay; if something already did that, that name is
        pointed at the hook too.) When the engine stops, the rewriter uses ``exec`` again, so a
        second engine in one process (pytester) works too.
        """
        try:
            from _pytest.assertion import rewrite
        except ImportError:  # pragma: no cover - pytest always has it
            return
        if hook is exec:
            vars(rewrite).pop("exec", None)  # the builtin again
        else:
            rewrite.exec = hook  # type: ignore[attr-defined]
        if hasattr(rewrite, "_Slipcover_exec_wrapper"):
            rewrite._Slipcover_exec_wrapper = hook

    @staticmethod
    def pytest_rewritten(tree: ast.Module, source: bytes, filename: str) -> types.CodeType:
        """``tree`` (of a test module or conftest whose text is ``source``) with its asserts
        rewritten and compiled as pytest's assertion rewriter does it (``_rewrite_test``), with
        the configuration of the rewriter in ``sys.meta_path``.

        Raises ``RuntimeError`` where pytest's rewriter is not what this expects (see
        :func:`rewriter_missing`): the caller then runs the module as pytest compiled it.
        """
        gone = rewriter_missing()
        if gone:
            raise RuntimeError(f"pytest's assertion rewriter lacks {', '.join(gone)}")
        from _pytest.assertion import rewrite

        rewrite.rewrite_asserts(tree, source, filename, _rewriter_config())
        return compile(tree, filename, "exec", dont_inherit=True)

    @staticmethod
    def rewriter_settings() -> str:
        """What the code :meth:`pytest_rewritten` makes depends on besides the module's text
        and name, for a cache's key: pytest's version and its one setting that changes what
        the rewriter writes (``enable_assertion_pass_hook``; pytest's own cache of rewritten
        modules is keyed on its version alone)."""
        import pytest

        config = _rewriter_config()
        try:
            hook = bool(config.getini("enable_assertion_pass_hook")) if config else False
        except (ValueError, AttributeError):
            hook = False
        return f"pytest {pytest.__version__} ({_rewriter_digest()}), assertion pass hook {hook}"

    def _exec_rewritten(self, code: Any, module_globals: dict[str, Any]) -> None:
        if isinstance(code, types.CodeType) and self.decides(code.co_filename, module_globals):
            self.execute(code, module_globals)
        else:
            exec(code, module_globals)

    def loaded_functions(self) -> Iterator[types.FunctionType]:
        """The functions on the heap whose code coverage.py measures."""
        for obj in gc.get_objects():
            if type(obj) is not types.FunctionType:
                continue
            code = obj.__code__
            if type(code) is types.CodeType and self.decides(code.co_filename, obj.__globals__):
                yield obj


@functools.cache
def _rewriter_digest() -> str:
    """A digest of pytest's assertion rewriter's module: a pytest changed in place (an
    editable checkout) keeps its version."""
    from _pytest.assertion import rewrite

    try:
        return hashlib.sha256(Path(rewrite.__file__).read_bytes()).hexdigest()[:16]
    except (OSError, TypeError):
        return "unread"


def _rewriter_config() -> Any:
    """The configuration of pytest's assertion rewriter in ``sys.meta_path`` (or None)."""
    from _pytest.assertion import rewrite

    hook = next((f for f in sys.meta_path if isinstance(f, rewrite.AssertionRewritingHook)), None)
    return getattr(hook, "config", None)


def plain_source(module_globals: dict[str, Any]) -> bool:
    """True if the module of ``module_globals`` is loaded by Python's own source loader
    (through ours): its code is then what its source compiles to."""
    spec = module_globals.get("__spec__")
    loader = getattr(spec, "loader", None)
    return (
        isinstance(loader, _Loader) and type(loader.wrapped) is importlib.machinery.SourceFileLoader
    )


def rewriter_missing() -> list[str]:
    """What :meth:`ImportedCode.pytest_rewritten` needs of pytest that it lacks."""
    try:
        from _pytest.assertion import rewrite
    except ImportError:  # pragma: no cover - pytest always has it
        return ["_pytest.assertion.rewrite"]
    gone = [
        f"_pytest.assertion.rewrite.{name}"
        for name in ("rewrite_asserts", "AssertionRewritingHook")
        if not callable(getattr(rewrite, name, None))
    ]
    if not gone:
        params = list(inspect.signature(rewrite.rewrite_asserts).parameters)
        if params[:4] != ["mod", "source", "module_path", "config"]:
            gone.append(f"rewrite_asserts(mod, source, module_path, config) (it takes {params})")
    return gone


class _Loader:
    """Wraps a module's own loader: its code is prepared, everything else is passed on.

    ``get_data``, ``get_resource_reader``, ``is_package``... reach the original loader, so
    ``pkgutil.get_data`` and ``importlib.resources`` work as before. The module runs under
    importlib's own ``exec_module`` (which asks :meth:`get_code` for its code), so no frame
    of ours stands between the module and its importer: a warning the module gives with
    ``stacklevel=2`` (a deprecated module's usual one) names the importer, as without us
    (``warnings`` skips importlib's frames, not ours).
    """

    exec_module = importlib.machinery.SourceFileLoader.exec_module

    def __init__(self, engine: ImportedCode, loader: Any) -> None:
        self._engine = engine
        self._loader = loader

    @property
    def wrapped(self) -> Any:
        """The module's own loader."""
        return self._loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def get_code(self, fullname: str) -> types.CodeType | None:
        code: types.CodeType | None = self._loader.get_code(fullname)
        if code is None:  # pragma: no cover - source loaders always have code
            return None
        # exec_module asks for the code of the module it is about to run, which importlib
        # has put into sys.modules with this loader in its spec (a reload's too); anyone else
        # asking (runpy, for one) gets the code as it is, as before.
        module = sys.modules.get(fullname)
        spec = getattr(module, "__spec__", None)
        mine = module is not None and getattr(spec, "loader", None) is self
        return self._engine.prepare(code, vars(module)) if mine else code


class _Finder:
    """A ``sys.meta_path`` entry that hands newly imported measured modules to the engine."""

    def __init__(self, engine: ImportedCode) -> None:
        self.engine = engine

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if self.engine.side.deciding:
            return None  # coverage.py looking up a source package: the other finders answer
        for finder in sys.meta_path:
            if isinstance(finder, _Finder) or not hasattr(finder, "find_spec"):
                continue  # (another engine's finder, in a pytester run in this process)
            spec = finder.find_spec(fullname, path, target)
            if spec is None or spec.loader is None:
                continue
            loader, origin = spec.loader, spec.origin
            # Python source only: not built-in, frozen or compiled modules, and not pytest's
            # assertion rewriter (which has no get_code: see hook_pytest_rewriter)
            if (
                spec.has_location
                and isinstance(origin, str)
                and origin.endswith((".py", ".pyw"))
                and hasattr(loader, "get_code")
                and self.engine.decides(origin, {"__name__": fullname, "__file__": origin})
            ):
                spec.loader = _Loader(self.engine, loader)  # type: ignore[assignment]
            return spec
        return None

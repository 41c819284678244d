"""Start an xdist worker on a remote host: the module xdist runs there, wrapped (stdlib only).

pytest-distcov hands its remote workers to xdist as ``popen`` gateways whose Python is a local
launcher running ssh (``popen//python=...``), so that xdist passes the command-line arguments
through untouched (its ``ssh`` path rewrites them relative to rsync roots, which are deprecated,
and fails on relative ones). For a popen worker xdist sends the controller's own ``sys.path``
and temp directory; this module
receives xdist's first message, puts the host's paths in their place, and then runs xdist's own
worker module, unchanged, with that message replayed. Local workers of the same run pass through
as they are.

It is registered through xdist's ``pytest_xdist_getremotemodule`` hook and sent by execnet as
source, so it must not import anything but the standard library at module level, nor anything
of this package: what it knows of xdist beyond its documented API (the first message, where
xdist's worker module is) is named here, in :data:`XDIST_FIRST_MESSAGE` and
:data:`XDIST_WORKER_MODULE`, and checked on every message by :func:`read_first_message` (see
:mod:`pytest_distcov.remote.xdist_door`, the door to xdist's internals on the controller's side).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

#: Environment variable naming one more file for the worker's engine to leave out.
OMIT_ENV = "PYTEST_DISTCOV_OMIT"
#: The engine the controller resolved (options.ENGINE_ENV; stdlib-only module, so a copy).
ENGINE_ENV = "DISTCOV_ENGINE"
#: Where the worker makes its data directory (tempdirs.PARENT_ENV; a copy, as above).
PARENT_ENV = "PYTEST_DISTCOV_TMP_PARENT"
#: coverage.py's core as the controller's environment chose it (fleet.worker_input).
COVERAGE_CORE_ENV = "COVERAGE_CORE"

#: xdist's first message to the module a worker runs, field by field, as pytest-xdist 3.5 to
#: 3.8 send it (``WorkerController.setup``): a tuple of the worker's input (a dict), pytest's
#: arguments (a list), options (a dict) and the ``sys.path`` to use (a list, or None).
XDIST_FIRST_MESSAGE = ("workerinput", "args", "option_dict", "change_sys_path")
#: xdist's worker module, in the ``xdist`` package: what ``pytest_xdist_getremotemodule``
#: returns when no plugin answers, run by execnet as ``__channelexec__`` with ``channel``.
XDIST_WORKER_MODULE = "remote.py"


def host_sys_path(layout: list[list[str]]) -> list[str]:
    """The worker's ``sys.path`` on this host (the controller resolved it, with the host's own
    standard library as the agent found it), without repeats."""
    out: list[str] = []
    for _kind, path in layout:
        if path not in out:
            out.append(path)
    return out


def map_arg(arg: str, prefixes: list[list[str]]) -> str:
    """An argument naming a local path under a shipped tree, pointed at the host's copy."""
    head, eq, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
    for local, remote in prefixes:
        if value == local or value.startswith(local + os.sep):
            return head + eq + remote + value[len(local) :]
    return arg


class _Replay:
    """The real channel, except that the first ``receive()`` returns the message we rewrote."""

    def __init__(self, channel: Any, first: object) -> None:
        self._channel = channel
        self._first: list[object] = [first]

    def receive(self, timeout: float | None = None) -> object:
        if self._first:
            return self._first.pop()
        return self._channel.receive(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


def read_first_message(message: object) -> dict[str, Any] | None:
    """xdist's first message by field name (:data:`XDIST_FIRST_MESSAGE`); None if it is not of
    the shape this launcher knows."""
    if not (isinstance(message, tuple) and len(message) == len(XDIST_FIRST_MESSAGE)):
        return None
    fields = dict(zip(XDIST_FIRST_MESSAGE, message, strict=True))
    kinds = {"workerinput": dict, "args": list, "option_dict": dict}
    if not all(isinstance(fields[name], kind) for name, kind in kinds.items()):
        return None
    if not isinstance(fields["change_sys_path"], (list, type(None))):
        return None
    return fields


def _for_remote(message: object) -> bool:
    """True if a message of any shape carries the controller's input for a remote worker."""
    parts = message if isinstance(message, (tuple, list)) else (message,)
    return any(isinstance(part, dict) and "distcov_remote" in part for part in parts)


def main(channel: Any) -> None:
    message = channel.receive()
    fields = read_first_message(message)
    if fields is None:
        if _for_remote(message):
            raise RuntimeError(
                "pytest-distcov's remote launcher does not know this pytest-xdist's first"
                f" message to its workers (expected {', '.join(XDIST_FIRST_MESSAGE)}): remote"
                " workers cannot start with it; install a pytest-xdist that pytest-distcov"
                " supports"
            )
        _run_xdist_worker(channel, message)  # a local worker: xdist's message as it came
        return
    workerinput, args = fields["workerinput"], fields["args"]
    option_dict, change_sys_path = fields["option_dict"], fields["change_sys_path"]
    remote = workerinput.get("distcov_remote")
    if remote is not None:
        # execnet compiled this module under the controller's file name; the worker's engine
        # leaves that file out, as it leaves out the rest of pytest-distcov.
        set_environment(remote, main.__code__.co_filename)
        change_sys_path = host_sys_path(remote["sys_path"])
        args = [map_arg(a, remote["args_map"]) for a in args]
        option_dict = dict(option_dict)
        if option_dict.get("basetemp"):
            os.makedirs(remote["basetemp"], exist_ok=True)
            name = os.path.basename(str(option_dict["basetemp"]))
            option_dict["basetemp"] = os.path.join(remote["basetemp"], name)
    _run_xdist_worker(channel, (workerinput, args, option_dict, change_sys_path))


def set_environment(remote: dict[str, Any], launcher: str) -> None:
    """The variables a worker on a host reads, as the controller resolved them: the engine,
    where the data directory goes, the file to leave out (``launcher``), and coverage.py's
    core where the controller's environment chose one. A core the host's own environment
    chose (its ssh environment) is dropped: it would override the run's settings, unnamed by
    the header."""
    os.environ[OMIT_ENV] = launcher
    os.environ[ENGINE_ENV] = remote.get("engine", "auto")
    if remote.get("tmp_parent"):
        os.environ[PARENT_ENV] = remote["tmp_parent"]
    else:
        os.environ.pop(PARENT_ENV, None)
    if remote.get("coverage_core"):
        os.environ[COVERAGE_CORE_ENV] = remote["coverage_core"]
    else:
        os.environ.pop(COVERAGE_CORE_ENV, None)


def _run_xdist_worker(channel: Any, first: object) -> None:
    """Run xdist's own worker module here, with ``first`` as its first message."""
    # Find xdist's worker module without importing the xdist package: pytest must import that
    # itself, later, to rewrite its assertions (as in any xdist worker).
    spec = importlib.util.find_spec("xdist")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pytest-xdist is not importable on this host")
    origin = os.path.join(next(iter(spec.submodule_search_locations)), XDIST_WORKER_MODULE)
    with open(origin, encoding="utf-8") as fh:
        code = compile(fh.read(), origin, "exec")
    replay = _Replay(channel, first)
    exec(code, {"__name__": "__channelexec__", "__file__": origin, "channel": replay})


if __name__ == "__channelexec__":
    main(channel)  # type: ignore[name-defined]  # noqa: F821

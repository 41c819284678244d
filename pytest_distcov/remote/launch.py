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
source, so it must not import anything but the standard library at module level.
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


def main(channel: Any) -> None:
    workerinput, args, option_dict, change_sys_path = channel.receive()
    remote = workerinput.get("distcov_remote")
    if remote is not None:
        # execnet compiled this module under the controller's file name; the worker's engine
        # leaves that file out, as it leaves out the rest of pytest-distcov.
        os.environ[OMIT_ENV] = main.__code__.co_filename
        os.environ[ENGINE_ENV] = remote.get("engine", "auto")
        if remote.get("tmp_parent"):
            os.environ[PARENT_ENV] = remote["tmp_parent"]
        change_sys_path = host_sys_path(remote["sys_path"])
        args = [map_arg(a, remote["args_map"]) for a in args]
        option_dict = dict(option_dict)
        if option_dict.get("basetemp"):
            os.makedirs(remote["basetemp"], exist_ok=True)
            name = os.path.basename(str(option_dict["basetemp"]))
            option_dict["basetemp"] = os.path.join(remote["basetemp"], name)
    # Find xdist's worker module without importing the xdist package: pytest must import that
    # itself, later, to rewrite its assertions (as in any xdist worker).
    spec = importlib.util.find_spec("xdist")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pytest-xdist is not importable on this host")
    origin = os.path.join(next(iter(spec.submodule_search_locations)), "remote.py")
    with open(origin, encoding="utf-8") as fh:
        code = compile(fh.read(), origin, "exec")
    replay = _Replay(channel, (workerinput, args, option_dict, change_sys_path))
    exec(code, {"__name__": "__channelexec__", "__file__": origin, "channel": replay})


if __name__ == "__channelexec__":
    main(channel)  # type: ignore[name-defined]  # noqa: F821

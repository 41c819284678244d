"""The one door to pytest-xdist's and execnet's internals, for the remote workers.

Remote workers are xdist ``popen`` workers whose Python is a local launcher running ssh (see
:mod:`.fleet`). xdist's documented API covers most of what that needs: ``--tx`` specs, the
``pytest_configure_node`` hook and ``node.workerinput`` (what a worker gets), the
``pytest_xdist_getremotemodule`` hook (the module a worker runs), ``pytest_testnodedown``; and
execnet's documented ``Gateway.id``, ``Gateway.newchannel`` and ``XSpec``. Beyond it, as of
pytest-xdist 3.5 to 3.8 and execnet 2.1:

* :func:`worker_python` reads ``node.gateway.spec.python``: the gateway spec of an xdist
  ``WorkerController`` names the launcher, so the host, a worker runs on.
* :func:`reroute` writes it, so that xdist's restart of a dead worker (``DSession._clone_node``
  makes the new worker from ``node.gateway.spec``) starts on another host. Checked at start
  by :func:`reroute_obstacle` (``_clone_node`` is there and reads the gateway's spec; an
  ``XSpec``'s ``python`` can be set). Fallback: a dead host's workers are not moved; xdist
  restarts them on that host until ``--maxworkerrestart``, and the header and the summary say
  so.
* xdist's first message to the module a worker runs, and where xdist's own worker module is:
  known by :mod:`.launch`, which rewrites that message on the host. That module is shipped to
  hosts as source and runs there alone (standard library only, nothing of this package: a
  test holds it), so it cannot import this door; the knowledge stays there, named in one
  place (``launch.XDIST_FIRST_MESSAGE``, ``launch.XDIST_WORKER_MODULE``) and checked on
  every message (``launch.read_first_message``): a message of another shape reaches a local
  worker unchanged, and stops a remote one with a line naming the cause.

The controller's own channel per worker (:mod:`pytest_distcov.roles.controller`) uses only the
documented API above.
"""

from __future__ import annotations

from typing import Any

__all__ = ["reroute", "reroute_obstacle", "worker_python"]


def worker_python(node: Any) -> str | None:
    """The Python (for our remote workers: the launcher) of an xdist node's gateway spec."""
    python = getattr(node.gateway.spec, "python", None)
    return python if isinstance(python, str) else None


def reroute_obstacle() -> str:
    """'' if :func:`reroute` moves xdist's restarts of a dead worker, else why not."""
    try:
        import execnet
        from xdist.dsession import DSession
    except ImportError as exc:
        return f"pytest-xdist's internals are not importable ({exc})"
    clone = getattr(DSession, "_clone_node", None)
    code = getattr(clone, "__code__", None)
    if code is None or not {"gateway", "spec"} <= set(code.co_names):
        return "this pytest-xdist restarts a worker otherwise than from its gateway's spec"
    try:
        spec = execnet.XSpec("popen//python=before")
        spec.python = "after"
    except Exception as exc:  # any change in execnet's spec objects
        return f"execnet's worker specs cannot be changed ({type(exc).__name__}: {exc})"
    if spec.python != "after":
        return "execnet's worker specs cannot be changed"
    return ""


def reroute(node: Any, python: str) -> None:
    """Have xdist restart dead ``node`` with ``python`` (another host's launcher); only where
    :func:`reroute_obstacle` found nothing."""
    node.gateway.spec.python = python

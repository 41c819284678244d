"""What the benchmarks share: running pytest with the controller's peak RSS recorded."""

from __future__ import annotations

import os

#: Runs pytest in this process (so it is the controller) and writes its peak RSS in KiB to
#: argv[1]; workers are other processes and are not counted.
LAUNCHER = """
import resource, sys
import pytest
out = sys.argv[1]
code = pytest.main(sys.argv[2:])
with open(out, "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
sys.exit(int(code))
"""

#: The same for SlipCover's own command line (``python -m slipcover ... -m pytest ...``).
SLIPCOVER_LAUNCHER = """
import resource, runpy, sys
out = sys.argv[1]
sys.argv = ["slipcover", *sys.argv[2:]]
try:
    runpy.run_module("slipcover", run_name="__main__", alter_sys=True)
finally:
    with open(out, "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


#: Not passed on to the runs: ``PYTHONDONTWRITEBYTECODE`` (a developer's shell or a CI image may
#: set it) makes pytest rewrite the asserts of every pytest plugin's modules again in every
#: process of every run (it keeps no ``.pyc``), which costs each plugin in proportion to its
#: size: the runs measure a checkout whose bytecode caches work.
DROPPED = ("PYTHONDONTWRITEBYTECODE",)


def clean_env() -> dict[str, str]:
    """The environment without coverage's or pytest's own variables (nor :data:`DROPPED`)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COVERAGE_", "PYTEST_")) and k not in DROPPED
    }

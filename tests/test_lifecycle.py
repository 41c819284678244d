"""Runs that end early keep their coverage and leave nothing behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import measured, run_pytest

SLOW = """
import time

import pytest


@pytest.mark.parametrize("i", range(60))
def test_slow(i):
    time.sleep(0.2)
"""

#: pytest in a child that handles SIGINT by default, even if this process ignores it.
INTERRUPTIBLE_PYTEST = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
    " sys.argv[0] = 'pytest'; runpy.run_module('pytest', run_name='__main__')"
)


def test_exitfirst_keeps_data_and_cleans_up(
    pytester: pytest.Pytester, shapes: Path, private_tmp: Path
) -> None:
    (shapes / "tests" / "test_zz.py").write_text("def test_zfail():\n    assert False\n")
    plain = run_pytest(pytester, "-n", "2", "-x")
    result = run_pytest(pytester, "--distcov", "-n", "2", "-x")
    assert result.ret == plain.ret  # xdist's own status for -x (interrupted), unchanged
    result.stdout.fnmatch_lines(["TOTAL*"])
    assert measured(shapes / ".coverage", arcs=False)
    assert not list(private_tmp.iterdir())


@pytest.mark.parametrize("mode", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist", "in-process"])
def test_ctrl_c_keeps_data_and_cleans_up(
    pytester: pytest.Pytester, shapes: Path, private_tmp: Path, mode: list[str]
) -> None:
    (shapes / "tests" / "test_zslow.py").write_text(SLOW)
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTIBLE_PYTEST, "--distcov", "-p", "no:randomly", *mode],
        cwd=shapes,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "KeyboardInterrupt" in out
    assert "TOTAL" in out
    assert "Traceback" not in out
    geometry = next(
        v
        for f, v in measured(shapes / ".coverage", arcs=False).items()
        if f.endswith("geometry.py")
    )
    assert len(geometry) > 50  # the tests that ran before the interrupt are all there
    assert not list(private_tmp.iterdir())

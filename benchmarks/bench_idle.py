"""What an installed but unused pytest-distcov costs a small pytest run.

    python benchmarks/bench_idle.py [--rounds 30]

A project of 50 trivial tests is run, alternating, with the plugin installed but not asked
for (no --distcov) and with it switched off (`-p no:distcov`). Each run is a whole pytest
process; the wall times' medians and the median of the pairwise ratios are printed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import clean_env

MODES = {"installed, not asked for": [], "-p no:distcov": ["-p", "no:distcov"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="distcov-bench-idle-") as tmp:
        root = Path(tmp)
        (root / "test_small.py").write_text(
            "import pytest\n\n\n@pytest.mark.parametrize('i', range(50))\n"
            "def test_n(i):\n    assert i * 2 == i + i\n"
        )
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for round_ in range(args.rounds + 1):  # the first round warms the disk cache
            for mode, extra in MODES.items():
                cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
                start = time.perf_counter()
                subprocess.run(cmd, cwd=root, env=clean_env(), capture_output=True, check=True)
                if round_:
                    times[mode].append(time.perf_counter() - start)
    on, off = (times[m] for m in MODES)
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    print(f"Python {sys.version.split()[0]}, {args.rounds} alternating rounds, 50 tests")
    for mode, values in times.items():
        print(f"  {mode:26} median {statistics.median(values):.3f} s")
    print(f"  ratio (pairwise median)    {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()

"""A generated code base of many small modules, as a fresh CI checkout of a large project sees it.

    python benchmarks/bigproject.py DIR --modules 3000 [--tests 40] [--imports 300]

Writes ``DIR/pkg/m0.py ... m<N-1>.py`` (a few functions each, one with a branch) and
``DIR/tests/test_big.py``: every test imports a slice of ``--imports`` modules and calls one
function in each, so together the tests measure every module. Used by
``bench_scale.py`` and by the suite's scale test (``tests/test_scale.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

MODULE = '''\
"""Module {i} of a generated project."""

VALUE = {i}


def work(x):
    if x % 2:
        return x * {i} + 1
    return x - {i}


def unused(x):
    total = 0
    for k in range(x):
        total += k
    return total
'''


def make_big_project(root: Path, modules: int, tests: int = 40, imports: int = 300) -> None:
    """``modules`` modules in package ``pkg``; ``tests`` tests, each importing ``imports``."""
    pkg = root / "pkg"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    for i in range(modules):
        (pkg / f"m{i}.py").write_text(MODULE.format(i=i))
    tests_dir = root / "tests"
    tests_dir.mkdir(exist_ok=True)
    per = max(1, min(imports, modules))
    step = max(1, modules // max(1, tests))
    (tests_dir / "test_big.py").write_text(
        "import importlib\n"
        "import pytest\n\n\n"
        f"@pytest.mark.parametrize('t', range({tests}))\n"
        "def test_slice(t):\n"
        f"    start = t * {step}\n"
        f"    for k in range(start, start + {per}):\n"
        f"        mod = importlib.import_module(f'pkg.m{{k % {modules}}}')\n"
        "        assert mod.work(t) is not None\n"
    )
    (root / "pytest.ini").write_text("[pytest]\npythonpath = .\ntestpaths = tests\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--modules", type=int, default=3000)
    parser.add_argument("--tests", type=int, default=40)
    parser.add_argument("--imports", type=int, default=300)
    args = parser.parse_args()
    make_big_project(args.dir, args.modules, args.tests, args.imports)


if __name__ == "__main__":
    main()

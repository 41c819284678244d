"""Controller memory: what pytest-distcov adds to the controller's peak RSS.

    python benchmarks/bench_memory.py          # with an interpreter that has pytest-distcov

A generated project (its size set by the number of covered lines) is run with `-n N` twice,
plain and with `--distcov`, and the controller's peak RSS (the process running pytest; workers
excluded) is read from getrusage. What distcov adds is the difference. Three series vary one
thing at a time: the number of tests, the number of workers, the number of covered lines.
The claim checked: the added memory follows covered lines, not tests or workers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import LAUNCHER, clean_env

LINES_PER_FUNCTION = 10
FUNCTIONS_PER_MODULE = 50


def make_project(root: Path, functions: int, tests: int) -> None:
    """`functions` functions of 10 lines each; `tests` tests calling them round-robin."""
    pkg = root / "synth"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    modules = max(1, functions // FUNCTIONS_PER_MODULE)
    for m in range(modules):
        body = []
        for f in range(FUNCTIONS_PER_MODULE):
            body.append(f"def f{f}(x):")
            body += [f"    x = x + {i}" for i in range(LINES_PER_FUNCTION - 2)]
            body.append("    return x\n")
        (pkg / f"m{m}.py").write_text("\n".join(body))
    tests_dir = root / "tests"
    tests_dir.mkdir()
    lines = ["import importlib", "import pytest", ""]
    lines.append(f"@pytest.mark.parametrize('i', range({tests}))")
    lines.append("def test_call(i):")
    lines.append(f"    k = i % {modules * FUNCTIONS_PER_MODULE}")
    lines.append(f"    mod = importlib.import_module(f'synth.m{{k // {FUNCTIONS_PER_MODULE}}}')")
    lines.append(f"    assert getattr(mod, f'f{{k % {FUNCTIONS_PER_MODULE}}}')(0) >= 0")
    (tests_dir / "test_synth.py").write_text("\n".join(lines) + "\n")
    (root / "pytest.ini").write_text("[pytest]\npythonpath = .\n")


def peak_rss_kib(root: Path, workers: int, distcov: bool) -> int:
    out = root / ".rss"
    args = ["-n", str(workers), "-q", "-p", "no:cacheprovider", "tests"]
    if distcov:
        args += ["--distcov", "--distcov-source=synth", "--distcov-report="]
    env = clean_env()
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(out), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"bench: run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return int(out.read_text())


def measure(functions: int, tests: int, workers: int) -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_project(root, functions, tests)
        plain = peak_rss_kib(root, workers, distcov=False)
        dist = peak_rss_kib(root, workers, distcov=True)
    return plain, dist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    base_functions, base_tests, base_workers = 500, 2000, 2
    series = [
        ("tests", [(base_functions, t, base_workers) for t in (500, 2000, 8000)]),
        ("workers", [(base_functions, base_tests, w) for w in (1, 2, 4, 8)]),
        ("covered lines", [(f, base_tests, base_workers) for f in (100, 500, 2000)]),
    ]
    rows = [
        "| varying | tests | workers | covered lines | controller RSS plain | with distcov"
        " | added by distcov |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, configs in series:
        for functions, tests, workers in configs:
            plain, dist = measure(functions, tests, workers)
            covered = functions * LINES_PER_FUNCTION
            rows.append(
                f"| {label} | {tests} | {workers} | {covered} | {plain / 1024:.1f} MiB"
                f" | {dist / 1024:.1f} MiB | {(dist - plain) / 1024:+.1f} MiB |"
            )
            print(rows[-1], file=sys.stderr)
    text = "\n".join(rows)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()

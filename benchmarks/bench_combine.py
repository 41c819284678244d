"""`pytest-distcov combine` against `coverage combine`, on 250, 500 and 1,000 shard files.

    python benchmarks/bench_combine.py --python 3.11 --rounds 3

The shards come from a real project's data: pyparsing 3.2.3's own test suite (bench_overhead.py's
pinned toolchain and sdist), measured once with lines and once with branches, both with per-test
contexts. Two ways to cut it into shards:

* ``tests``: the suite split into N runs of consecutive tests, as CI splits a suite over N
  machines. A shard holds exactly what its tests covered, plus what ran outside any test
  (imports, collection), which every machine also runs.
* ``random``: each shard a different pseudo-random 60 % of every file's lines (arcs), a harder
  case: few shards repeat a file's data exactly.

Both tools read the very same files (one copy named ``.coverage.N`` for coverage, one
``.distcov.N`` for the store) from a warm page cache, rounds alternating; the table shows medians
of wall time, each tool run as a fresh process from the command line, exactly as a CI job would
run it. The results of the two are checked to be equal.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import clean_env
from bench_overhead import SUITES, Suite, find_python, prepare

SIZES = (250, 500, 1000)
SHARE = 0.6


def measure_suite(py: Path, src: Path, suite: Suite, branch: bool, out: Path) -> Path:
    cmd = [str(py), "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"]
    cmd += ["--distcov", f"--distcov-source={suite.package}", "--distcov-report=", "-n", "2"]
    cmd += ["--distcov-context=test", *(["--distcov-branch"] if branch else [])]
    cmd += [*suite.args, *suite.tests]
    done = subprocess.run(cmd, cwd=src, env=clean_env(), check=False, capture_output=True)
    if not (src / ".coverage").exists():
        raise SystemExit(f"no data from {suite.name}:\n{done.stdout[-3000:]!r}")
    shutil.move(src / ".coverage", out)
    return out


def make_shards(py: Path, data: Path, where: Path, count: int, how: str) -> None:
    """``count`` shards of ``data`` cut as ``how`` says, twice: coverage's copy and ours."""
    script = f"""
import random, re
from coverage import CoverageData
src = CoverageData({str(data)!r}); src.read()
arcs = src.has_arcs()
tests = {{}}  # node id ("" outside tests) -> file -> lines or arcs
for context in src.measured_contexts():
    src.set_query_contexts(["^" + re.escape(context) + "$"])
    node = context.rsplit("|", 1)[0]
    for f in src.measured_files():
        got = src.arcs(f) if arcs else src.lines(f)
        if got:
            tests.setdefault(node, {{}}).setdefault(f, set()).update(got)
outside = tests.pop("", {{}})
nodes = sorted(tests)
every = {{}}
for files in [outside, *tests.values()]:
    for f, got in files.items():
        every.setdefault(f, set()).update(got)
rng = random.Random({count})
for n in range({count}):
    if {how!r} == "tests":
        pick = {{f: set(v) for f, v in outside.items()}}
        for node in nodes[n * len(nodes) // {count} : (n + 1) * len(nodes) // {count}]:
            for f, got in tests[node].items():
                pick.setdefault(f, set()).update(got)
    else:
        pick = {{f: [i for i in sorted(v) if rng.random() < {SHARE}] for f, v in every.items()}}
    pick = {{f: sorted(v) for f, v in pick.items()}}
    for name in (f"ours/.distcov.{{n}}", f"theirs/.coverage.{{n}}"):
        out = CoverageData({str(where)!r} + "/" + name)
        (out.add_arcs if arcs else out.add_lines)(pick)
        out.write()
        out.close()
"""
    (where / "ours").mkdir(parents=True)
    (where / "theirs").mkdir()
    subprocess.run([str(py), "-c", script], check=True)


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True, check=False
    )
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")
    return took


def same_result(py: Path, ours: Path, theirs: Path) -> bool:
    script = f"""
from coverage import CoverageData
a = CoverageData({str(ours)!r}); a.read()
b = CoverageData({str(theirs)!r}); b.read()
arcs = b.has_arcs()
get = lambda d, f: sorted((d.arcs(f) if arcs else d.lines(f)) or [])
ok = sorted(a.measured_files()) == sorted(b.measured_files()) and all(
    get(a, f) == get(b, f) for f in b.measured_files())
print(ok)
"""
    return subprocess.check_output([str(py), "-c", script], text=True).strip() == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", default=f"{sys.version_info[0]}.{sys.version_info[1]}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--how", choices=["tests", "random"], action="append")
    args = parser.parse_args()
    suite = SUITES["pyparsing"]
    py, sources = prepare(find_python(args.python), [suite])
    src = sources[suite.name]
    rows = []
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{cpus} CPUs", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="distcov-bench-combine-") as tmp:
        base = Path(tmp)
        for branch in (False, True):
            kind = "branch" if branch else "line"
            data = measure_suite(py, src, suite, branch, base / f"{kind}.coverage")
            for how in args.how or ["tests", "random"]:
                for count in SIZES:
                    where = base / f"{kind}-{how}-{count}"
                    make_shards(py, data, where, count, how)
                    theirs = [str(py), "-m", "coverage", "combine", "--keep", "--data-file"]
                    theirs += [str(where / "theirs" / ".coverage"), str(where / "theirs")]
                    ours = [str(py), "-m", "pytest_distcov", "combine", str(where / "ours")]
                    # the shards name the suite's files: its checkout is the root they are in
                    ours += ["--data-file", str(where / "ours.out"), "--root", str(src)]
                    t_theirs, t_ours = [], []
                    for _ in range(args.rounds):
                        t_theirs.append(timed(theirs, where))
                        t_ours.append(timed(ours, where))
                    assert same_result(py, where / "ours.out", where / "theirs" / ".coverage")
                    a, b = statistics.median(t_theirs), statistics.median(t_ours)
                    rows.append((kind, how, count, a, b))
                    print(
                        f"{kind:6} {how:6} {count:5} coverage {a:6.2f} s  ours {b:6.2f} s"
                        f"  {a / b:4.1f}x",
                        file=sys.stderr,
                    )
                    shutil.rmtree(where)
    print(
        "| data | shards | files | `coverage combine --keep` | `pytest-distcov combine` | ratio |"
    )
    print("|---|---|---|---|---|---|")
    for kind, how, count, a, b in rows:
        print(f"| {kind} | {how} | {count:,} | {a:.2f} s | {b:.2f} s | {a / b:.1f}x |")


if __name__ == "__main__":
    main()

"""Large code bases: what the end of a run costs with 1,000 / 3,000 / 10,000 measured files.

    python benchmarks/bench_scale.py [--sizes 1000,3000,10000] [--rounds 3] [--check]

A project of N small modules (benchmarks/bigproject.py; every test imports a few hundred) is
run with `pytest -n 2 --distcov --distcov-source=pkg` and an empty pytest cache, as a fresh CI
checkout runs it, alternating with the same run without the plugin (`-p no:distcov`). For each
run the controller records when the last test finished (its last `pytest_runtest_logfinish`)
and when pytest returned: the difference is the run's tail, which for distcov is the merge, the
data file and the report (with parses). The controller's peak RSS is read from getrusage. For
scale, `coverage report` of the data file each distcov run wrote is timed alone (its parsing is
what any tool's report of those files costs). With ``--check``, each size is also compared
once, file by file and line by line, with a serial `coverage run -m pytest` of the same project.
Medians are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import clean_env
from bigproject import make_big_project

#: Runs pytest in this process (the controller); writes the tail and the peak RSS as JSON.
LAUNCHER = """
import json, resource, sys, time
import pytest

class Clock:
    last = None
    def pytest_runtest_logfinish(self):
        self.last = time.monotonic()

clock = Clock()
code = pytest.main(sys.argv[2:], plugins=[clock])
end = time.monotonic()
with open(sys.argv[1], "w") as f:
    json.dump({
        "tail": end - clock.last if clock.last else None,
        "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "exit": int(code),
    }, f)
sys.exit(int(code))
"""

#: `coverage report` of the data file the distcov run wrote, alone: the floor for any tool's tail.
REPORT_LAUNCHER = """
import json, resource, sys, time
from coverage.cmdline import main
start = time.monotonic()
code = main(["report", "--data-file=.coverage"])
took = time.monotonic() - start
with open(sys.argv[1], "w") as f:
    json.dump({"tail": took, "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               "exit": code}, f)
"""

MODES = {
    "plain": ["-p", "no:distcov"],
    "distcov": ["--distcov", "--distcov-source=pkg"],
    "coverage report": [],  # right after the distcov run, of the file it wrote
}


def run_once(project: Path, mode: str, out: Path) -> dict[str, float]:
    if mode == "coverage report":
        cmd = [sys.executable, "-c", REPORT_LAUNCHER, str(out)]
    else:
        shutil.rmtree(project / ".pytest_cache", ignore_errors=True)  # a fresh checkout
        (project / ".coverage").unlink(missing_ok=True)
        args = ["-n", "2", "-q", "-p", "no:randomly", *MODES[mode]]
        cmd = [sys.executable, "-c", LAUNCHER, str(out), *args]
    proc = subprocess.run(
        cmd,
        cwd=project,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    result = json.loads(out.read_text())
    if result["exit"] != 0:
        sys.exit(f"{mode} run failed ({result['exit']}):\n{proc.stdout[-2000:]}{proc.stderr}")
    return {"tail": float(result["tail"]), "rss_mib": result["rss_kib"] / 1024}


def check_exact(project: Path) -> str:
    """Compare distcov's data with a serial `coverage run` of the same project."""
    from coverage import CoverageData

    serial = project / "serial.coverage"
    subprocess.run(
        [sys.executable, "-m", "coverage", "run", f"--data-file={serial}", "--source=pkg",
         "-m", "pytest", "-q", "-p", "no:distcov", "-p", "no:xdist", "-p", "no:cacheprovider"],
        cwd=project, env=clean_env(), capture_output=True, check=True, timeout=3600,
    )  # fmt: skip

    def lines(path: Path) -> dict[str, set[int]]:
        # Line 0 is coverage.py's mark that a module without statements ran (an empty
        # __init__.py); no report shows it, and the probe engine (3.10/3.11) does not record it.
        data = CoverageData(basename=str(path))
        data.read()
        return {f: set(data.lines(f) or ()) - {0} for f in data.measured_files()}

    got, want = lines(project / ".coverage"), lines(serial)
    return "exact" if got == want and got else f"DIFFERS ({len(got)} vs {len(want)} files)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,3000,10000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--check", action="store_true", help="compare with a serial run")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="distcov-bench-scale-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            project = Path(tmp) / f"project-{size}"
            make_big_project(project, modules=size, tests=40, imports=300)
            runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
            for _ in range(args.rounds):  # alternating, so drift hits both alike
                for mode in MODES:
                    runs[mode].append(run_once(project, mode, Path(tmp) / "result.json"))
            exact = check_exact(project) if args.check else "not checked"
            med = {
                m: {k: statistics.median(r[k] for r in rs) for k in ("tail", "rss_mib")}
                for m, rs in runs.items()
            }
            rows.append((size, med, exact))
            shutil.rmtree(project)
    print(f"Python {sys.version.split()[0]}, -n 2, empty pytest cache, {args.rounds} rounds")
    print()
    print("| measured files | tail, plain | tail, distcov | `coverage report` alone |"
          " controller RSS, plain | controller RSS, distcov | `coverage report` RSS |"
          " vs serial coverage run |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for size, med, exact in rows:
        plain, dc, alone = med["plain"], med["distcov"], med["coverage report"]
        print(
            f"| {size:,} | {plain['tail']:.2f} s | {dc['tail']:.2f} s | {alone['tail']:.2f} s |"
            f" {plain['rss_mib']:.0f} MiB | {dc['rss_mib']:.0f} MiB | {alone['rss_mib']:.0f} MiB |"
            f" {exact} |"
        )


if __name__ == "__main__":
    main()

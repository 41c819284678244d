"""Wall time of real test suites: plain `pytest -n 2`, pytest-cov, and pytest-distcov.

    python benchmarks/bench_overhead.py --python 3.11 --python 3.13 --rounds 5

For each interpreter it builds a virtualenv under benchmarks/.cache/ with a pinned toolchain,
this checkout of pytest-distcov (a normal, non-editable install) and the pinned suites, which
are real sdists downloaded from PyPI with their own tests. Then, for every suite, it runs
each mode once untimed (a warm-up) and then the modes in alternating order, round after round,
so that machine noise falls on all modes alike, and prints the median wall time of each mode
and its ratio to plain `pytest -n 2`, as a Markdown table (``--markdown FILE`` also writes it
to a file).

Each mode keeps its own pytest cache directory from run to run, as a developer's checkout
does; pytest-distcov keeps the report's parses of unchanged sources there. ``distcov-cold``
clears its cache before every run: the figure of a first run in a fresh CI checkout.

The controller's peak RSS is recorded too (the process that runs pytest; workers excluded).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import LAUNCHER, SLIPCOVER_LAUNCHER, clean_env

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"

#: The toolchain every venv gets, pinned so that runs can be compared over time.
TOOLCHAIN = [
    "pytest==9.2.0",
    "pytest-xdist==3.8.0",
    "pytest-cov==7.1.0",
    "coverage==7.17.3; python_version >= '3.11'",
    "coverage==7.16.2; python_version < '3.11'",  # 7.17 needs 3.11+
    "slipcover==1.1.0",  # pytest-distcov[fast], and the SlipCover mode
]


@dataclass(frozen=True)
class Suite:
    name: str
    sdist: str  # pip requirement of the sdist
    package: str  # what to measure
    tests: tuple[str, ...]
    deps: tuple[str, ...] = ()
    args: tuple[str, ...] = ()


SUITES = {
    s.name: s
    for s in (
        Suite(
            "dateutil",
            "python-dateutil==2.9.0.post0",
            "dateutil",
            ("tests",),
            deps=("six", "freezegun==1.5.1", "hypothesis==6.131.0"),
            # Its tests run with filterwarnings=error; pytest 9 deprecates a pattern they use.
            args=("-W", "ignore::pytest.PytestRemovedIn10Warning"),
        ),
        Suite(
            "pyparsing",
            "pyparsing==3.2.3",
            "pyparsing",
            ("tests/test_unit.py", "tests/test_simple_unit.py", "tests/test_util.py"),
        ),
        Suite("more-itertools", "more-itertools==10.7.0", "more_itertools", ("tests",)),
    )
}

MODES = {
    "plain": [],
    "pytest-cov": ["--cov={pkg}"],
    # the default engine: sysmon on 3.12+, SlipCover's probes on 3.10/3.11 (slipcover installed)
    "distcov": ["--distcov", "--distcov-source={pkg}"],
    # the same, each run as the first one in a fresh checkout: pytest's cache (which keeps
    # the report's parses of unchanged sources) is cleared first
    "distcov-cold": ["--distcov", "--distcov-source={pkg}", "--cache-clear"],
    # coverage.py's C tracer, as on 3.10/3.11 without pytest-distcov[fast]
    "distcov-ctrace": ["--distcov", "--distcov-source={pkg}", "--distcov-engine=coverage"],
    # SlipCover's own command line and xdist plugin (its JSON report to a file)
    "slipcover": [],
}
#: The modes that only mean something where the probe engine runs.
PROBE_MODES = ("distcov-ctrace", "slipcover")


def find_python(spec: str) -> str:
    """A version like 3.11 (pyenv's or one on PATH) or a path to an interpreter."""
    if os.path.sep in spec:
        return spec
    for candidate in sorted(Path("/root/.pyenv/versions").glob(f"{spec}.*"), reverse=True):
        exe = candidate / "bin" / "python"
        if exe.exists():
            return str(exe)
    found = shutil.which(f"python{spec}")
    if not found:
        sys.exit(f"bench: no Python {spec} found (pass a path instead)")
    return found


def run(cmd: list[str], **kw: object) -> None:
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def prepare(python: str, suites: list[Suite]) -> tuple[Path, dict[str, Path]]:
    version = subprocess.check_output(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], text=True
    ).strip()
    venv = CACHE / f"venv-{version}"
    py = venv / "bin" / "python"
    if not py.exists():
        run([python, "-m", "venv", str(venv)])
        run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    deps = [d for s in suites for d in s.deps]
    run([str(py), "-m", "pip", "install", "-q", *TOOLCHAIN, *deps])
    run([str(py), "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(ROOT)])
    sources: dict[str, Path] = {}
    downloads = CACHE / "sdists"
    downloads.mkdir(parents=True, exist_ok=True)
    for s in suites:
        name, _, ver = s.sdist.partition("==")
        found = [
            p
            for p in downloads.glob("*.tar.gz")
            if ver in p.name and p.name.lower().replace("_", "-").startswith(name.lower())
        ]
        if not found:
            run(
                [
                    str(py),
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "-d",
                    str(downloads),
                    s.sdist,
                ]
            )
            found = [
                p
                for p in downloads.glob("*.tar.gz")
                if ver in p.name and p.name.lower().replace("_", "-").startswith(name.lower())
            ]
        tarball = found[0]
        src = CACHE / "src" / tarball.name.removesuffix(".tar.gz")
        if not src.exists():
            src.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(tarball) as tar:
                tar.extractall(src.parent, filter="data")
        run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(src)])
        sources[s.name] = src
    return py, sources


@dataclass
class Sample:
    seconds: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    codes: set[int] = field(default_factory=set)


@functools.cache
def installed_dir(py: Path, package: str) -> str:
    """Where ``package`` is installed in the venv (SlipCover's --source takes directories)."""
    code = f"import {package} as m, os; print(os.path.dirname(m.__file__))"
    return subprocess.check_output([str(py), "-c", code], text=True, cwd="/").strip()


def time_mode(py: Path, src: Path, suite: Suite, mode: str, workers: int) -> tuple[float, int, int]:
    args = [a.format(pkg=suite.package) for a in MODES[mode]]
    rss_file = src / ".bench-rss"
    if mode == "slipcover":
        package_dir = installed_dir(py, suite.package)
        out = src / ".bench-slipcover.json"
        launcher = [SLIPCOVER_LAUNCHER, str(rss_file), "--source", package_dir, "--json"]
        # SlipCover's pytest plugin is imported before pytest can rewrite it: a warning that
        # suites with filterwarnings = error would turn into an error
        launcher += [
            "--out",
            str(out),
            "-m",
            "pytest",
            "-W",
            "ignore::pytest.PytestAssertRewriteWarning",
        ]
    else:
        launcher = [LAUNCHER, str(rss_file)]
    cmd = [
        str(py),
        "-c",
        *launcher,
        "-n",
        str(workers),
        "-q",
        # every mode keeps its own pytest cache from run to run, as a developer's checkout does
        "-o",
        f"cache_dir=.bench-cache/{mode}",
        "-p",
        "no:randomly",
        *suite.args,
        *args,
        *suite.tests,
    ]
    env = clean_env()
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        sys.exit(
            f"bench: {suite.name} {mode} exited {proc.returncode}:\n{proc.stdout[-3000:]}"
            f"\n{proc.stderr[-3000:]}"
        )
    if mode == "slipcover" and not (src / ".bench-slipcover.json").exists():
        sys.exit(f"bench: {suite.name} slipcover wrote no report:\n{proc.stdout[-3000:]}")
    for leftover in (".coverage", "coverage.xml", ".bench-slipcover.json"):
        (src / leftover).unlink(missing_ok=True)
    return elapsed, int(rss_file.read_text()), proc.returncode


def bench(
    py: Path,
    sources: dict[str, Path],
    suites: list[Suite],
    *,
    rounds: int,
    workers: int,
    modes: list[str],
) -> dict[str, dict[str, Sample]]:
    results: dict[str, dict[str, Sample]] = {s.name: {m: Sample() for m in modes} for s in suites}
    for s in suites:
        shutil.rmtree(sources[s.name] / ".bench-cache", ignore_errors=True)
        for mode in modes:  # untimed: compiled bytecode and pytest's caches, as in later rounds
            time_mode(py, sources[s.name], s, mode, workers)
        print(f"  warm-up {s.name:15} done", file=sys.stderr)
    for r in range(rounds):
        for s in suites:
            order = modes[r % len(modes) :] + modes[: r % len(modes)]  # alternate who goes first
            for mode in order:
                secs, rss, code = time_mode(py, sources[s.name], s, mode, workers)
                sample = results[s.name][mode]
                sample.seconds.append(secs)
                sample.rss_kib.append(rss)
                sample.codes.add(code)
                print(
                    f"  round {r + 1}/{rounds} {s.name:15} {mode:11} {secs:6.2f} s", file=sys.stderr
                )
    return results


def table(version: str, results: dict[str, dict[str, Sample]], workers: int) -> str:
    modes = list(next(iter(results.values())))
    head = f"| Python {version}, `-n {workers}` | " + " | ".join(modes)
    head += " | " + " | ".join(f"{m} / plain" for m in modes if m != "plain")
    pairs = [
        ("distcov", "pytest-cov"),
        ("distcov-cold", "pytest-cov"),
        ("distcov-ctrace", "pytest-cov"),
        ("distcov", "slipcover"),
    ]
    compare = [(a, b) for a, b in pairs if a in modes and b in modes]
    head += " | " + " | ".join(f"{a} / {b}" for a, b in compare) + " |"
    lines = [head, "|---" * (2 * len(modes) + len(compare)) + "|"]
    for name, by_mode in results.items():
        med = {m: statistics.median(s.seconds) for m, s in by_mode.items()}
        cells = [f"{med[m]:.2f} s" for m in modes]
        cells += [f"{med[m] / med['plain']:.2f}x" for m in modes if m != "plain"]
        cells += [f"{med[a] / med[b]:.2f}" for a, b in compare]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append", help="3.11, 3.13, ... or a path")
    parser.add_argument("--suite", action="append", choices=sorted(SUITES))
    parser.add_argument("--mode", action="append", choices=sorted(MODES), help="only these")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--json", type=Path, help="write raw samples to this file")
    args = parser.parse_args()
    suites = [SUITES[n] for n in (args.suite or sorted(SUITES))]
    out: list[str] = []
    raw: dict[str, object] = {}
    for spec in args.python or [f"{sys.version_info[0]}.{sys.version_info[1]}"]:
        python = find_python(spec)
        py, sources = prepare(python, suites)
        version = subprocess.check_output(
            [str(py), "-c", "import platform; print(platform.python_version())"], text=True
        ).strip()
        print(f"bench: Python {version}: {args.rounds} rounds", file=sys.stderr)
        probes = tuple(int(p) for p in version.split(".")[:2]) < (3, 12)
        modes = [m for m in MODES if probes or m not in PROBE_MODES]
        if args.mode:
            modes = [m for m in modes if m in args.mode or m == "plain"]
        results = bench(py, sources, suites, rounds=args.rounds, workers=args.workers, modes=modes)
        out.append(table(version, results, args.workers))
        raw[version] = {
            n: {m: vars(s) | {"codes": sorted(s.codes)} for m, s in r.items()}
            for n, r in results.items()
        }
    text = "\n\n".join(out)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()

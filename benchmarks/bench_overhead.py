"""Wall time of real test suites: plain `pytest -n 2`, pytest-cov, and pytest-distcov.

    python benchmarks/bench_overhead.py --python 3.11 --python 3.13 --rounds 5
    .ci/in-sid python3.14 benchmarks/bench_overhead.py --python 3.14 --coverage 7.18.0

(``.ci/in-sid`` runs it in the Debian sid root that has CPython 3.14 and 3.15.)

The suites: three libraries of different shapes (dates, a CPU-bound recursive parser,
iterator tools), ``jsonschema`` (7,000+ short tests: the cost of each test) and ``attrs``
(hypothesis-heavy). ``--newest`` takes the newest release of everything instead of the pins
(a fresh venv and fresh sdists): figures on releases nobody tuned for.

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

The controller's peak RSS is recorded too (the process that runs pytest; workers excluded), and
the CPU time of every process of the run (user + system, the workers included): on a shared
machine the CPU time moves far less with other load than the wall time, so a second table gives
its medians and ratios.

``--exactness`` times nothing: it checks that the default engine's branch coverage is exactly
coverage.py's. For every suite it runs ``--distcov-branch`` with a JSON report twice, with the
default engine (on 3.12+ the branch markers) and with ``--distcov-engine=coverage`` (coverage.py's
C tracer, the reference: ``COVERAGE_CORE=ctrace``), under ``-n 2`` and again without xdist
(unless ``--skip-serial``), and compares the two reports file by file: executed and missing
lines, executed and missing branches. It prints the default engine's ``distcov:`` lines (its
header says how the run was measured, its notes which files fell back to coverage.py's tracer)
and the first differences, and exits non-zero if any file differs:

    python benchmarks/bench_overhead.py --exactness --python 3.13 --suite pyparsing
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections import Counter
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
    # pytest-distcov[fast] and the SlipCover mode, which only mean something before 3.12
    "slipcover==1.1.0; python_version < '3.12'",
]


@dataclass(frozen=True)
class Suite:
    name: str
    sdist: str  # pip requirement of the sdist
    package: str  # what to measure
    tests: tuple[str, ...]
    deps: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    #: written as .coveragerc into the suite's source (None: the suite's own settings stand)
    coveragerc: str | None = None


#: One pin for every suite that uses hypothesis: all suites share one venv, and two pins of one
#: package made its install fail. (6.170 needs Python 3.11: 3.10 takes the last release for it.)
HYPOTHESIS = (
    "hypothesis==6.170.27; python_version >= '3.11'",
    "hypothesis==6.168.5; python_version < '3.11'",
)

SUITES = {
    s.name: s
    for s in (
        Suite(
            "dateutil",
            "python-dateutil==2.9.0.post0",
            "dateutil",
            ("tests",),
            deps=("six", "freezegun==1.5.1", *HYPOTHESIS),
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
        # Thousands of short tests (7,000+, most of them one JSON-Schema-Test-Suite case each):
        # the per-test cost of each mode.
        Suite(
            "jsonschema",
            "jsonschema==4.26.0",
            "jsonschema",
            ("jsonschema/tests",),
            deps=(
                "attrs==26.1.0",
                "jsonschema-specifications==2025.9.1",
                "referencing==0.37.0",
                "rpds-py==2026.9.1",
                "jsonpath-ng==1.17.0",
            ),
            # Its pyproject.toml asks coverage for per-test contexts (dynamic_context =
            # test_function), which pytest-cov refuses under xdist: an empty .coveragerc (read
            # first, and then alone) makes every mode measure plain lines.
            coveragerc="",
        ),
        # Hypothesis-heavy: most of its 1,300+ tests are property tests over generated classes.
        Suite(
            "attrs",
            "attrs==26.1.0",
            "attr",
            ("tests",),
            deps=(*HYPOTHESIS, "pympler==1.1", "cloudpickle==3.1.3"),
        ),
    )
}

MODES = {
    "plain": [],
    "pytest-cov": ["--cov={pkg}"],
    "pytest-cov-branch": ["--cov={pkg}", "--cov-branch"],
    # the default engine: sysmon on 3.12+, SlipCover's probes on 3.10/3.11 (slipcover installed)
    "distcov": ["--distcov", "--distcov-source={pkg}"],
    # the same, each run as the first one in a fresh checkout: pytest's cache (which keeps
    # the report's parses of unchanged sources) is cleared first
    "distcov-cold": ["--distcov", "--distcov-source={pkg}", "--cache-clear"],
    # coverage.py's C tracer, as on 3.10/3.11 without pytest-distcov[fast]
    "distcov-ctrace": ["--distcov", "--distcov-source={pkg}", "--distcov-engine=coverage"],
    "distcov-branch": ["--distcov", "--distcov-source={pkg}", "--distcov-branch"],
    # per-test contexts: pytest-cov's (coverage.py's C tracer), and pytest-distcov's (on 3.12+
    # sys.monitoring line events, before that the C tracer)
    "pytest-cov-context": ["--cov={pkg}", "--cov-context=test"],
    "distcov-context": ["--distcov", "--distcov-source={pkg}", "--distcov-context=test"],
    # per-test contexts with branches (on 3.12+ the branch markers record both)
    "pytest-cov-context-branch": ["--cov={pkg}", "--cov-context=test", "--cov-branch"],
    "distcov-context-branch": [
        "--distcov",
        "--distcov-source={pkg}",
        "--distcov-context=test",
        "--distcov-branch",
    ],
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


def _unpinned(requirement: str) -> str:
    """``name==1.2; marker`` -> ``name; marker``: the newest release instead."""
    name, _, rest = requirement.partition("==")
    _, semi, marker = rest.partition(";")
    return name + (semi + marker if semi else "")


def _sdist(py: Path, downloads: Path, requirement: str) -> Path:
    """The sdist of ``requirement`` in ``downloads`` (downloaded from the index once)."""
    name, _, ver = requirement.partition("==")

    def found() -> list[Path]:
        return [
            p
            for p in downloads.glob("*.tar.gz")
            if ver in p.name and p.name.lower().replace("_", "-").startswith(name.lower() + "-")
        ]

    if not found():
        download = [str(py), "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        run([*download, "-d", str(downloads), requirement])
    return found()[0]


def prepare(
    python: str, suites: list[Suite], coverage: str | None = None, *, newest: bool = False
) -> tuple[Path, dict[str, Path]]:
    """A venv with the toolchain and the suites: pinned, or (``newest``) the newest release of
    every one of them, suites included, resolved afresh on every call."""
    version = subprocess.check_output(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], text=True
    ).strip()
    venv = CACHE / (f"venv-{version}-newest" if newest else f"venv-{version}")
    py = venv / "bin" / "python"
    if newest:
        shutil.rmtree(venv, ignore_errors=True)
    if not py.exists():
        run([python, "-m", "venv", str(venv)])
        run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    deps = [d for s in suites for d in s.deps]
    toolchain = [t for t in TOOLCHAIN if not (coverage and t.startswith("coverage=="))]
    if coverage:
        toolchain.append(f"coverage=={coverage}")
    if newest:
        toolchain = [_unpinned(t) for t in toolchain]
        deps = [_unpinned(d) for d in deps]
    run([str(py), "-m", "pip", "install", "-q", "--upgrade", *toolchain, *deps])
    run([str(py), "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(ROOT)])
    sources: dict[str, Path] = {}
    downloads = CACHE / ("sdists-newest" if newest else "sdists")
    if newest:
        shutil.rmtree(downloads, ignore_errors=True)
    downloads.mkdir(parents=True, exist_ok=True)
    for s in suites:
        tarball = _sdist(py, downloads, _unpinned(s.sdist) if newest else s.sdist)
        src = CACHE / "src" / tarball.name.removesuffix(".tar.gz")
        if not src.exists():
            src.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(tarball) as tar:
                tar.extractall(src.parent, filter="data")
        run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(src)])
        if s.coveragerc is not None:
            (src / ".coveragerc").write_text(s.coveragerc)
        sources[s.name] = src
    return py, sources


def versions(py: Path, names: list[str]) -> str:
    """``name version`` of each distribution installed in the venv, for the table's caption."""
    code = (
        "import importlib.metadata as m, sys\n"
        "for n in sys.argv[1:]:\n"
        "    try: print(n, m.version(n))\n"
        "    except m.PackageNotFoundError: pass\n"
    )
    out = subprocess.check_output([str(py), "-c", code, *names], text=True, cwd="/")
    return ", ".join(out.split("\n")[:-1])


@dataclass
class Sample:
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    codes: set[int] = field(default_factory=set)
    #: how pytest-distcov measured (its summary's engine, and how many files fell back)
    measured: set[str] = field(default_factory=set)


#: pytest-distcov's summary title names the engine; its note names the files that fell back.
_ENGINE = re.compile(r"distcov: \d+ workers?, (.+?), data in ")
_FELL_BACK = re.compile(r"branch markers: (\d+) files? measured with coverage\.py's tracer")


def how_measured(stdout: str) -> str:
    """What a pytest-distcov run's output says of how it measured: '' for another mode."""
    engine = _ENGINE.search(stdout)
    if engine is None:
        return ""
    fell_back = _FELL_BACK.search(stdout)
    files = int(fell_back.group(1)) if fell_back else 0
    return f"{engine.group(1)}; files measured by coverage.py's tracer instead: {files}"


@functools.cache
def installed_dir(py: Path, package: str) -> str:
    """Where ``package`` is installed in the venv (SlipCover's --source takes directories)."""
    code = f"import {package} as m, os; print(os.path.dirname(m.__file__))"
    return subprocess.check_output([str(py), "-c", code], text=True, cwd="/").strip()


def _children_cpu() -> float:
    """User + system seconds of every reaped descendant so far (xdist's workers are reaped by
    the controller, and so counted in its children's figures)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_mode(
    py: Path, src: Path, suite: Suite, mode: str, workers: int
) -> tuple[float, float, int, int, str]:
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
    cpu_before, start = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, check=False)
    elapsed, cpu = time.perf_counter() - start, _children_cpu() - cpu_before
    if proc.returncode not in (0, 1):
        sys.exit(
            f"bench: {suite.name} {mode} exited {proc.returncode}:\n{proc.stdout[-3000:]}"
            f"\n{proc.stderr[-3000:]}"
        )
    if mode == "slipcover" and not (src / ".bench-slipcover.json").exists():
        sys.exit(f"bench: {suite.name} slipcover wrote no report:\n{proc.stdout[-3000:]}")
    for leftover in (".coverage", "coverage.xml", ".bench-slipcover.json"):
        (src / leftover).unlink(missing_ok=True)
    return elapsed, cpu, int(rss_file.read_text()), proc.returncode, how_measured(proc.stdout)


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
                secs, cpu, rss, code, how = time_mode(py, sources[s.name], s, mode, workers)
                sample = results[s.name][mode]
                sample.seconds.append(secs)
                sample.cpu.append(cpu)
                sample.rss_kib.append(rss)
                sample.codes.add(code)
                if how:
                    sample.measured.add(how)
                print(
                    f"  round {r + 1}/{rounds} {s.name:15} {mode:17} {secs:6.2f} s"
                    f" (cpu {cpu:6.2f} s)",
                    file=sys.stderr,
                )
    return results


def table(
    version: str, results: dict[str, dict[str, Sample]], workers: int, *, cpu: bool = False
) -> str:
    """Medians of wall time (or, with ``cpu``, of CPU time) and their ratios, in Markdown."""
    modes = list(next(iter(results.values())))
    what = "CPU time" if cpu else "wall time"
    head = f"| Python {version}, `-n {workers}`, {what} | " + " | ".join(modes)
    head += " | " + " | ".join(f"{m} / plain" for m in modes if m != "plain")
    pairs = [
        ("distcov", "pytest-cov"),
        ("distcov-branch", "pytest-cov-branch"),
        ("distcov-cold", "pytest-cov"),
        ("distcov-ctrace", "pytest-cov"),
        ("distcov-context", "pytest-cov-context"),
        ("distcov-context-branch", "pytest-cov-context-branch"),
        ("distcov", "slipcover"),
    ]
    compare = [(a, b) for a, b in pairs if a in modes and b in modes]
    head += "".join(f" | {a} / {b}" for a, b in compare) + " |"
    lines = [head, "|---" * (2 * len(modes) + len(compare)) + "|"]
    for name, by_mode in results.items():
        med = {m: statistics.median(s.cpu if cpu else s.seconds) for m, s in by_mode.items()}
        cells = [f"{med[m]:.2f} s" for m in modes]
        cells += [f"{med[m] / med['plain']:.2f}x" for m in modes if m != "plain"]
        cells += [f"{med[a] / med[b]:.2f}" for a, b in compare]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def round_ratios(results: dict[str, dict[str, Sample]], *, cpu: bool = False) -> str:
    """Each mode against plain pytest within each round (the rounds alternate the modes, so
    the two runs of a pair are minutes apart at most): the median of those ratios, then every
    round's. On a machine whose speed drifts between rounds this moves less than the ratio of
    the medians in :func:`table`."""
    what = "CPU time" if cpu else "wall time"
    lines = [f"Each round's own ratio to plain, {what} (median: the rounds in order):", ""]
    for name, by_mode in results.items():
        base = by_mode.get("plain")
        plain = (base.cpu if cpu else base.seconds) if base is not None else []
        cells = []
        for mode, sample in by_mode.items():
            if mode == "plain":
                continue
            times = sample.cpu if cpu else sample.seconds
            # (a round that timed plain as nothing, or only one of the two, is left out)
            ratios = [t / p for t, p in zip(times, plain, strict=False) if p > 0]
            if not ratios:
                cells.append(f"{mode} no round to compare")
                continue
            rounds = ", ".join(f"{r:.2f}" for r in ratios)
            cells.append(f"{mode} {statistics.median(ratios):.2f}x ({rounds})")
        lines.append(f"- {name}: " + "; ".join(cells))
    return "\n".join(lines)


def measured_notes(results: dict[str, dict[str, Sample]]) -> str:
    """How each pytest-distcov mode measured each suite, as its summary said (every round)."""
    lines = ["How pytest-distcov measured (its summary, every round):", ""]
    for name, by_mode in results.items():
        for mode, sample in by_mode.items():
            for how in sorted(sample.measured):
                lines.append(f"- {name}, {mode}: {how}")
    return "\n".join(lines)


#: The keys of a file in coverage.py's JSON report that --exactness compares.
EXACT_KEYS = ("executed_lines", "missing_lines", "executed_branches", "missing_branches")
#: The two engines --exactness compares: the default one and coverage.py's C tracer (from
#: Python 3.14 coverage.py's default core is sysmon: the reference sets COVERAGE_CORE).
ENGINES = {"default": [], "ctrace": ["--distcov-engine=coverage"]}
ENGINE_ENV = {"default": {}, "ctrace": {"COVERAGE_CORE": "ctrace"}}
#: Seconds an --exactness run may take before it counts as failed (the C tracer on the
#: slowest suite takes about 3 minutes on 2 loaded cores).
RUN_LIMIT = 1800
#: How many differing files --exactness shows in full, per suite and mode.
SHOWN_FILES = 5

#: A line, or a branch as its arc (from, to).
Value = int | tuple[int, int]
#: file -> key of EXACT_KEYS -> its values, as a set
Measured = dict[str, dict[str, set[Value]]]


@dataclass
class ExactRun:
    """One run of a suite for --exactness: its JSON report as sets, and what it printed."""

    files: Measured
    seconds: float
    returncode: int
    distcov_lines: list[str]


def _as_sets(report: dict[str, object]) -> Measured:
    """file -> key -> the set of its lines (ints) or branches ((from, to) tuples)."""
    files = report.get("files")
    assert isinstance(files, dict)
    return {
        name: {
            key: {(v[0], v[1]) if isinstance(v, list) else int(v) for v in entry.get(key, [])}
            for key in EXACT_KEYS
        }
        for name, entry in files.items()
    }


def _comparable_run(src: Path, suite: Suite, workers: int) -> tuple[list[str], list[str]]:
    """The pytest arguments that make two runs of ``suite`` compare: ``-n workers`` (0:
    without xdist), and where it uses hypothesis the same examples in both (a fixed seed, and
    no database of earlier runs' ones, which this removes)."""
    xdist = ["-n", str(workers)] if workers else ["-p", "no:xdist"]
    if not any(dep.startswith("hypothesis==") for dep in suite.deps):
        return xdist, []
    shutil.rmtree(src / ".hypothesis", ignore_errors=True)
    return xdist, ["--hypothesis-seed=0"]


def exact_run(
    py: Path,
    src: Path,
    suite: Suite,
    engine: str,
    workers: int,
    *,
    extra: list[str],
    tag: str = "",
) -> ExactRun:
    """``suite`` measured for branches with ``engine`` (``-n workers``; 0: without xdist;
    -1: neither, where ``extra`` says where the tests run, as ``--distcov-remote``)."""
    tag = tag or f"{py.parent.parent.name}-{engine}-n{workers}"  # venv-3.13-default-n2
    out = src / f".exact-{tag}.json"
    out.unlink(missing_ok=True)
    xdist, hypothesis = _comparable_run(src, suite, max(workers, 0))
    if workers < 0:
        xdist = []
    cmd = [
        str(py),
        "-m",
        "pytest",
        *xdist,
        # not -q: it hides the header, which says how the run was measured
        "-o",
        f"cache_dir=.bench-cache/exact-{tag}",
        "-p",
        "no:randomly",
        *hypothesis,
        *suite.args,
        "--distcov",
        f"--distcov-source={suite.package}",
        "--distcov-branch",
        f"--distcov-report=json:{out}",
        *ENGINES[engine],
        *extra,
        *suite.tests,
    ]
    start = time.perf_counter()
    env = clean_env() | ENGINE_ENV[engine]
    try:
        proc = subprocess.run(
            cmd, cwd=src, env=env, capture_output=True, text=True, check=False, timeout=RUN_LIMIT
        )
    except subprocess.TimeoutExpired:  # a stalled host or worker: a failure, not a hang
        sys.exit(f"bench: {suite.name} {tag} did not end in {RUN_LIMIT} s")
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1) or not out.exists():
        sys.exit(
            f"bench: {suite.name} {tag} exited {proc.returncode} (report written:"
            f" {out.exists()}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    files = _as_sets(json.loads(out.read_text()))
    out.unlink()
    lines = [line for line in proc.stdout.splitlines() if line.startswith("distcov:")]
    return ExactRun(files, elapsed, proc.returncode, lines)


#: What a run recorded per test as coverage.py's report counts it: (file, context, an executed
#: statement or an executed branch).
ByContext = set[tuple[str, str, Value]]

#: Run in the suite's venv on a data file: each context's lines and arcs as the report counts
#: them (through coverage.py's file reporter: multi-line statements by their first line, only
#: statements, only the arcs of branch lines), as JSON [file, context, line or [from, to]].
_BY_CONTEXT = """
import json, sqlite3, sys
from coverage import Coverage
from coverage.python import PythonFileReporter
cov = Coverage()  # (the suite's settings: what its reports exclude)
db = sqlite3.connect(sys.argv[1])
rows = {}
for path, context, fromno, tono in db.execute(
    "SELECT file.path, context.context, arc.fromno, arc.tono FROM arc"
    " JOIN file ON file.id = arc.file_id JOIN context ON context.id = arc.context_id"
):
    rows.setdefault((path, context), set()).add((fromno, tono))
db.close()
out, reporters = [], {}
for (path, context), arcs in rows.items():
    if path not in reporters:
        fr = PythonFileReporter(path, cov)
        counts = fr.exit_counts()
        branches = {a for a in fr.arcs() if counts.get(a[0], 0) > 1}
        reporters[path] = (fr, fr.lines(), branches)
    fr, statements, branches = reporters[path]
    ends = {line for arc in arcs for line in arc if line > 0}
    for line in fr.translate_lines(ends) & statements:
        out.append((path, context, line))
    for arc in fr.translate_arcs(arcs) & branches:
        out.append((path, context, list(arc)))
json.dump(out, sys.stdout)
"""


def context_run(
    py: Path, src: Path, suite: Suite, tool: str, workers: int, *, gc_threshold: int = 0
) -> ByContext:
    """``suite`` measured with per-test contexts and branches by ``tool`` ("distcov", or
    "pytest-cov" on coverage.py's C tracer), ``-n workers`` (0: without xdist): every line
    and arc each context recorded, read from the data file. With ``gc_threshold``, the
    garbage collector's first threshold is that in the processes that run the tests."""
    data = src / ".coverage"
    data.unlink(missing_ok=True)
    xdist, hypothesis = _comparable_run(src, suite, workers)
    if tool == "distcov":
        how = ["--distcov", f"--distcov-source={suite.package}", "--distcov-context=test"]
        how += ["--distcov-branch", "--distcov-report="]
    else:
        how = [f"--cov={suite.package}", "--cov-context=test", "--cov-branch"]
        how += ["--cov-report="]
    cmd = [str(py), "-m", "pytest", *xdist, "-q", "-p", "no:randomly", *hypothesis]
    cmd += ["-o", f"cache_dir=.bench-cache/ctx-{tool}-n{workers}", *suite.args, *how]
    env = clean_env() if tool == "distcov" else clean_env() | {"COVERAGE_CORE": "ctrace"}
    if gc_threshold:
        site = CACHE / f"gc-threshold-{gc_threshold}"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(f"import gc\ngc.set_threshold({gc_threshold})\n")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [*cmd, *suite.tests], cwd=src, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode not in (0, 1) or not data.exists():
        sys.exit(
            f"bench: {suite.name} {tool} -n {workers} exited {proc.returncode}:"
            f"\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    proc = subprocess.run(
        [str(py), "-c", _BY_CONTEXT, str(data)], cwd=src, capture_output=True, text=True, check=True
    )
    data.unlink()
    return {
        (path, context, tuple(value) if isinstance(value, list) else value)
        for path, context, value in json.loads(proc.stdout)
    }


def context_exactness(
    py: Path, src: Path, suite: Suite, workers: int, *, gc_threshold: int = 0
) -> bool:
    """Compare what pytest-distcov recorded per test (lines and arcs) with pytest-cov's serial
    run on coverage.py's C tracer: without xdist, and under ``-n workers``. With
    ``gc_threshold``, pytest-cov's run is also compared with two more of its own: one whose
    garbage collector runs at other times (records that move between them move with the
    collector: a generator closed when it is collected counts its line in the test running
    then), and one under ``-n workers`` (records that move with which worker ran which test
    after which: a cache the first test on a worker fills)."""
    reference = context_run(py, src, suite, "pytest-cov", 0)
    # (label, tool, -n, the collector's threshold: 0 for Python's own)
    runs = [(f"-n {n}" if n else "no xdist", "distcov", n, 0) for n in (0, workers)]
    if gc_threshold:  # how pytest-cov's own records vary: with the collector, with xdist
        runs += [
            (f"gc threshold {gc_threshold}", "pytest-cov", 0, gc_threshold),
            (f"-n {workers}", "pytest-cov", workers, 0),
        ]
    exact = True
    for mode, tool, n, threshold in runs:
        got = context_run(py, src, suite, tool, n, gc_threshold=threshold)
        extra, lost = got - reference, reference - got
        contexts = len({c for _, c, _ in reference})
        print(
            f"{suite.name}, {tool}, {mode}: {contexts} contexts, {len(reference)} (file,"
            f" context, line or arc) records in pytest-cov's; {len(lost)} missing,"
            f" {len(extra)} extra"
        )
        for label, records in (("missing", lost), ("extra", extra)):
            for path, context, value in sorted(records, key=str)[:SHOWN_FILES]:
                print(f"  {label}: {Path(path).name} {context} {value}")
        if extra or lost:
            print(f"  all {len(extra | lost)} by file and line: {_by_line(extra | lost)}")
        sys.stdout.flush()
        if tool == "distcov":
            exact &= not (extra or lost)
    return exact


def _by_line(records: ByContext) -> str:
    """How many of ``records`` name each file and line (an arc by its first line), the 12
    most named first: ``rrule.py:898 x12, rrule.py:1408 x6``."""
    counts = Counter(
        f"{Path(path).name}:{abs(value[0] if isinstance(value, tuple) else value)}"
        for path, _, value in records
    )
    shown = ", ".join(f"{where} x{count}" for where, count in counts.most_common(12))
    return shown + (f", and {len(counts) - 12} more places" if len(counts) > 12 else "")


def _order(value: Value) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,)


def _shown(values: set[Value]) -> str:
    """``1, 5`` (lines) or ``3->4, 3->-1`` (branches), in order."""
    return ", ".join(
        f"{v[0]}->{v[1]}" if isinstance(v, tuple) else str(v) for v in sorted(values, key=_order)
    )


def differences(default: Measured, ctrace: Measured) -> dict[str, list[str]]:
    """file -> a line per key on which the default engine's report differs from the C
    tracer's (files in one report only included); files that agree are left out."""
    diffs: dict[str, list[str]] = {}
    for name in sorted(default.keys() | ctrace.keys()):
        if name not in ctrace or name not in default:
            diffs[name] = [f"only in the {'default' if name in default else 'ctrace'} report"]
            continue
        lines = []
        for key in EXACT_KEYS:
            ours, theirs = default[name][key], ctrace[name][key]
            if ours != theirs:
                lines.append(
                    f"{key}: default only [{_shown(ours - theirs)}],"
                    f" ctrace only [{_shown(theirs - ours)}]"
                )
        if lines:
            diffs[name] = lines
    return diffs


def exactness(
    py: Path, sources: dict[str, Path], suites: list[Suite], workers: int, *, serial: bool
) -> bool:
    """Compare the default engine's branch reports with the C tracer's; True if all agree."""
    empty = CACHE / "empty.coveragerc"
    empty.write_text("")
    code = "import sys; print(sys.version_info[:2] >= (3, 10))"  # (3.10/3.11: with probes)
    marks = subprocess.check_output([str(py), "-c", code], text=True).strip() == "True"
    exact = True
    for s in suites:
        for n in [workers, 0] if serial else [workers]:
            mode = f"-n {n}" if n else "no xdist"
            agree, marked = compare(py, sources[s.name], s, n, extra=[], where=f"{s.name}, {mode}")
            exact &= agree
            if marks and not marked:
                # The suite's own settings (attrs' [run] patch = subprocess) keep the markers
                # off: compare again with none of them.
                where = f"{s.name}, {mode}, with an empty coverage configuration"
                exact &= compare(
                    py, sources[s.name], s, n, extra=[f"--distcov-config={empty}"], where=where
                )[0]
    return exact


def compare(
    py: Path, src: Path, s: Suite, n: int, *, extra: list[str], where: str
) -> tuple[bool, bool]:
    """Run ``s`` with both engines and print how their reports differ: whether they agree,
    and whether the default engine measured with branch markers."""
    default, ctrace = (exact_run(py, src, s, e, n, extra=extra) for e in ENGINES)
    print(f"{where}:")
    for line in default.distcov_lines:
        print(f"  {line}")
    print(
        f"  wall time: default {default.seconds:.1f} s (exit {default.returncode}),"
        f" ctrace {ctrace.seconds:.1f} s (exit {ctrace.returncode})"
    )
    diffs = differences(default.files, ctrace.files)
    count = len(default.files.keys() | ctrace.files.keys())
    print(f"  files: {count}, differing: {len(diffs)}")
    for name, lines in list(diffs.items())[:SHOWN_FILES]:
        print(f"  {name}:")
        for line in lines:
            print(f"    {line}")
    if len(diffs) > SHOWN_FILES:
        print(f"  ... and {len(diffs) - SHOWN_FILES} more files")
    sys.stdout.flush()
    marked = any("with branch markers" in line for line in default.distcov_lines)
    return not diffs, marked


def check_exactness(args: argparse.Namespace, suites: list[Suite]) -> None:
    """--exactness or --exactness-contexts: exit 0 if every comparison agrees, else 1."""
    exact = True
    pythons = args.python or [f"{sys.version_info[0]}.{sys.version_info[1]}"]
    for spec in pythons:
        py, sources = prepare(find_python(spec), suites, args.coverage, newest=args.newest)
        print(f"bench: exactness on {versions(py, ['coverage', 'pytest-distcov'])}", flush=True)
        version = subprocess.check_output(
            [str(py), "-c", "import platform; print(platform.python_version())"], text=True
        ).strip()
        print(f"Python {version}", flush=True)
        if args.exactness_contexts:
            for s in suites:
                exact &= context_exactness(
                    py, sources[s.name], s, args.workers, gc_threshold=args.gc_threshold
                )
        else:
            exact &= exactness(py, sources, suites, args.workers, serial=not args.skip_serial)
    sys.exit(0 if exact else 1)


def add_coverage_option(parser: argparse.ArgumentParser) -> None:
    """``--coverage VERSION``, as every benchmark that builds its venv with :func:`prepare`
    takes it."""
    parser.add_argument(
        "--coverage", metavar="VERSION", help="this coverage.py release instead of the pinned one"
    )


#: The largest threshold ``gc.set_threshold`` takes (a C int).
GC_THRESHOLD_MAX = 2**31 - 1


def _threshold(text: str) -> int:
    """A garbage collector threshold for --gc-threshold: a whole number from 1 on."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= GC_THRESHOLD_MAX:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number from 1 to {GC_THRESHOLD_MAX}"
        )
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append", help="3.11, 3.13, ... or a path")
    parser.add_argument("--suite", action="append", choices=sorted(SUITES))
    parser.add_argument("--mode", action="append", choices=sorted(MODES), help="only these")
    parser.add_argument("--rounds", type=int, default=5)
    add_coverage_option(parser)
    parser.add_argument(
        "--newest",
        action="store_true",
        help="the newest release of the toolchain, of every suite and of its dependencies"
        " (a fresh venv), instead of the pinned ones",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--json", type=Path, help="write raw samples to this file")
    parser.add_argument(
        "--exactness",
        action="store_true",
        help="time nothing: compare the default engine's branch coverage (JSON reports) with"
        " coverage.py's C tracer's, file by file; exit 1 if any file differs",
    )
    parser.add_argument(
        "--exactness-contexts",
        action="store_true",
        help="time nothing: compare what --distcov-context=test --distcov-branch records for each"
        " test (lines and arcs) with pytest-cov's serial --cov-context=test --cov-branch on"
        " coverage.py's C tracer, without xdist and under -n WORKERS; exit 1 if any differs",
    )
    parser.add_argument(
        "--gc-threshold",
        type=_threshold,
        default=0,
        metavar="N",
        help="with --exactness-contexts: also compare pytest-cov's serial run with its own run"
        " under gc.set_threshold(N) and its own run under -n WORKERS: which records move with"
        " the garbage collector's timing, and which with the workers",
    )
    parser.add_argument(
        "--skip-serial",
        action="store_true",
        help="with --exactness: only under -n WORKERS, not also without xdist",
    )
    args = parser.parse_args()
    if args.gc_threshold and not args.exactness_contexts:
        parser.error("--gc-threshold is a setting of --exactness-contexts: give both")
    suites = [SUITES[n] for n in (args.suite or sorted(SUITES))]
    if args.exactness or args.exactness_contexts:
        check_exactness(args, suites)
    out: list[str] = []
    raw: dict[str, object] = {}
    for spec in args.python or [f"{sys.version_info[0]}.{sys.version_info[1]}"]:
        python = find_python(spec)
        py, sources = prepare(python, suites, args.coverage, newest=args.newest)
        version = subprocess.check_output(
            [str(py), "-c", "import platform; print(platform.python_version())"], text=True
        ).strip()
        cov_version = subprocess.check_output(
            [str(py), "-c", "import coverage; print(coverage.__version__)"], text=True
        ).strip()
        print(
            f"bench: Python {version}, coverage {cov_version}: {args.rounds} rounds",
            file=sys.stderr,
        )
        probes = tuple(int(p) for p in version.split(".")[:2]) < (3, 12)
        modes = [m for m in MODES if probes or m not in PROBE_MODES]
        if args.mode:
            modes = [m for m in modes if m in args.mode or m == "plain"]
        results = bench(py, sources, suites, rounds=args.rounds, workers=args.workers, modes=modes)
        names = ["pytest", "pytest-xdist", "pytest-cov", "coverage", "slipcover"]
        names += [s.sdist.partition("==")[0] for s in suites]
        raw[version] = {
            n: {
                m: vars(s) | {"codes": sorted(s.codes), "measured": sorted(s.measured)}
                for m, s in r.items()
            }
            for n, r in results.items()
        }
        out.append(f"{versions(py, names)}\n\n" + table(version, results, args.workers))
        out.append(table(version, results, args.workers, cpu=True))
        out.append(round_ratios(results))
        out.append(round_ratios(results, cpu=True))
        out.append(measured_notes(results))
    text = "\n\n".join(out)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()

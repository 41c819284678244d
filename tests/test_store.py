"""Many CI machines, one report: --distcov-store, `pytest-distcov combine`, S3 (moto server).

Each "machine" is a separate checkout at its own path running one shard of the suite; the
combiner is a third checkout. Its combined data must equal a serial `coverage run -m pytest` of
the whole suite in its own checkout, file by file and line by line (arcs with branch on).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from pytest_distcov.data.readers import MAX_LINE, MAX_NUMBITS, UntrustedPath
from pytest_distcov.errors import StoreError
from pytest_distcov.sinks.store import Shard, fetch_all, shard_mapper

from .conftest import _SCRUB, _ignore_generated
from .helpers import (
    EXAMPLE,
    RUN_TIMEOUT,
    assert_same_data,
    load,
    order_independent_arcs,
    serial_reference,
)

SHARDS = {"geometry": "tests/test_geometry.py", "palette": "tests/test_palette.py"}


def _checkout(base: Path, name: str) -> Path:
    path = base / name / "deep" / "checkout"  # a different depth on every machine
    shutil.copytree(EXAMPLE, path, ignore=_ignore_generated)
    pyproject = path / "pyproject.toml"
    # measure the tests too, so both shards have files the other lacks
    pyproject.write_text(pyproject.read_text().replace('distcov_source = ["shapes"]\n', ""))
    return path


def _pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_distcov", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def _coverage_run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``coverage run -p --source=shapes [ARGS...] -m pytest TESTS``: a parallel data file."""
    *options, tests = args
    coverage = [sys.executable, "-m", "coverage", "run", "-p", "--source=shapes", *options]
    pytest_args = ["-p", "no:distcov", "-p", "no:xdist", "-p", "no:randomly", tests]
    return subprocess.run(
        [*coverage, "-m", "pytest", *pytest_args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def _digests(store: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in store.iterdir()}


@pytest.mark.parametrize("branch", [False, True], ids=["lines", "branches"])
def test_shards_from_two_machines_combine_to_the_serial_result(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, branch: bool
) -> None:
    if branch:  # two shards (one with two workers) against one run
        order_independent_arcs(monkeypatch)
    store = tmp_path / "store"
    flags = ["--distcov-branch"] if branch else []
    for i, (_name, tests) in enumerate(SHARDS.items()):
        machine = _checkout(tmp_path, f"machine{i}")
        workers = ["-n", "2"] if i == 0 else []  # one shard with xdist, one without
        run = _pytest(machine, "--distcov", f"--distcov-store={store}", *workers, *flags, tests)
        assert run.returncode == 0, run.stdout + run.stderr
        assert f"distcov: stored shard {store}/.distcov." in run.stdout
    shards = sorted(store.iterdir())
    assert len(shards) == 2
    assert all(p.name.startswith(".distcov.") for p in shards)
    # paths under the rootdir are stored relative: the shards name no machine's checkout
    for shard in shards:
        assert all(not os.path.isabs(f) for f in load(shard).measured_files())
    before = _digests(store)

    combiner = _checkout(tmp_path, "combiner")
    result = _cli(combiner, "combine", str(store), "--expect", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"pytest-distcov: combined 2 shards into {combiner / '.coverage'}"
    ]
    assert _digests(store) == before, "combine never changes a store"

    pytester.chdir()
    os.chdir(combiner)
    reference = serial_reference(pytester, branch=branch)
    assert_same_data(combiner / ".coverage", reference, arcs=branch)
    report = _cli(combiner, "report", "--format", "term-missing", "--fail-under", "50")
    assert report.returncode == 0, report.stderr
    assert "No source" not in report.stdout + report.stderr
    assert "shapes/geometry.py" in report.stdout


def test_combine_equals_coverage_combine_with_contexts(tmp_path: Path) -> None:
    """The fast combine keeps contexts, tracers-free files and empty files as coverage does."""
    store = tmp_path / "store"
    for i, tests in enumerate(SHARDS.values()):
        machine = _checkout(tmp_path, f"m{i}")
        run = _pytest(
            machine,
            "--distcov",
            "--distcov-context=test",
            "--distcov-branch",
            f"--distcov-store={store}",
            "-n",
            "2",
            tests,
        )
        assert run.returncode == 0, run.stdout + run.stderr
    combiner = _checkout(tmp_path, "c")
    assert _cli(combiner, "combine", str(store), "--data-file", "ours.cov").returncode == 0
    # coverage's own combine of copies (it deletes what it combines unless --keep)
    copies = combiner / "copies"
    copies.mkdir()
    for shard in store.iterdir():
        shutil.copy(shard, copies / f".coverage.{shard.name[len('.distcov.') :]}")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "coverage",
            "combine",
            "--keep",
            f"--data-file={copies / '.coverage'}",
            str(copies),
        ],
        cwd=combiner,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ours, theirs = load(combiner / "ours.cov"), load(copies / ".coverage")
    # coverage keeps the shards' relative paths; ours are under the combiner's checkout
    assert sorted(ours.measured_files()) == sorted(
        str(combiner / f) for f in theirs.measured_files()
    )
    assert set(ours.measured_contexts()) == set(theirs.measured_contexts())
    assert len(ours.measured_contexts()) > 20
    for f in theirs.measured_files():
        mine = str(combiner / f)
        assert ours.arcs(mine)
        assert sorted(ours.arcs(mine) or []) == sorted(theirs.arcs(f) or [])
        assert ours.contexts_by_lineno(mine) == theirs.contexts_by_lineno(f), f


def test_combine_problems_are_named_and_the_good_shards_kept(tmp_path: Path) -> None:
    store = tmp_path / "store"
    machine = _checkout(tmp_path, "m")
    for tests in SHARDS.values():
        assert _pytest(machine, "--distcov", f"--distcov-store={store}", tests).returncode == 0
    (store / ".distcov.broken.1.aaaa").write_bytes(b"half a file" * 50)
    (store / ".distcov.other.2.bbbb").write_text("{}")
    (store / "README").write_text("not a shard: ignored")
    before = _digests(store)

    result = _cli(machine, "combine", str(store), "--expect", "4")
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert errors[0].startswith(
        f"pytest-distcov: error: cannot read coverage data file {store}/.distcov.broken.1.aaaa:"
    )
    assert errors[1].startswith(
        f"pytest-distcov: error: cannot read coverage data file {store}/.distcov.other.2.bbbb:"
    )
    assert errors[2].startswith("pytest-distcov: error: expected 4 shards, 2 arrived: ")
    assert errors[2].count(str(store)) == 2
    assert len(errors) == 3
    assert result.stdout == f"pytest-distcov: combined 2 shards into {machine / '.coverage'}\n"
    assert _digests(store) == before
    # the two good shards are all there: the same as one run of the whole suite
    whole = _pytest(machine, "--distcov", "--distcov-report=")
    assert whole.returncode == 0
    shutil.move(machine / ".coverage", machine / "whole.cov")
    assert _cli(machine, "combine", str(store / ".distcov.*")).returncode == 1  # glob, same files
    assert_same_data(machine / ".coverage", machine / "whole.cov")


def test_combine_bad_stores(tmp_path: Path) -> None:
    missing = _cli(tmp_path, "combine", str(tmp_path / "nope"))
    assert missing.returncode == 1
    assert missing.stderr == (
        f"pytest-distcov: error: store {tmp_path / 'nope'} does not exist (no such directory)\n"
    )
    (tmp_path / "empty").mkdir()
    empty = _cli(tmp_path, "combine", str(tmp_path / "empty"), "--expect", "1")
    assert empty.returncode == 1
    assert empty.stderr.splitlines() == [
        f"pytest-distcov: error: no shards in {tmp_path / 'empty'} (it is empty)",
        "pytest-distcov: error: expected 1 shards, 0 arrived",
    ]
    # what it holds instead: its files, and its directories (as a download step leaves them)
    other = tmp_path / "other"
    for name in ("README", "coverage.xml", ".coverage", "artifact-1/.coverage.m.pid1.Xabcdefx"):
        (other / name).parent.mkdir(parents=True, exist_ok=True)
        (other / name).write_text("")
    holds = _cli(tmp_path, "combine", str(other))
    assert holds.returncode == 1
    assert holds.stderr == (
        f"pytest-distcov: error: no shards in {other} (it holds 3 files and 1 directory, none"
        " named .distcov.* or .coverage.*: .coverage, README, coverage.xml, artifact-1/; to read"
        f" the shards below it, give '{other}/*/' as the store)\n"
    )
    assert _cli(tmp_path, "combine", f"{other}/*/").returncode == 1  # read, not a valid file
    assert not (tmp_path / ".coverage").exists()
    assert _cli(tmp_path, "combine", "x", "--expect", "0").returncode == 2  # argparse usage
    small = _cli(tmp_path, "combine", "x", "--max-shard-size", "0")
    assert small.returncode == 2
    assert "expected a size in bytes, 1 or more, such as 500M or 2G: '0'" in small.stderr
    empty = _cli(tmp_path, "combine", "x", "--max-shard-size=")
    assert empty.returncode == 2
    assert "expected a size in bytes, 1 or more, such as 500M or 2G: ''" in empty.stderr
    assert "Traceback" not in empty.stderr
    globbed = _cli(tmp_path, "combine", str(tmp_path / "nothing*"))
    assert globbed.stderr == f"pytest-distcov: error: no store matches '{tmp_path}/nothing*'\n"


def test_bad_store_option(pytester: pytest.Pytester, shapes: Path) -> None:
    result = pytester.runpytest_subprocess("--distcov", "--distcov-store=gs://bucket/x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*invalid value 'gs://bucket/x' for --distcov-store: a store is a directory or s3://*"]
    )
    # a store that cannot be written: the run says so and keeps its data file
    blocker = shapes / "file"
    blocker.write_text("")
    result = pytester.runpytest_subprocess("--distcov", f"--distcov-store={blocker}/sub")
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    result.stdout.fnmatch_lines(
        [f"*cannot write to the store {blocker}/sub: *; this run's data is still in *.coverage*"]
    )
    assert (shapes / ".coverage").exists()


def test_concurrent_writers_never_clash(tmp_path: Path) -> None:
    store = tmp_path / "store"
    machines = [_checkout(tmp_path, f"m{i}") for i in range(4)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pytest", "--distcov", f"--distcov-store={store}", "-q"],
            cwd=m,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for m in machines
    ]
    assert [p.wait(timeout=RUN_TIMEOUT) for p in procs] == [0, 0, 0, 0]
    names = sorted(p.name for p in store.iterdir())
    assert len(names) == 4
    assert all(n.startswith(".distcov.") for n in names)  # no partial file left behind


# -- S3, against moto's server on 127.0.0.1 --------------------------------------------------------


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    pytest.importorskip("boto3")
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if server is None:
        pytest.skip("moto_server is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for name in list(os.environ):
        if name.startswith("AWS_") or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    try:
        import boto3

        deadline = time.monotonic() + 30
        while True:
            try:
                boto3.client("s3").create_bucket(Bucket="ci-coverage")
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        yield "s3://ci-coverage"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_s3_store_and_combine(pytester: pytest.Pytester, tmp_path: Path, s3: str) -> None:
    prefix = f"{s3}/9fceb02d"
    for i, tests in enumerate(SHARDS.values()):
        machine = _checkout(tmp_path, f"machine{i}")
        run = _pytest(machine, "--distcov", f"--distcov-store={prefix}", "-n", "2", tests)
        assert run.returncode == 0, run.stdout + run.stderr
        assert f"distcov: stored shard {prefix}/.distcov." in run.stdout
    # another commit's shard under the same bucket is not picked up
    other = _checkout(tmp_path, "other")
    assert _pytest(other, "--distcov", f"--distcov-store={s3}/other-commit").returncode == 0

    combiner = _checkout(tmp_path, "combiner")
    result = _cli(combiner, "combine", prefix, "--expect", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pytest-distcov: combined 2 shards into")
    pytester.chdir()
    os.chdir(combiner)
    assert_same_data(combiner / ".coverage", serial_reference(pytester))

    missing = _cli(combiner, "combine", "s3://no-such-bucket/x")
    assert missing.returncode == 1
    assert missing.stderr == (
        "pytest-distcov: error: cannot list the store s3://no-such-bucket/x: bucket"
        " no-such-bucket does not exist\n"
    )
    run = _pytest(combiner, "--distcov", "--distcov-store=s3://no-such-bucket/x")
    assert run.returncode == pytest.ExitCode.INTERNAL_ERROR
    assert "bucket no-such-bucket does not exist; this run's data is still in" in run.stdout


# -- what anyone who can write to a store can put there (issue 21) ---------------------------------


class RealShards(NamedTuple):
    """Two good shards of real runs (their union is the whole suite's data, in ``whole``), and
    a victim: a third real shard whose files were renamed ``victim/*.py``, so that anything
    of it that got into a union would show."""

    machine: Path
    good: list[Path]
    victim: Path
    whole: Path


@pytest.fixture(scope="module")
def real_shards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealShards]:
    base = tmp_path_factory.mktemp("real-shards")
    with pytest.MonkeyPatch.context() as mp:
        for name in _SCRUB:  # the autouse fixture is per test; this runs once a module
            mp.delenv(name, raising=False)
        mp.setenv("DISTCOV_ENGINE", "coverage")
        machine = _checkout(base, "m")
        store = base / "store"
        for tests in SHARDS.values():
            run = _pytest(machine, "--distcov", f"--distcov-store={store}", tests)
            assert run.returncode == 0, run.stdout + run.stderr
        good = sorted(store.iterdir())
        victim = base / ".distcov.victim.1.feed"
        shutil.copy(good[0], victim)
        _edit(victim, "UPDATE file SET path = replace(path, 'shapes/', 'victim/')")
        whole = _pytest(machine, "--distcov", "--distcov-report=")
        assert whole.returncode == 0, whole.stdout + whole.stderr
        shutil.move(machine / ".coverage", base / "whole.cov")
        yield RealShards(machine, good, victim, base / "whole.cov")


def _edit(shard: Path, *statements: str) -> None:
    con = sqlite3.connect(shard)
    try:
        for statement in statements:
            con.execute(statement)
        con.commit()
    finally:
        con.close()


def _store_with_victim(real_shards: RealShards, tmp_path: Path) -> tuple[Path, Path]:
    """A store of the good shards and a copy of the victim (a valid shard with other paths);
    the copy's path."""
    store = tmp_path / "store"
    store.mkdir()
    for shard in real_shards.good:
        shutil.copy(shard, store / shard.name)
    bad = store / real_shards.victim.name
    shutil.copy(real_shards.victim, bad)
    return store, bad


def _assert_refused_alone(
    result: subprocess.CompletedProcess[str], error: str, out: Path, combined: int, whole: Path
) -> None:
    """One shard refused: its one error line, exit status 1, the others combined exactly."""
    assert result.stderr.splitlines() == [f"pytest-distcov: error: {error}"]
    assert result.returncode == 1
    assert result.stdout == f"pytest-distcov: combined {combined} shards into {out}\n"
    assert_same_data(out, whole)


_FIRST_ROW = "(SELECT min(rowid) FROM line_bits)"
_PAST_MAX_LINE = f"zeroblob({MAX_NUMBITS}) || x'01'"  # one bit set: line MAX_LINE + 1
_FOREVER = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r)"
#: Each hostile edit of a real shard, and what the one error line says after the shard's name.
HOSTILE = {
    "traversal path": (
        ["UPDATE file SET path = '../../../../etc/passwd.py' WHERE id = 1"],
        "cannot combine coverage data file {shard}: it names ../../../../etc/passwd.py, which"
        " leads out of the root {root}",
    ),
    "absolute path outside": (
        ["UPDATE file SET path = '/etc/hostname.py' WHERE id = 1"],
        "cannot combine coverage data file {shard}: it names /etc/hostname.py, outside the root"
        " {root} (another machine's paths are combined when a [paths] entry of the coverage"
        " configuration maps them into it)",
    ),
    "secret in the checkout": (
        ["UPDATE file SET path = '.env' WHERE id = 1"],
        "cannot combine coverage data file {shard}: it names .env, a file that looks like a"
        " secret (a key, a credentials or environment file, version control's own files):"
        " never combined",
    ),
    "missing file id": (
        [f"UPDATE line_bits SET file_id = 999 WHERE rowid = {_FIRST_ROW}"],
        "cannot read coverage data file {shard}: its line data names file id 999, which its file"
        " table lacks",
    ),
    "integer numbits": (
        [f"UPDATE line_bits SET numbits = 5 WHERE rowid = {_FIRST_ROW}"],
        "cannot read coverage data file {shard}: its line data holds an integer where coverage.py"
        " writes a blob of line numbers",
    ),
    "recursive view": (
        [
            "DROP TABLE line_bits",
            f"CREATE VIEW line_bits AS {_FOREVER}"
            " SELECT 1 AS file_id, 1 AS context_id, x'06' AS numbits FROM r",
        ],
        "cannot read coverage data file {shard}: its line_bits is a view, not a stored table",
    ),
    "view that never yields": (
        [
            "DROP TABLE line_bits",
            f"CREATE VIEW line_bits AS {_FOREVER}"
            " SELECT 1 AS file_id, 1 AS context_id, x'06' AS numbits FROM r WHERE n < 0",
        ],
        "cannot read coverage data file {shard}: its line_bits is a view, not a stored table",
    ),
    "computed column": (
        [
            "ALTER TABLE line_bits RENAME TO stored",
            "CREATE TABLE line_bits (file_id integer, context_id integer,"
            " numbits blob AS (zeroblob(4000000)))",
            "INSERT INTO line_bits (file_id, context_id) SELECT file_id, context_id FROM stored",
        ],
        "cannot read coverage data file {shard}: its line_bits has a column that is computed or"
        " has a default, not stored",
    ),
    "huge line number": (
        [f"UPDATE line_bits SET numbits = CAST({_PAST_MAX_LINE} AS BLOB) WHERE rowid = 1"],
        f"cannot read coverage data file {{shard}}: its line data holds a blob of"
        f" {MAX_NUMBITS + 1:,} bytes: line numbers above {MAX_LINE:,}, which no source file has",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_shard_is_named_and_the_others_combined(
    real_shards: RealShards, tmp_path: Path, case: str
) -> None:
    """One bad shard is one error line, exit status 1, no traceback; the good shards' data is
    combined exactly, and nothing of the bad one. Every case ends within its reading budget."""
    statements, message = HOSTILE[case]
    store, bad = _store_with_victim(real_shards, tmp_path)
    _edit(bad, *statements)
    out = tmp_path / "combined.cov"

    started = time.monotonic()
    result = _cli(real_shards.machine, "combine", str(store), "--data-file", str(out))
    took = time.monotonic() - started

    error = message.format(shard=bad, root=real_shards.machine)
    _assert_refused_alone(result, error, out, 2, real_shards.whole)
    assert not any("victim" in f for f in load(out).measured_files())
    assert took < 30, f"combine took {took:.1f} s"  # seconds in fact: the budget is small


def test_paths_are_refused_when_they_leave_the_root(tmp_path: Path) -> None:
    root = tmp_path / "project"
    (root / "pkg").mkdir(parents=True)
    (tmp_path / "link").symlink_to(root)
    mapper = shard_mapper(tmp_path / "link")
    real = str(root)
    assert mapper("pkg/a.py") == f"{real}/pkg/a.py"
    assert mapper("pkg/./b/../a.py") == f"{real}/pkg/a.py"
    assert mapper(f"{root}/pkg/a.py") == f"{real}/pkg/a.py"  # absolute, under the root
    assert mapper(f"{tmp_path}/link/pkg/a.py") == f"{tmp_path}/link/pkg/a.py"  # as given
    for bad in ("../x.py", "pkg/../../x.py", ".", "", f"{tmp_path}/other.py", "C:\\proj\\a.py"):
        with pytest.raises(UntrustedPath):
            mapper(bad)
    with pytest.raises(UntrustedPath, match=r"it names '/etc/\\x1b\[31mred.py', outside"):
        mapper("/etc/\x1b[31mred.py")  # shown quoted, never as a terminal escape
    # [paths] (here a stand-in) maps another machine's absolute paths into the root
    remapped = shard_mapper(root, lambda p: p.replace("/ci/work/", f"{root}/"))
    assert remapped("/ci/work/pkg/a.py") == f"{real}/pkg/a.py"
    with pytest.raises(UntrustedPath, match=r"it names /etc/x.py, outside the root"):
        remapped("/etc/x.py")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX links and FIFOs")
def test_paths_under_the_root_are_refused_when_they_name_what_no_shard_may(
    tmp_path: Path,
) -> None:
    """Under the root too, a shard may not name a secret-looking file or version control's
    own (whether it is there or not, in any case), a link to one inside the root, a link out
    of the root (by itself or through a linked directory), or anything here but a regular file
    (a FIFO would hang the report)."""
    root = tmp_path / "project"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("A = 1\n")
    (tmp_path / "secret.py").write_text("KEY = 1\n")
    (root / "pkg" / "leak.py").symlink_to(tmp_path / "secret.py")
    (root / "pkg" / "inner.py").symlink_to(root / "pkg" / "a.py")  # inside: fine
    (root / "out").symlink_to(tmp_path)
    os.mkfifo(root / "pkg" / "pipe.py")
    (root / ".env").write_text("TOKEN=x\n")
    (root / "pkg" / "settings.py").symlink_to(root / ".env")  # inside, but to a secret
    mapper = shard_mapper(root)
    real = os.path.realpath(root)
    assert mapper("pkg/a.py") == f"{real}/pkg/a.py"
    assert mapper("pkg/inner.py") == f"{real}/pkg/inner.py"
    assert mapper("pkg/gone.py") == f"{real}/pkg/gone.py"  # nothing here to read
    for bad, why in [
        (".env", "looks like a secret"),
        ("deploy/.env.production", "looks like a secret"),
        ("certs/server.key", "looks like a secret"),
        (".ssh/id_ed25519", "looks like a secret"),
        (".git/config", "looks like a secret"),
        (f"{root}/.git/hooks/x.py", "looks like a secret"),
        (".hg/hgrc", "looks like a secret"),
        (".ENV", "looks like a secret"),
        ("Certs/Server.PEM", "looks like a secret"),
        (".npmrc", "looks like a secret"),
        ("ops/.kube/config", "looks like a secret"),
        ("ops/client.p12", "looks like a secret"),
        ("pkg/settings.py", "looks like a secret"),
        ("pkg/leak.py", "a link that leads out of the root"),
        ("out/secret.py", "a link that leads out of the root"),
        ("pkg/pipe.py", "which is not a regular file here"),
    ]:
        with pytest.raises(UntrustedPath, match=re.escape(why)):
            mapper(bad)


def test_coverage_parallel_files_from_two_machines_combine_as_coverage_combine_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`coverage run -p` on two machines (two checkouts at other paths), the files downloaded
    into one directory: refused without [paths] (their paths are outside this checkout), and
    with [paths] combined to what `coverage combine` gives."""
    order_independent_arcs(monkeypatch)
    store = tmp_path / "downloaded"
    store.mkdir()
    for i, tests in enumerate(SHARDS.values()):
        machine = _checkout(tmp_path, f"machine{i}")
        run = _coverage_run(machine, "--branch", tests)
        assert run.returncode == 0, run.stdout + run.stderr
        for data in machine.glob(".coverage.*"):
            shutil.copy(data, store / data.name)
    names = sorted(p.name for p in store.iterdir())
    assert len(names) == 2
    assert all(n.startswith(".coverage.") for n in names)
    before = _digests(store)
    combiner = _checkout(tmp_path, "combiner")

    refused = _cli(combiner, "combine", str(store))
    assert refused.returncode == 1
    assert [line.split(": it names ")[0] for line in refused.stderr.splitlines()] == [
        f"pytest-distcov: error: cannot combine coverage data file {store / n}" for n in names
    ]
    assert all(
        "/deep/checkout/shapes/" in line and f"outside the root {combiner} (" in line
        for line in refused.stderr.splitlines()
    )
    assert not (combiner / ".coverage").exists()

    with (combiner / "pyproject.toml").open("a") as config:
        config.write('\n[tool.coverage.paths]\nsource = ["shapes/", "*/checkout/shapes/"]\n')
    ours = _cli(combiner, "combine", str(store), "--data-file", "ours.cov")
    assert (ours.returncode, ours.stderr) == (0, "")
    assert ours.stdout == f"pytest-distcov: combined 2 shards into {combiner / 'ours.cov'}\n"
    copies = tmp_path / "copies"
    shutil.copytree(store, copies)
    theirs = subprocess.run(
        [
            sys.executable,
            "-m",
            "coverage",
            "combine",
            "--keep",
            f"--data-file={copies}/.coverage",
            str(copies),
        ],
        cwd=combiner,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    assert sorted(load(copies / ".coverage").measured_files()) == [
        str(combiner / "shapes" / f) for f in ("__init__.py", "geometry.py", "palette.py")
    ]
    assert_same_data(combiner / "ours.cov", copies / ".coverage", arcs=True)
    assert_same_data(combiner / "ours.cov", copies / ".coverage", arcs=False)
    assert _digests(store) == before  # read, never changed nor removed


def test_s3_reads_coverage_files_and_refuses_an_oversized_object(
    real_shards: RealShards, tmp_path: Path, s3: str
) -> None:
    import boto3

    client = boto3.client("s3")
    bucket, prefix = "ci-coverage", "run-7"
    for shard in real_shards.good:
        client.upload_file(str(shard), bucket, f"{prefix}/{shard.name}")
    # coverage.py's own parallel file, from the combining checkout: its paths are under it
    run = _coverage_run(real_shards.machine, SHARDS["palette"])
    assert run.returncode == 0, run.stdout + run.stderr
    (parallel,) = real_shards.machine.glob(".coverage.*")
    client.upload_file(str(parallel), bucket, f"{prefix}/{parallel.name}")
    parallel.unlink()
    huge = ".distcov.huge.1.beef"
    client.put_object(Bucket=bucket, Key=f"{prefix}/{huge}", Body=b"\0" * (3 << 20))
    # A key may hold what no file name may (more than 255 bytes in its last part, control
    # characters): the download gets a file name of its own, and the shard is combined.
    odd = ".distcov.odd\tname." + "x" * 300
    client.upload_file(str(real_shards.good[0]), bucket, f"{prefix}/{odd}")
    out = tmp_path / "combined.cov"

    result = _cli(
        real_shards.machine,
        "combine",
        f"{s3}/{prefix}",
        "--data-file",
        str(out),
        "--max-shard-size",
        "2M",
    )
    error = (
        f"shard {s3}/{prefix}/{huge} is 3,145,728 bytes, more than --max-shard-size allows"
        " (2,097,152); it was not read"
    )
    _assert_refused_alone(result, error, out, 4, real_shards.whole)
    # an empty prefix says what the bucket holds there
    empty = _cli(real_shards.machine, "combine", f"{s3}/nothing-here")
    assert empty.stderr == f"pytest-distcov: error: no shards in {s3}/nothing-here (it is empty)\n"
    above = _cli(real_shards.machine, "combine", s3)
    assert above.stderr == (
        f"pytest-distcov: error: no shards in {s3} (it holds 1 prefix, none named .distcov.* or"
        f" .coverage.*: {prefix}/; to read the shards below it, give each prefix below {s3} as"
        " the store)\n"
    )


#: ``pytest-distcov combine STORE...`` in which one shard (argv[1]) is swapped, after the store
#: has listed and checked it, for a FIFO or a symlink to another data file (argv[2]).
_SWAP_AFTER_CHECK = """
import os, sys
from pytest_distcov.cli import main
from pytest_distcov.sinks.store import DirStore

victim, swap = sys.argv[1:3]
fetch = DirStore.fetch

def swapped(self, shard, scratch, max_bytes):
    got = fetch(self, shard, scratch, max_bytes)  # listed, a regular file of a size allowed
    if shard.ref == victim:
        os.unlink(victim)
        if swap == "fifo":
            os.mkfifo(victim)
        else:
            os.symlink(swap, victim)
    return got

DirStore.fetch = swapped
sys.exit(main(["combine", *sys.argv[3:]]))
"""


@pytest.mark.parametrize("swap", ["fifo", "symlink"])
def test_a_shard_swapped_after_its_check_is_its_own_error(
    real_shards: RealShards, tmp_path: Path, swap: str
) -> None:
    """Someone who can write to the store swaps a shard between the store's check and the read:
    for a FIFO (an open by name would wait for a writer forever: the run is bounded here) or a
    symlink to a data file elsewhere. The shard is that one error line, exit status 1; the good
    shards are combined, and nothing of the file the symlink leads to."""
    store, bad = _store_with_victim(real_shards, tmp_path)
    out = tmp_path / "combined.cov"
    target = "fifo" if swap == "fifo" else str(real_shards.victim)

    swapping = [sys.executable, "-c", _SWAP_AFTER_CHECK, str(bad), target]
    result = subprocess.run(
        [*swapping, str(store), "--data-file", str(out)],
        cwd=real_shards.machine,
        capture_output=True,
        text=True,
        timeout=60,  # without the fix, the FIFO blocks the reader until killed here
        check=False,
    )

    what = "a FIFO (named pipe)" if swap == "fifo" else "a symbolic link"
    error = (
        f"cannot read coverage data file {bad}: it is {what}; a store's shards are read as"
        " regular files only"
    )
    _assert_refused_alone(result, error, out, 2, real_shards.whole)
    assert not any("victim" in f for f in load(out).measured_files())


def test_whatever_one_download_raises_is_that_shards_error(tmp_path: Path) -> None:
    """A store's download that fails in a way nobody foresaw (boto3 gives a ValueError for
    some keys) costs that shard alone; the others are fetched."""

    class Odd:  # a store whose download of one key fails so
        def fetch(self, shard: Shard, scratch: Path, max_bytes: int = 0) -> Path:
            if shard.ref == "bad":
                raise ValueError("embedded null byte")
            local = scratch / "copy"
            local.write_bytes(shard.ref.encode())
            return local

    shards = [Shard("s3://b/good", "good"), Shard("s3://b/bad", "bad"), Shard("s3://b/ok", "ok")]
    got = dict(fetch_all(Odd(), shards, tmp_path))  # type: ignore[arg-type]
    assert [type(v).__name__ for v in got.values()] == ["PosixPath", "StoreError", "PosixPath"]
    error = got[shards[1]]
    assert isinstance(error, StoreError)
    assert str(error) == "cannot download s3://b/bad: ValueError: embedded null byte"
    assert [Path(v).read_text() for v in got.values() if isinstance(v, Path)] == ["good", "ok"]

"""Many CI machines, one report: --distcov-store, `pytest-distcov combine`, S3 (moto server).

Each "machine" is a separate checkout at its own path running one shard of the suite; the
combiner is a third checkout. Its combined data must equal a serial `coverage run -m pytest` of
the whole suite in its own checkout, file by file and line by line (arcs with branch on).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import _ignore_generated
from .helpers import EXAMPLE, RUN_TIMEOUT, assert_same_data, load, serial_reference

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


def _digests(store: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in store.iterdir()}


@pytest.mark.parametrize("branch", [False, True], ids=["lines", "branches"])
def test_shards_from_two_machines_combine_to_the_serial_result(
    pytester: pytest.Pytester, tmp_path: Path, branch: bool
) -> None:
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
        f"pytest-distcov: error: no shards in {tmp_path / 'empty'}",
        "pytest-distcov: error: expected 1 shards, 0 arrived",
    ]
    assert not (tmp_path / ".coverage").exists()
    assert _cli(tmp_path, "combine", "x", "--expect", "0").returncode == 2  # argparse usage
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

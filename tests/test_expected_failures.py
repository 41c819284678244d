"""Expected failures are one line (or two) naming the file or variable, never a traceback.

The command line's exit status follows coverage.py (1 for an error); inside pytest a setting
that cannot work is a usage error before any test runs, and a failure at the end is a line in
the summary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import RUN_TIMEOUT, run_pytest

EXE = [sys.executable, "-m", "pytest_distcov"]


def _unprivileged() -> list[str]:
    """A prefix under which file permissions hold for the command, also for root: root keeps
    its uid (so the interpreter under /root stays reachable) but loses the capabilities that
    override permissions, so a mode-000 file is unreadable even to its owner."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        if os.environ.get("CI"):
            pytest.fail("setpriv (util-linux) is needed to test permissions as root")
        pytest.skip("setpriv (util-linux) is needed to test permissions as root")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


def _run(
    cwd: Path, *args: str, prefix: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(cwd)}
    return subprocess.run(
        [*(prefix or []), *EXE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
        env=env,
    )


def _one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = result.stderr.splitlines()
    assert errors, "no error shown"
    assert all(line.startswith("pytest-distcov: error: ") for line in errors), errors
    for fragment in fragments:
        assert any(fragment in line for line in errors), (fragment, errors)


@pytest.fixture(scope="module")
def open_dir() -> Iterator[Path]:
    """A directory of its own (made and removed here, outside pytester's), holding a data file
    of the example project."""
    from .helpers import EXAMPLE

    where = Path(tempfile.mkdtemp(prefix="distcov-errors-"))
    project = where / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(".coverage*", "__pycache__"))
    made = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", "--distcov", "--distcov-report="],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
        env={**os.environ, "DISTCOV_ENGINE": "coverage"},
    )
    assert made.returncode == 0, made.stdout + made.stderr
    try:
        yield where
    finally:
        shutil.rmtree(where)


def test_unusable_data_files_are_one_line(open_dir: Path) -> None:
    project = open_dir / "project"
    good = project / ".coverage"
    a_dir = open_dir / "a-dir"
    a_dir.mkdir(exist_ok=True)
    fifo = open_dir / "a-fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    for command in (["report"], ["who-covers", "shapes/geometry.py:1"], ["coveralls"]):
        extra = ["--output", str(open_dir / "payload.json")] if command == ["coveralls"] else []
        _one_line_error(
            _run(project, *command, *extra, "--data-file", str(a_dir)),
            f"coverage data file {a_dir} is a directory",
        )
        _one_line_error(
            _run(project, *command, *extra, "--data-file", str(fifo)),
            f"coverage data file {fifo} is not a regular file",
        )
    _one_line_error(_run(project, "combine", str(fifo)), f"store {fifo} is neither a directory")
    _one_line_error(
        _run(project, "combine", str(good), "--data-file", str(a_dir)),
        f"cannot write the combined data to {a_dir}: Is a directory; nothing was written there",
    )
    _one_line_error(
        _run(project, "coveralls", "--output", str(a_dir)),
        f"cannot write the Coveralls payload to {a_dir}: Is a directory (nothing was sent)",
    )


def test_files_without_permission_are_one_line(open_dir: Path) -> None:
    prefix = _unprivileged()
    project = open_dir / "project"
    store = open_dir / "store"
    store.mkdir(exist_ok=True)
    shutil.copyfile(project / ".coverage", store / ".distcov.a.1.aaaa")
    secret = store / ".distcov.b.2.bbbb"
    shutil.copyfile(project / ".coverage", secret)
    secret.chmod(0o000)
    store.chmod(0o555)  # listable, not writable
    out = open_dir / "writable"
    out.mkdir(exist_ok=True)
    closed = open_dir / "closed"
    closed.mkdir(exist_ok=True)
    shutil.copyfile(project / ".coverage", closed / ".coverage")
    closed.chmod(0o000)
    try:
        _one_line_error(
            _run(project, "report", "--data-file", str(secret), prefix=prefix),
            f"cannot read coverage data file {secret}: Permission denied",
        )
        _one_line_error(  # (not "does not exist": it does, behind a directory it cannot enter)
            _run(project, "report", "--data-file", str(closed / ".coverage"), prefix=prefix),
            f"cannot read coverage data file {closed / '.coverage'}: Permission denied",
        )
        combined = _run(
            project, "combine", str(store), "--data-file", str(out / "c"), prefix=prefix
        )
        _one_line_error(combined, f"cannot read coverage data file {secret}: Permission denied")
        assert combined.stdout == f"pytest-distcov: combined 1 shards into {out / 'c'}\n"
        _one_line_error(
            _run(project, "combine", str(store), "--data-file", str(store / "c"), prefix=prefix),
            f"cannot write the combined data to {store / 'c'}: no permission to write in {store}",
        )
    finally:
        closed.chmod(0o755)
        store.chmod(0o755)


def test_s3_settings_boto3_refuses_are_one_line_or_a_usage_error(
    pytester: pytest.Pytester, shapes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("boto3")
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(pytester.path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(pytester.path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for value in ("not a url", "http://[::1", "http://127.0.0.1:99999"):
        monkeypatch.setenv("AWS_ENDPOINT_URL", value)
        message = (
            f"cannot use the store s3://bucket/x: AWS_ENDPOINT_URL={value!r} is not a URL such"
            " as https://s3.example.com or http://127.0.0.1:9000; correct it, or unset it"
        )
        _one_line_error(_run(pytester.path, "combine", "s3://bucket/x"), message)
        # inside pytest: refused before any test runs
        result = run_pytest(pytester, "--distcov", "--distcov-store=s3://bucket/x")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert result.stderr.lines == [
            f"ERROR: distcov: cannot use the store s3://bucket/x (--distcov-store):"
            f" AWS_ENDPOINT_URL={value!r} is not a URL such as https://s3.example.com or"
            " http://127.0.0.1:9000; correct it, or unset it to use AWS itself",
            "",
        ]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")  # boto3 itself refuses it
    _one_line_error(
        _run(pytester.path, "combine", "s3://bucket/x"),
        "cannot use the store s3://bucket/x: The config profile (no-such-profile) could not be"
        " found (check the AWS_* environment variables and the AWS config file)",
    )
    result = run_pytest(pytester, "--distcov", "--distcov-store=s3://bucket/x")
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR  # tests passed, the shard not stored
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(
        [
            "distcov: cannot use the store s3://bucket/x: The config profile (no-such-profile)"
            " could not be found (*); this run's data is still in *.coverage*"
        ]
    )


def test_coveralls_job_with_a_source_not_on_disk_is_one_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """coverage.py measures and reports a module imported from a zip file, but Coveralls needs
    its bytes from a file on disk: building the job fails, named, with nothing sent."""
    with zipfile.ZipFile(pytester.path / "lib.zip", "w") as zf:
        zf.writestr("zipped.py", "def z(x):\n    return x + 1\n")
    pytester.makepyfile(
        test_z="""
        import os
        import sys

        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib.zip"))
        import zipped


        def test_z():
            assert zipped.z(1) == 2
        """
    )
    pytester.makeini("[pytest]\naddopts = -p no:randomly\n")
    monkeypatch.setenv("COVERALLS_REPO_TOKEN", "t0ken")
    monkeypatch.setenv("COVERALLS_HOST", "http://127.0.0.1:9")  # never reached
    monkeypatch.setenv("DISTCOV_COVERALLS_ALLOW_HTTP", "1")  # the host is checked first
    result = run_pytest(pytester, "--distcov", "--distcov-coveralls")
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == 0, out  # an upload that fails leaves the run's result as it is
    assert "Traceback" not in out
    assert "INTERNALERROR" not in out
    missing = pytester.path / "lib.zip" / "zipped.py"
    result.stdout.fnmatch_lines(
        [
            "distcov: Coveralls upload failed (the run's result stands): no upload: cannot read"
            f" {missing} for its line count and digest (Not a directory)*"
        ]
    )
    _one_line_error(
        _run(pytester.path, "coveralls", "--output", "payload.json"),
        f"no upload: cannot read {missing} for its line count and digest (Not a directory)",
    )
    assert not (pytester.path / "payload.json").exists()


def test_broken_configuration_and_coveralls_host_are_one_line(
    open_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = open_dir / "project"
    bad = open_dir / "bad.rc"
    bad.write_text("[run\nbranch = true\n")
    result = _run(project, "report", "--rcfile", str(bad))
    _one_line_error(result, f"cannot use {bad}: Couldn't read config file {bad}: File contains")
    assert len(result.stderr.splitlines()) == 1, result.stderr  # configparser's text spans lines
    monkeypatch.setenv("COVERALLS_REPO_TOKEN", "t0ken")
    for host in ("http://[::1", "http://127.0.0.1:99999", "ftp://example.org"):
        monkeypatch.setenv("COVERALLS_HOST", host)
        sent = _run(project, "coveralls")
        # refused at once: a URL that cannot be requested is not retried (with backoff)
        _one_line_error(sent, "COVERALLS_HOST must be an http(s) URL such as")
        assert "retrying" not in sent.stderr

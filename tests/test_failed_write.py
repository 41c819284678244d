"""A failed write loses nothing: a full file system (a real, small tmpfs), a damaged appended
file, a full store. The combined data goes to a fallback file that one line names, exactly what
a successful run writes; the workers' directories stay until the data is written."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from coverage import CoverageData
from coverage.exceptions import CoverageException

from pytest_distcov.data.merge import write_data_file
from pytest_distcov.data.readers import update_from_file
from pytest_distcov.errors import DataFileError

from .helpers import (
    assert_same_data,
    diff_data,
    measured,
    order_independent_arcs,
    run_pytest,
    tmpfs,
)
from .sshlab import SshLab, host_python


def _fill(mount: Path) -> None:
    """Take every free byte of the file system at ``mount``."""
    fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # ENOSPC: full
        pass
    finally:
        os.close(fd)
    assert os.statvfs(mount).f_bavail == 0, "the tmpfs still has room"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A directory on a tmpfs of 256 KiB, a real file system that can be filled."""
    with tmpfs(tmp_path / "small", "256k") as mount:
        yield mount


@pytest.fixture
def full_fs(small_fs: Path) -> Path:
    """A directory on a tmpfs with no byte free (a filler file took them all)."""
    _fill(small_fs)
    return small_fs


def _data_file_in(shapes: Path, data_file: Path, *, branch: bool) -> None:
    (shapes / ".coveragerc").write_text(
        f"[run]\ndata_file = {data_file}\nbranch = {'true' if branch else 'false'}\n"
    )


def _rescued(line: str) -> Path:
    """The fallback file named in the error line."""
    after = line.split("combined data was saved to ", 1)[1]
    return Path(after.split(":", 1)[0].split(" (", 1)[0])


def _error_line(out: str) -> str:
    lines = [ln for ln in out.splitlines() if "combined data" in ln and ln.startswith("distcov:")]
    assert len(lines) == 1, out
    return lines[0]


def test_full_disk_saves_exactly_the_combined_data_to_a_fallback_file(
    pytester: pytest.Pytester,
    shapes: Path,
    private_tmp: Path,
    full_fs: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """-n 2, branches, the data file on a full tmpfs: the run fails with one line naming a
    fallback file that holds what a successful run writes, file by file, arc by arc; the
    workers' directories are kept (and removed after a successful run). The two runs may
    split the tests differently between their workers: ctrace, whose arcs do not depend on
    that (on 3.14+ sysmon's do)."""
    order_independent_arcs(monkeypatch)
    _data_file_in(shapes, pytester.path / "ok" / ".coverage", branch=True)
    ok = run_pytest(pytester, "--distcov", "-n", "2")
    assert ok.ret == 0, ok.stdout.str()
    assert not list(private_tmp.glob("distcov-*")), "a successful run leaves no directory"

    target = full_fs / ".coverage"
    _data_file_in(shapes, target, branch=True)
    result = run_pytest(pytester, "--distcov", "-n", "2")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR, out
    assert "Traceback" not in out + result.stderr.str()
    line = _error_line(out)
    assert line.startswith(f"distcov: could not write {target}: "), line
    assert "disk is full" in line or "No space left" in line, line
    assert "pytest-distcov report --data-file" in line, line
    rescued = _rescued(line)
    # The data file's directory is full; the next place is the temporary directory.
    assert rescued.parent == private_tmp.resolve(), line
    assert rescued.name.startswith("distcov-rescue-")
    assert rescued.suffix == ".coverage"
    assert_same_data(rescued, pytester.path / "ok" / ".coverage", arcs=True)
    assert not diff_data(rescued, pytester.path / "ok" / ".coverage", arcs=False)
    # Nothing half-written is left on the full disk, and no data file appeared there.
    assert sorted(p.name for p in full_fs.iterdir()) == ["filler"]
    # The workers kept their durable copies, and the line names their directories.
    worker_dirs = sorted(private_tmp.glob("distcov-gw*"))
    assert len(worker_dirs) >= 2, list(private_tmp.iterdir())
    for d in worker_dirs:
        assert list(d.glob(".coverage.gw*")), d
        assert str(d) in line, line
    assert "kept the data directories" in line


def test_full_disk_in_process_run_saves_the_data_too(
    pytester: pytest.Pytester, shapes: Path, private_tmp: Path, full_fs: Path
) -> None:
    """Without xdist the controller's own data is the whole run; it is not lost either."""
    _data_file_in(shapes, pytester.path / "ok" / ".coverage", branch=False)
    assert run_pytest(pytester, "--distcov").ret == 0
    _data_file_in(shapes, full_fs / ".coverage", branch=False)
    result = run_pytest(pytester, "--distcov")
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    rescued = _rescued(_error_line(result.stdout.str()))
    assert_same_data(rescued, pytester.path / "ok" / ".coverage")


def test_full_disk_with_append_saves_the_old_and_the_new_data_and_keeps_the_old_file(
    pytester: pytest.Pytester, shapes: Path, private_tmp: Path, small_fs: Path
) -> None:
    """The fallback file holds what the data file would have held: the appended file's data
    and this run's; the existing data file is left exactly as it was."""
    first, second = ("-k", "geometry"), ("-k", "not geometry")
    _data_file_in(shapes, pytester.path / "ok" / ".coverage", branch=False)
    assert run_pytest(pytester, "--distcov", "-n", "2", *first).ret == 0
    assert run_pytest(pytester, "--distcov", "-n", "2", *second, "--distcov-append").ret == 0

    target = small_fs / ".coverage"
    _data_file_in(shapes, target, branch=False)
    assert run_pytest(pytester, "--distcov", "-n", "2", *first).ret == 0
    before = target.read_bytes()
    _fill(small_fs)
    result = run_pytest(pytester, "--distcov", "-n", "2", *second, "--distcov-append")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR, out
    line = _error_line(out)
    assert line.startswith(f"distcov: could not write {target}: "), line
    assert "cannot be read" not in line, line
    assert target.read_bytes() == before
    rescued = _rescued(line)
    assert rescued.parent == private_tmp.resolve()
    assert_same_data(rescued, pytester.path / "ok" / ".coverage")
    # Both runs matter: each measured lines the other did not.
    assert diff_data(rescued, target).only_left
    _data_file_in(shapes, pytester.path / "second" / ".coverage", branch=False)
    assert run_pytest(pytester, "--distcov", "-n", "2", *second).ret == 0
    assert diff_data(rescued, pytester.path / "second" / ".coverage").only_left


DAMAGE = """\
import os


def test_damage_the_appended_file():
    path = os.environ.get("DAMAGE")
    if path:  # another process damages the data file while the tests run
        with open(path, "wb") as fh:
            fh.write(b"not a database" * 100)
"""


def test_unreadable_append_file_is_named_left_as_it_is_and_the_run_saved(
    pytester: pytest.Pytester, shapes: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (shapes / "tests" / "test_damage.py").write_text(DAMAGE)
    _data_file_in(shapes, pytester.path / "ok" / ".coverage", branch=False)
    assert run_pytest(pytester, "--distcov", "-n", "2").ret == 0  # this run, written normally

    target = pytester.path / "appended" / ".coverage"
    _data_file_in(shapes, target, branch=False)
    assert run_pytest(pytester, "--distcov", "-n", "2").ret == 0  # the file to append to
    monkeypatch.setenv("DAMAGE", str(target))
    result = run_pytest(pytester, "--distcov", "-n", "2", "--distcov-append")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR, out
    assert "Traceback" not in out
    line = _error_line(out)
    assert line.startswith(
        f"distcov: --distcov-append: cannot read coverage data file {target}: "
    ), line
    assert f"{target} is left as it is" in line, line
    assert target.read_bytes() == b"not a database" * 100, "the appended file was changed"
    rescued = _rescued(line)
    assert rescued.parent == target.parent  # beside it: that directory is writable
    assert_same_data(rescued, pytester.path / "ok" / ".coverage")


def test_full_store_keeps_the_data_file_and_says_so(
    pytester: pytest.Pytester, shapes: Path, private_tmp: Path, full_fs: Path
) -> None:
    store = full_fs / "store"
    store.mkdir()
    result = run_pytest(pytester, "--distcov", "-n", "2", f"--distcov-store={store}")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR, out
    assert "Traceback" not in out
    result.stdout.fnmatch_lines(
        [
            f"distcov: cannot write to the store {store}: *No space left on device*;"
            f" this run's data is still in {shapes}/.coverage*"
        ]
    )
    assert measured(shapes / ".coverage", arcs=False)
    assert list(store.iterdir()) == [], "a partial shard was left in the store"
    assert not list(private_tmp.glob("distcov-*")), "the data file was written: nothing kept"


def test_a_full_target_is_a_write_error_not_a_bad_source(tmp_path: Path, full_fs: Path) -> None:
    """Combining into a file on a full disk fails as a write; the source is not blamed."""
    source = tmp_path / "source.coverage"
    data = CoverageData(basename=str(source))
    data.add_lines({"/src/a.py": [1, 2, 3]})
    data.write()
    data.close(force=True)
    target = CoverageData(basename=str(full_fs / "target.coverage"))
    with pytest.raises((CoverageException, sqlite3.Error)) as info:
        update_from_file(target, source)
    assert not isinstance(info.value, DataFileError), info.value
    assert "disk is full" in str(info.value)
    target.close(force=True)


def test_the_data_file_is_synced_before_it_is_renamed_and_the_rename_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order of the real calls, seen by wrappers that let each one through."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("replace", os.fspath(dst)))
        real_replace(src, dst)

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc to name the synced file")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "out" / ".coverage"
    write_data_file(target, lambda d: d.add_lines({"/src/a.py": [1]}))
    tmp_name = f".coverage-distcov-{os.getpid()}.tmp"
    assert events == [
        ("fsync", str(target.parent / tmp_name)),
        ("replace", str(target)),
        ("fsync", str(target.parent)),
    ]
    assert measured(target, arcs=False) == {"/src/a.py": {1}}


@pytest.mark.slow
def test_full_disk_keeps_the_remote_workers_directories_on_their_host(
    pytester: pytest.Pytester, shapes: Path, sshlab: SshLab, full_fs: Path, private_tmp: Path
) -> None:
    """A remote worker's directory on its host is removed once the data file is written, and
    kept (the line names it, host:path) when the write failed."""
    # A host of its own (no other run's directories); remote workers keep their data in the
    # run's directory in the host's cache.
    host_runs = sshlab.add_host("h-failwrite") / "cache" / "pytest-distcov" / "runs"
    remote = [
        "--distcov",
        "--distcov-remote=h-failwrite",
        "--distcov-remote-timeout=120",
        f"--distcov-ssh-config={sshlab.ssh_config}",
        f"--distcov-remote-python={host_python()}",
        "-p",
        "no:randomly",
    ]
    _data_file_in(shapes, pytester.path / "ok" / ".coverage", branch=False)
    ok = run_pytest(pytester, *remote)
    assert ok.ret == 0, ok.stdout.str()
    assert not list(host_runs.glob("*/distcov-*")), "the worker's directory is left on the host"

    _data_file_in(shapes, full_fs / ".coverage", branch=False)
    result = run_pytest(pytester, *remote)
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR, out
    line = _error_line(out)
    assert_same_data(_rescued(line), pytester.path / "ok" / ".coverage")
    kept = list(host_runs.glob("*/distcov-gw*"))
    assert len(kept) == 1, list(host_runs.iterdir())
    assert list(kept[0].glob(".coverage.gw*"))
    assert "h-failwrite:/" in line, line
    assert kept[0].name in line, line
    # No lock file: the next run's agent does not take the kept run for a killed one.
    assert not (kept[0].parent / "distcov.lock").exists()

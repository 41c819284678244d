"""Temporary directories held by a lock: what a later run removes, and what it leaves alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_distcov.tempdirs import LOCK_NAME, HeldDir, sweep

from .helpers import run_python


def _made_by_a_process_that_ended(tmp: Path, *, release: str | None = None) -> Path:
    """A directory made (and held) by another process, which has ended since (``release``:
    the arguments it released it with, None if it did not)."""
    code = (
        "import os, sys, tempfile; tempfile.tempdir = sys.argv[1];"
        " from pytest_distcov.tempdirs import HeldDir;"
        " d = HeldDir.create('gw0'); (d.path / 'kept').write_text('data');"
        f" {'' if release is None else f'd.release({release});'} print(d.path)"
    )
    return Path(run_python("-c", code, str(tmp)).strip())


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    return tmp_path


def test_a_live_processs_directory_is_never_removed(tmp: Path) -> None:
    held = HeldDir.create("controller")
    try:
        assert held.path.parent == tmp
        assert (held.path / LOCK_NAME).is_file()
        assert sweep() == 0
        assert held.path.is_dir()
    finally:
        held.release()


def test_the_directory_of_a_process_that_died_is_removed(tmp: Path) -> None:
    dead = _made_by_a_process_that_ended(tmp)
    assert sweep() == 1
    assert not dead.exists()


def test_a_directory_kept_on_purpose_is_left_alone(tmp: Path) -> None:
    kept = _made_by_a_process_that_ended(tmp, release="")
    assert sweep() == 0
    assert (kept / "kept").read_text() == "data"


def test_an_adopted_directory_outlives_its_owner_until_released(tmp: Path) -> None:
    dead = _made_by_a_process_that_ended(tmp)
    adopted = HeldDir.adopt(dead)
    assert adopted is not None
    assert sweep() == 0
    adopted.release()  # still there: kept on purpose, so its lock file goes
    assert sweep() == 0
    assert (dead / "kept").exists()


def test_only_a_directory_with_a_lock_file_is_adopted(tmp: Path) -> None:
    (tmp / "distcov-gw0-other").mkdir()
    assert HeldDir.adopt(tmp / "distcov-gw0-other") is None
    assert HeldDir.adopt(tmp / "gone") is None


def test_a_parent_held_by_another_process_takes_the_directory(
    tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a remote host: inside the run's directory, which the host's agent holds."""
    parent = tmp / "run"
    parent.mkdir()
    monkeypatch.setenv("PYTEST_DISTCOV_TMP_PARENT", str(parent))
    held = HeldDir.create("gw1")
    assert held.path.parent == parent
    assert not held.held
    assert not (held.path / LOCK_NAME).exists()


def test_a_directory_handed_over_is_removed_once_its_new_holder_is_gone(tmp: Path) -> None:
    """A worker lets go of its directory at its end but leaves the lock file: its controller
    holds it; if that controller is killed too, a later run removes it."""
    handed = _made_by_a_process_that_ended(tmp, release="handed_over=True")
    assert (handed / LOCK_NAME).is_file()
    assert sweep() == 1
    assert not handed.exists()

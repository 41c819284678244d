"""The monitor engine's phases (Python 3.12+), at the level of the engine object."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from coverage import Coverage

pytestmark = pytest.mark.skipif(sys.version_info < (3, 12), reason="sys.monitoring: 3.12+")


def test_a_line_another_thread_adds_to_an_ended_phase_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line callback of another thread may look its code's set up before a phase ends and
    add to it after the phase was read (its event is then disabled: it never fires again in
    that phase). The next phase end reads the set again and keeps the line."""
    from pytest_distcov.engine.monitor import LineMonitor

    (tmp_path / "late_mod.py").write_text("def f(x):\n    if x:\n        return 1\n    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "late_mod", raising=False)
    monitor = LineMonitor(Coverage(data_file=None, source=[str(tmp_path)]))
    monitor.start()
    try:
        module = importlib.import_module("late_mod")
        assert module.f(1) == 1
        monitor._end_phase()
        ((_label, first),) = monitor._unjournaled
        name = next(n for n in first if n.endswith("late_mod.py"))
        assert first[name] == {1, 2, 3}
        found, _ = monitor._read[id(module.f.__code__)]
        found.add(4)  # as the other thread's callback does, late
        monitor._end_phase()
        assert monitor._unjournaled[-1][1][name] == {4}
        monitor._end_phase()  # read once: not again
        assert all(name not in named for _, named in monitor._unjournaled[2:])
    finally:
        monitor.stop()
        sys.modules.pop("late_mod", None)


def test_a_record_another_thread_starts_as_a_phase_ends_is_left_for_the_next(
    tmp_path: Path,
) -> None:
    """A line callback of another thread that finds no record for its code makes one; made
    between the phase's copy of the records and their removal, it stays for the next phase."""
    from pytest_distcov.engine.monitor import LineMonitor

    monitor = LineMonitor(Coverage(data_file=None, source=[str(tmp_path)]))
    newcomer = 12345

    class Racing(dict[int, set[int]]):
        """The records, with another thread's new one arriving while they are copied."""

        def keys(self) -> list[int]:  # type: ignore[override]
            found = list(super().keys())
            self[newcomer] = {7}
            return found

        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter(self.keys())

    monitor._current = Racing({999: {1}})
    monitor._end_phase()
    assert monitor._current.get(newcomer) == {7}
    assert 999 not in monitor._current

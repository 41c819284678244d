"""Fail-under as a sink: the reports' total judged against the threshold, as coverage does."""

from __future__ import annotations

from .pipeline import Combined, ExitStatus, Outcome
from .report import judge_fail_under

__all__ = ["FailUnderSink"]


class FailUnderSink:
    """Fails the run when the total the reports computed misses ``threshold``."""

    def __init__(self, threshold: float, precision: int) -> None:
        self.threshold = threshold
        self.precision = precision

    def run(self, combined: Combined, so_far: Outcome) -> Outcome:
        if so_far.total is None:
            return Outcome()  # no total: the reports said why (they stop the sinks then)
        verdict = judge_fail_under(so_far.total, self.threshold, self.precision)
        if verdict.failed:
            return Outcome(
                errors=[
                    f"FAIL: total coverage {verdict.shown} is below the required {verdict.wanted}"
                    " (--distcov-fail-under)"
                ],
                status=ExitStatus.TESTS_FAILED,
            )
        return Outcome(lines=[f"required coverage of {verdict.wanted} reached: {verdict.shown}"])

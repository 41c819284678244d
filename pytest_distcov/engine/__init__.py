"""Measuring in one process: the coverage.py lifecycle, the per-test tap, the probe engine.

Owns starting and stopping the tracer, choosing the core, flushing per test, and the durable
journal a worker keeps beside its data file. May import coverage.py (its internals only through
:mod:`pytest_distcov.covapi`), :mod:`pytest_distcov.data` and the bottom layers; never pytest
(except the probe engine's routing of assertion-rewritten modules), never the roles.
"""

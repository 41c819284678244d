"""Coverage data: reading, merging and writing it, in memory and on disk.

Owns the controller's in-memory union and writing the combined data file safely (merge), every
reader of data files and journals with path mapping (readers), the journal's format (journal),
the union of many shards (union), and per-test context labels (contexts). May import coverage.py's
public data API, :mod:`pytest_distcov.protocol` and :mod:`pytest_distcov.errors`; never pytest.
"""

"""Coverage data: reading, merging and writing it, in memory and on disk.

Owns the controller's in-memory union, the readers of data files and journals, the union of
many shards, path mapping, and writing the combined data file safely. May import coverage.py's
public data API, :mod:`pytest_distcov.protocol` and :mod:`pytest_distcov.errors`; never pytest.
"""

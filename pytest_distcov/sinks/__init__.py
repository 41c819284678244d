"""Where the combined data goes: reports and fail-under, shard stores, Coveralls.

Each sink knows coverage.py's public API (and requests or boto3 for its own transport), never
pytest, so the plugin and the ``pytest-distcov`` command share them. May import
:mod:`pytest_distcov.data`, :mod:`pytest_distcov.settings` specs and the bottom layers.
"""

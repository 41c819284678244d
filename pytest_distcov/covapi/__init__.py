"""The one door to coverage.py: the only code in pytest-distcov that touches its internals.

Every other module uses coverage.py's documented API only; where that API is missing, the use of
an internal lives here, is checked once at start, and has a named fallback. May import coverage.py
and the bottom layers (:mod:`pytest_distcov.errors`); never pytest, never the rest of the package.
"""

"""Settings: every option and ini key, resolved once into a frozen ``Settings``.

Owns the command-line options, the ini keys, their precedence and validation, the syntax of
remote host entries and of report specs. May import the standard library, pytest (options
only), :mod:`pytest_distcov.errors` and, lazily, the store's spec checks and size parser (the one
``--max-shard-size`` uses); never coverage.py.
"""

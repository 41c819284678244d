"""The roles a pytest process plays: the controller and the worker, each a small set of plugins.

The plugin registers one role per process; hooks never ask "am I a worker". May import every
other sub-package; nothing but :mod:`pytest_distcov.plugin` imports the roles.
"""

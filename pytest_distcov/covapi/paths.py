"""``[paths]`` remapping as ``coverage combine`` does it, for ``pytest-distcov combine``.

coverage.py documents the ``[paths]`` setting (its values are public: ``get_option("paths")``)
but not the code that applies it: ``coverage.files.PathAliases``, which ``Coverage.combine``
builds from the setting (``_make_aliases``: the first value of each entry is the result, the
others patterns, relative to the working directory unless ``relative_files``) and maps every
combined path through, caching the answers. :func:`remapper` builds the same object the same
way. Fallback, when a coverage.py release has moved it: no remapping, and a note that says so
(paths from other machines are then taken as they are).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from coverage import Coverage
from coverage.exceptions import ConfigError

from pytest_distcov.errors import SettingsError

__all__ = ["PATHS_NEEDS", "remapper"]

PATHS_NEEDS = ("coverage.files.PathAliases(relative=).add(pattern, result) and .map(path)",)


def remapper(cov: Coverage) -> tuple[Callable[[str], str] | None, str]:
    """``cov``'s ``[paths]`` as a path mapper (None when it has none), and a note if it has
    some that this coverage.py cannot apply ('' otherwise).

    A pattern coverage.py refuses (one that ends with a wildcard) is a :class:`SettingsError`,
    as it is an error for ``coverage combine``.
    """
    paths = cov.get_option("paths")
    if not isinstance(paths, dict) or not paths:
        return None, ""
    try:
        from coverage.files import PathAliases

        aliases = PathAliases(relative=bool(cov.get_option("run:relative_files")))
        add, map_path = aliases.add, aliases.map
    except (ImportError, AttributeError, TypeError) as exc:
        return None, (
            f"[paths] is not applied: coverage.py {_version()} lacks {PATHS_NEEDS[0]}"
            f" ({type(exc).__name__}: {exc}); paths from other machines are taken as they are"
        )
    try:
        for values in paths.values():
            for pattern in values[1:]:
                add(pattern, values[0])
    except ConfigError as exc:
        raise SettingsError(f"[paths] in the coverage configuration: {exc}") from None
    return functools.cache(map_path), ""


def _version() -> str:
    import coverage

    return coverage.__version__

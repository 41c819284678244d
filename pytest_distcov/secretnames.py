"""Names of files that look like secrets: keys, credentials, environment files.

Shipping to a host leaves them out (unless ``distcov_remote_include`` names them), and
``combine`` refuses a shard that names one: data from another machine must not pull such a
file into a report or an upload.
"""

from __future__ import annotations

import fnmatch

__all__ = ["SECRET_DIRS", "SECRET_NAMES", "VCS_DIRS", "looks_private", "looks_secret"]

#: File names that look like secrets (matched case-blind: ``.ENV`` is ``.env`` on macOS).
SECRET_NAMES = (
    ".env*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    ".netrc",
    ".pypirc",
    ".npmrc",
    ".pgpass",
    ".htpasswd",
    ".git-credentials",
)
#: Directories whose every file counts as a secret.
SECRET_DIRS = frozenset({".ssh", ".aws", ".gnupg", ".docker", ".kube"})
#: Version control's own directories (a remote's URL with its credentials, hooks): a shard
#: that names a file in one is refused.
VCS_DIRS = frozenset({".git", ".hg", ".svn"})


def looks_secret(rel: str) -> bool:
    """Whether a file at ``rel`` (POSIX, inside a tree) looks like a secret: a key, a
    credentials file, an environment file, or anything under ``.ssh/``, ``.aws/``,
    ``.gnupg/``, ``.docker/`` or ``.kube/``, in any case. ``id_*`` counts when it is an ssh
    key's name (no suffix, or ``.pub``), so ``id_utils.py`` ships."""
    parts = rel.casefold().split("/")
    name = parts[-1]
    if any(p in SECRET_DIRS for p in parts[:-1]):
        return True
    if any(fnmatch.fnmatchcase(name, p) for p in SECRET_NAMES):
        return True
    return name.startswith("id_") and ("." not in name or name.endswith(".pub"))


def looks_private(rel: str) -> bool:
    """:func:`looks_secret`, or a file in version control's own directories (``.git/config``
    holds a remote's URL with its credentials): what data from another machine may not name."""
    return not VCS_DIRS.isdisjoint(rel.casefold().split("/")) or looks_secret(rel)

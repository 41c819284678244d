"""What a remote host needs to run the workers, as content-addressed file trees (stdlib only).

A host needs only ssh and a python3 of the controller's minor version. Everything else is
shipped as :class:`Tree` objects, each a list of files with a content digest:

* the **project**: the files under pytest's rootdir, without ``.git``, virtualenvs, caches,
  coverage data and what ``.gitignore`` ignores (``git ls-files`` decides when git is there),
  and without the user's extra ignore patterns;
* the **packages**: every directory on the controller's ``sys.path`` that is neither the
  standard library nor inside the rootdir (the virtualenv's site-packages, ``PYTHONPATH``
  entries), so the host imports pytest, xdist, execnet, coverage, pytest-distcov and the
  suite's own dependencies exactly as installed here;
* the **extras**: packages the controller imports through an import hook rather than a
  ``sys.path`` directory (editable installs), copied under their top-level name.

Files that look like secrets (:func:`pytest_distcov.secretnames.looks_secret`) are
left out of the project and of every tree that is not an installed site-packages (where
certifi's ``cacert.pem`` is a package's data, not a secret) unless ``distcov_remote_include``
names them; a symbolic link to a file outside its tree is never followed (it could be
``~/.ssh/id_rsa``). The header counts both. A ``sys.path`` entry that is the home directory or
``/`` is refused: it would ship everything the user can read.

The host keeps files by digest, so a second run ships only what changed; the layout of the
worker's ``sys.path`` is described by :class:`PathEntry` values that the host resolves against
its own copies (and its own standard library).
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pytest_distcov.errors import RemoteError
from pytest_distcov.secretnames import looks_secret

__all__ = [
    "Bundle",
    "FileEntry",
    "PathEntry",
    "Tree",
    "build_bundle",
    "digest_bytes",
    "digest_file",
]

#: Directory names never shipped from the project.
PROJECT_SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        ".hypothesis",
        ".tox",
        ".nox",
        ".venv",
        "venv",
        ".eggs",
        "htmlcov",
        "node_modules",
    }
)
#: File name patterns never shipped from anywhere (bytecode is rebuilt on the host; coverage
#: data stays here, where a host's ``coverage combine`` cannot pick it up).
SKIP_FILES = ("*.pyc", "*.pyo", ".coverage", ".coverage.*", "*-distcov-*.tmp")
#: Distributions not shipped with the packages: installers, never imported by tests.
SKIP_PACKAGE_DIRS = ("pip", "pip-*.dist-info")


def digest_bytes(content: bytes) -> str:
    return hashlib.blake2b(content, digest_size=16).hexdigest()


def digest_file(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    rel: str  # POSIX path inside the tree
    digest: str
    size: int
    executable: bool

    def wire(self) -> tuple[str, str, int, bool]:
        return (self.rel, self.digest, self.size, self.executable)


@dataclass(frozen=True)
class Tree:
    """A directory to reproduce on a host.

    ``per_run`` trees (the project) get a fresh copy for every run, since tests may write into
    them; the others are shared by every run with the same content (keyed by ``digest``).
    """

    name: str
    #: (prefix inside the tree, local path): ("", dir) for a plain directory; for the extras
    #: tree one pair per package, e.g. ("mypkg", "/src/mypkg") or ("mod.py", "/src/mod.py").
    roots: tuple[tuple[str, str], ...]
    files: tuple[FileEntry, ...]
    per_run: bool
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        h = hashlib.blake2b(digest_size=16)
        for f in self.files:
            h.update(f"{f.rel}\0{f.digest}\0{int(f.executable)}\n".encode())
        object.__setattr__(self, "digest", h.hexdigest())

    @property
    def local(self) -> str:
        """The local directory of a plain tree ("" for the extras tree)."""
        return self.roots[0][1] if self.roots and self.roots[0][0] == "" else ""

    def local_path(self, rel: str) -> str:
        for prefix, local in self.roots:
            if not prefix:
                return os.path.join(local, *rel.split("/"))
            if rel == prefix:
                return local
            if rel.startswith(prefix + "/"):
                return os.path.join(local, *rel[len(prefix) + 1 :].split("/"))
        raise KeyError(rel)

    def path_map(self, remote_root: str) -> list[tuple[str, str]]:
        """(remote prefix, local prefix) pairs for this tree copied to ``remote_root``."""
        return [
            (f"{remote_root}/{prefix}" if prefix else remote_root, local)
            for prefix, local in self.roots
        ]


@dataclass(frozen=True)
class PathEntry:
    """One entry of the worker's ``sys.path``, to be resolved on the host.

    ``kind`` is ``"tree"`` (``sub`` inside the tree named ``tree``), ``"stdlib"`` (the host's
    own standard library entries) or ``"cwd"`` (the empty entry: the current directory).
    """

    kind: str
    tree: str = ""
    sub: str = ""


@dataclass(frozen=True)
class Bundle:
    project: Tree
    packages: tuple[Tree, ...]
    sys_path: tuple[PathEntry, ...]
    skipped: tuple[str, ...]  # sys.path entries that cannot be shipped (zip files, ...)
    #: The tree that is the controller's site-packages: on a host it becomes the site-packages
    #: of a virtual environment, so that coverage (and ``site``) treat it as installed code.
    site_tree: str | None = None
    #: local paths of the files left out because they look like secrets
    secrets: tuple[str, ...] = ()
    #: local paths of the symbolic links left out because they point outside their tree
    outside_links: tuple[str, ...] = ()
    #: distcov_remote_include patterns that matched no secret-looking file (they include nothing)
    unused_include: tuple[str, ...] = ()

    @property
    def trees(self) -> tuple[Tree, ...]:
        return (self.project, *self.packages)

    def blobs(self) -> dict[str, list[tuple[str, str, str]]]:
        """Digest -> every (tree name, rel, local file) listed with that content."""
        out: dict[str, list[tuple[str, str, str]]] = {}
        for tree in self.trees:
            for f in tree.files:
                out.setdefault(f.digest, []).append((tree.name, f.rel, tree.local_path(f.rel)))
        return out


# -- walking ------------------------------------------------------------------------------------


def _skipped_file(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in SKIP_FILES)


def _is_venv(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "pyvenv.cfg"))


def _walk(root: str, skip_dir: Iterable[str] = ()) -> Iterator[str]:
    """Relative POSIX paths of the regular files under ``root`` (symlinks to files included)."""
    skip = set(skip_dir)
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            if d in skip or any(fnmatch.fnmatch(d, p) for p in skip) or os.path.islink(full):
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            if _skipped_file(name):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            yield rel


class _HashCache:
    """Digests of files seen before, keyed by (size, mtime): a warm run stats but never reads."""

    def __init__(self, known: Mapping[str, list[object]] | None) -> None:
        self.known = dict(known or {})
        self.seen: dict[str, list[object]] = {}

    def entry(self, path: str, rel: str) -> FileEntry | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not os.path.isfile(path):
            return None
        key = [st.st_size, st.st_mtime_ns]
        old = self.known.get(path)
        if old is not None and old[:2] == key:
            digest = str(old[2])
        else:
            try:
                digest = digest_file(path)
            except OSError:
                return None
        self.seen[path] = [*key, digest]
        return FileEntry(rel, digest, st.st_size, bool(st.st_mode & 0o111))


# -- the project --------------------------------------------------------------------------------


def _git_files(root: str) -> list[str] | None:
    """Files git would keep under ``root`` (tracked or not ignored), or None without git."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        out = subprocess.run(
            [git, "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None  # not a work tree (or git broken): fall back to our own walk
    return sorted({p for p in out.decode("utf-8", "surrogateescape").split("\0") if p})


def _gitignore_patterns(root: str) -> list[str]:
    path = os.path.join(root, ".gitignore")
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith(("#", "!"))]


def _ignored(rel: str, patterns: Iterable[str]) -> bool:
    """fnmatch-style ignore: a pattern matches the path, any leading part of it, or a name."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        pat = raw.rstrip("/").lstrip("/")
        if not pat:
            continue
        if "/" in pat:
            if any(fnmatch.fnmatch(p, pat) for p in prefixes):
                return True
        elif any(fnmatch.fnmatch(part, pat) for part in parts):
            return True
    return False


def project_files(root: str, extra_ignores: Iterable[str] = ()) -> list[str]:
    extra = list(extra_ignores)
    listed = _git_files(root)
    if listed is None:
        extra += _gitignore_patterns(root)
        listed = list(_walk(root, PROJECT_SKIP_DIRS))
    out = []
    venvs: set[str] = set()
    for rel in listed:
        parts = rel.split("/")
        if any(p in PROJECT_SKIP_DIRS for p in parts[:-1]) or _skipped_file(parts[-1]):
            continue
        top = parts[0]
        if len(parts) > 1 and (top in venvs or _is_venv(os.path.join(root, top))):
            venvs.add(top)
            continue
        if extra and _ignored(rel, extra):
            continue
        out.append(rel)
    return out


# -- packages -----------------------------------------------------------------------------------


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        return False


def _stdlib_roots() -> list[str]:
    roots = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    return sorted(roots)


def is_stdlib(path: str) -> bool:
    real = os.path.realpath(path)
    if "site-packages" in real or "dist-packages" in real:
        return False
    return any(_inside(real, r) for r in _stdlib_roots())


def _scripts_dir() -> str:
    return os.path.realpath(sysconfig.get_path("scripts"))


def _editable_extras(covered: list[str], rootdir: str) -> tuple[dict[str, str], list[str]]:
    """Top-level packages reachable only through import hooks (editable installs).

    Returns (name -> local file or directory to ship as extras/<name>, directories under the
    rootdir to put on the worker's path).
    """
    extras: dict[str, str] = {}
    project_dirs: list[str] = []
    try:
        names = sorted(importlib.metadata.packages_distributions())
    except Exception:  # a broken distribution must not stop the run; extras are a bonus
        return extras, project_dirs
    for name in names:
        if not name.isidentifier():
            continue
        try:
            spec = importlib.util.find_spec(name)
        except Exception:  # an import hook that fails: nothing we could ship anyway
            continue
        if spec is None:
            continue
        if spec.submodule_search_locations:
            locations = [os.path.realpath(p) for p in spec.submodule_search_locations]
        elif spec.origin and os.path.isfile(spec.origin):
            locations = [os.path.realpath(spec.origin)]
        else:
            continue
        for loc in locations:
            if any(_inside(loc, c) for c in covered) or is_stdlib(loc):
                continue
            if _inside(loc, rootdir):
                parent = os.path.dirname(loc)
                if parent not in project_dirs:
                    project_dirs.append(parent)
            elif name not in extras:
                extras[name] = loc
    return extras, project_dirs


def _extras_tree(extras: dict[str, str], planner: _Planner) -> Tree:
    roots: list[tuple[str, str]] = []
    files: list[FileEntry] = []
    for name, loc in sorted(extras.items()):
        if os.path.isdir(loc):
            roots.append((name, loc))
            pairs = [
                (f"{name}/{r}", os.path.join(loc, *r.split("/")))
                for r in _walk(loc, ("__pycache__",))
                if planner.keep(os.path.join(loc, *r.split("/")), r, loc, not _installed(loc))
            ]
        else:
            roots.append((os.path.basename(loc), loc))
            pairs = [(os.path.basename(loc), loc)]
        files.extend(e for rel, path in pairs if (e := planner.cache.entry(path, rel)) is not None)
    return Tree("extras", tuple(roots), tuple(files), per_run=False)


def _installed(path: str) -> bool:
    """In an installed site-packages (pip's files, not the user's): secrets are not looked for
    (certifi's and botocore's ``cacert.pem`` are package data)."""
    return any(p in ("site-packages", "dist-packages") for p in path.split(os.sep))


@dataclass
class _Planner:
    """Walks the controller's sys.path into package trees and the worker's path layout."""

    rootdir: str
    cache: _HashCache
    include: tuple[str, ...] = ()
    packages: list[Tree] = field(default_factory=list)
    layout: list[PathEntry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    shipped: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    outside_links: list[str] = field(default_factory=list)
    #: the include patterns that let a secret-looking file through
    included_by: set[str] = field(default_factory=set)
    #: directory -> its real path (one realpath a directory, not one a file)
    real_dirs: dict[str, str] = field(default_factory=dict)

    def keep(self, path: str, rel: str, tree_root: str, secrets: bool) -> bool:
        """Whether the file at ``path`` (``rel`` in a tree made from ``tree_root``) is shipped:
        not a link that leaves the tree, and not a secret-looking file nobody asked for.
        ``tree_root`` is already a real path (every tree's root is resolved when planned)."""
        real = self.real_path(path)
        if not _inside(real, tree_root) and os.path.lexists(path):
            self.outside_links.append(path)
            return False
        # the name, and the real one of a link inside the tree (``a.py`` -> ``.env``)
        names = {rel, os.path.relpath(real, tree_root).replace(os.sep, "/")}
        if secrets and any(looks_secret(n) for n in names):
            matched = [p for p in self.include if any(_ignored(n, (p,)) for n in names)]
            if not matched:
                self.secrets.append(path)
                return False
            self.included_by.update(matched)
        return True

    def real_path(self, path: str) -> str:
        """``os.path.realpath(path)``, resolving each directory once: only a link needs its
        own (a directory listed by git may be a link too: it is resolved as one)."""
        if os.path.islink(path):
            return os.path.realpath(path)
        parent, name = os.path.split(path)
        real = self.real_dirs.get(parent)
        if real is None:
            real = self.real_dirs[parent] = os.path.realpath(parent)
        return os.path.join(real, name)

    def tree(self, name: str, local: str, rels: Iterable[str], per_run: bool) -> Tree:
        secrets = not _installed(local)
        files = []
        for rel in rels:
            path = os.path.join(local, *rel.split("/"))
            if not self.keep(path, rel, local, secrets):
                continue
            entry = self.cache.entry(path, rel)
            if entry is not None:
                files.append(entry)
        return Tree(name, (("", local),), tuple(files), per_run)

    def project_entry(self, path: str) -> PathEntry:
        sub = os.path.relpath(path, self.rootdir).replace(os.sep, "/")
        return PathEntry("tree", "project", "" if sub == "." else sub)

    def add(self, raw: str, scripts: str) -> None:
        if raw == "":
            self.layout.append(PathEntry("cwd"))
            return
        real = os.path.realpath(raw)
        if is_stdlib(real):
            if PathEntry("stdlib") not in self.layout:
                self.layout.append(PathEntry("stdlib"))
        elif _inside(real, self.rootdir):
            self.layout.append(self.project_entry(real))
        elif real == scripts or not os.path.exists(real):
            pass  # the bin directory of a venv, or an entry that does not exist
        elif not os.path.isdir(real):
            self.skipped.append(raw)  # zip files and eggs: not shipped
        elif what := too_wide(real):
            raise RemoteError(
                f"--distcov-remote: sys.path holds {raw!r}, {what}: it would be shipped whole"
                " to every host; remove it from PYTHONPATH (or wherever it is added)"
            )
        elif real not in self.shipped:
            name = f"packages-{len(self.packages) + 1}"
            rels = _walk(real, ("__pycache__", *SKIP_PACKAGE_DIRS))
            self.packages.append(self.tree(name, real, rels, per_run=False))
            self.shipped.append(real)
            self.layout.append(PathEntry("tree", name))


def too_wide(real: str) -> str:
    """What ``real`` (a resolved directory) is, if shipping it whole would ship the home
    directory (its keys, tokens and mail) or the whole machine; '' otherwise."""
    if real == os.path.realpath("/"):
        return "the root directory"
    home = os.path.expanduser("~")
    if not os.path.isabs(home):  # no HOME and no passwd entry (a container's bare uid)
        return ""
    home = os.path.realpath(home)
    if real == home:
        return "your home directory"
    if _inside(home, real):
        return f"a directory that holds your home directory ({home})"
    return ""


def build_bundle(
    rootdir: str,
    *,
    extra_ignores: Iterable[str] = (),
    path: Iterable[str] | None = None,
    hash_cache: Mapping[str, list[object]] | None = None,
    include: Iterable[str] = (),
) -> tuple[Bundle, dict[str, list[object]]]:
    """Everything a host needs, and the updated hash cache (to keep for the next run).
    ``include``: patterns of secret-looking files to ship all the same."""
    rootdir = os.path.realpath(rootdir)
    if what := too_wide(rootdir):
        raise RemoteError(
            f"--distcov-remote: pytest's rootdir is {rootdir!r}, {what}: the project would be"
            " shipped whole to every host; run pytest in the project's directory, or give"
            " --rootdir (or a pytest.ini, pyproject.toml, tox.ini or setup.cfg in the project)"
        )
    planner = _Planner(rootdir, _HashCache(hash_cache), tuple(include))
    project = planner.tree("project", rootdir, project_files(rootdir, extra_ignores), per_run=True)
    scripts = _scripts_dir()
    for raw in list(sys.path if path is None else path):
        planner.add(raw, scripts)
    if PathEntry("stdlib") not in planner.layout:
        planner.layout.append(PathEntry("stdlib"))
    extras, project_dirs = _editable_extras(planner.shipped, rootdir)
    for d in project_dirs:
        entry = planner.project_entry(d)
        if entry not in planner.layout:
            planner.layout.append(entry)
    if extras:
        planner.packages.append(_extras_tree(extras, planner))
        planner.layout.append(PathEntry("tree", "extras"))
    purelib = os.path.realpath(sysconfig.get_paths()["purelib"])
    site_tree = next((t.name for t in planner.packages if t.local == purelib), None)
    bundle = Bundle(
        project,
        tuple(planner.packages),
        tuple(planner.layout),
        tuple(planner.skipped),
        site_tree,
        tuple(planner.secrets),
        tuple(planner.outside_links),
        tuple(p for p in planner.include if p not in planner.included_by),
    )
    return bundle, planner.cache.seen

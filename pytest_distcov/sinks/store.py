"""Shared stores of shard data files: a directory (local or mounted) or an S3 prefix.

One CI machine's run writes one *shard*: a coverage data file whose paths under the project
root are relative, so that a combiner in any checkout gets its own paths back. A shard's name is
unique (machine, process, random) and starts with :data:`SHARD_PREFIX`, never with
``.coverage.``, so that coverage's own ``combine`` (which every coverage report command runs
since 7.14) never eats a store's files. Writing is atomic: a directory store writes a hidden
temporary name and renames it; an S3 object appears whole or not at all.

Reading never changes a store: files are opened read-only (regular files only, never through a
symlink: see ``data.readers.read_shard``) or downloaded. It reads coverage.py's
own parallel data files too (``.coverage.<machine>.pid<pid>.X<random>x``, what ``coverage run
-p`` writes; :data:`COVERAGE_PREFIX`): a workflow that uploads those from each machine combines
them here. Whatever a store holds was put there by anyone who could write to it: a shard above
:data:`MAX_SHARD_BYTES` is not read, and :func:`shard_mapper` refuses paths that lead out of
the project (by name or through a link), that look like secrets, or that name anything here but
a regular file.
"""

from __future__ import annotations

import contextlib
import glob
import ntpath
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from pytest_distcov.data.readers import UntrustedPath, checked_mapper, copy_at_most, shown
from pytest_distcov.errors import StoreError
from pytest_distcov.secretnames import looks_private

if TYPE_CHECKING:
    from coverage import Coverage

__all__ = [
    "COVERAGE_PREFIX",
    "MAX_SHARD_BYTES",
    "SHARD_PREFIX",
    "DirStore",
    "S3Store",
    "Shard",
    "Store",
    "check_spec",
    "combiner_mapper",
    "is_shard_name",
    "open_store",
    "parse_size",
    "relative_mapper",
    "s3_environment_problem",
    "shard_mapper",
    "shard_name",
    "write_shard",
]

SHARD_PREFIX = ".distcov."
#: coverage.py's parallel data files (``coverage run -p``), read as shards, never written.
COVERAGE_PREFIX = ".coverage."
#: What SQLite may leave beside a data file: never a shard.
_SIDECARS = ("-journal", "-wal", "-shm")
_PARTIAL = ".distcov-partial-"
_GLOB = re.compile(r"[*?\[]")
#: The largest shard ``pytest-distcov combine`` reads (``--max-shard-size`` sets another). A
#: shard's reading budget grows with its size (``data.readers.READ_STEPS``), so this bounds
#: what any one shard can cost, downloading, on disk, in time and in memory: a store with one
#: huge object names it instead of filling the disk. The data file of a large suite with
#: per-test contexts is some hundreds of megabytes.
MAX_SHARD_BYTES = 1 << 30


def parse_size(text: str) -> int:
    """A size in bytes from ``500M``, ``2G``, ``4096`` (K, M, G, T are 1024s; a trailing B is
    allowed); a ValueError says what is expected. ``--max-shard-size`` and the remote hosts'
    cache size read sizes this way."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = text.strip().upper().removesuffix("B"), ""
    if number[-1:].isalpha() and number[-1:] in units:  # not '' (an empty SIZE is no size)
        number, unit = number[:-1], number[-1]
    try:
        value = int(number) * units[unit]
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"expected a size in bytes, 1 or more, such as 500M or 2G: {text!r}")
    return value


def is_shard_name(name: str) -> bool:
    """A store's file that ``combine`` reads: ``.distcov.*`` or ``.coverage.*``, not SQLite's
    journal beside one."""
    return name.startswith((SHARD_PREFIX, COVERAGE_PREFIX)) and not name.endswith(_SIDECARS)


def shard_name(machine: str | None = None) -> str:
    """``.distcov.<machine>.<pid>.<random>``: unique among machines writing at once."""
    import platform
    import secrets

    host = re.sub(r"[^A-Za-z0-9_-]+", "-", machine or platform.node() or "host").strip("-")
    return f"{SHARD_PREFIX}{host or 'host'}.{os.getpid()}.{secrets.token_hex(6)}"


def relative_mapper(root: Path) -> Callable[[str], str]:
    """Paths under ``root`` become relative POSIX paths; others stay as they are."""
    base = str(root.resolve())

    def to_relative(path: str) -> str:
        if os.path.isabs(path):
            try:
                rel = os.path.relpath(path, base)
            except ValueError:  # another drive
                return path
            if rel != ".." and not rel.startswith(".." + os.sep):
                return Path(rel).as_posix()
        return path

    return to_relative


def _absolute_anywhere(path: str) -> bool:
    """Absolute on some system (``/x``, ``C:\\x``), as coverage.py's ``[paths]`` sees it."""
    return posixpath.isabs(path) or ntpath.isabs(path)


def shard_mapper(root: Path, remap: Callable[[str], str] | None = None) -> Callable[[str], str]:
    """The combiner's side: a shard's path becomes its own, under ``root``, or is refused
    (:class:`~pytest_distcov.data.readers.UntrustedPath`).

    A relative path is relative to ``root`` (shards are written so, and so are coverage.py's
    files with ``relative_files``). An absolute one, of any system, first goes through
    ``remap``: the ``[paths]`` setting, applied as ``coverage combine`` applies it (see
    :func:`pytest_distcov.covapi.paths.remapper`). What comes out must lie under ``root`` once
    normalised (``a/../..`` leaves it): a store holds what anyone who could write to it put
    there, and a path outside the project would pull any file this machine can read into a
    report or an upload.
    """
    base = os.path.abspath(root)
    real = os.path.realpath(root)
    # the root as given and with its links resolved (coverage.py resolves them in its paths)
    homes = tuple({h.rstrip(os.sep) + os.sep for h in (base, real)})
    inside = real.rstrip(os.sep) + os.sep  # where an existing file's real path must lie

    def to_local(path: str) -> str:
        absolute = _absolute_anywhere(path)
        mapped = remap(path) if absolute and remap is not None else path
        local = os.path.normpath(os.path.join(real, mapped))
        if local.startswith(homes) and not (
            _absolute_anywhere(mapped) and not os.path.isabs(mapped)
        ):
            home = next(h for h in homes if local.startswith(h))
            rel = local[len(home) :].replace(os.sep, "/")
            exists = os.path.lexists(local)
            target = os.path.realpath(local) if exists else local
            if exists and not target.startswith(inside):
                raise UntrustedPath(
                    f"it names {shown(path)}, a link that leads out of the root {base}"
                )
            # the name, and the real one of a link (``a.py`` -> ``.env``)
            for name in {rel, target[len(inside) :].replace(os.sep, "/") if exists else rel}:
                if looks_private(name):
                    raise UntrustedPath(
                        f"it names {shown(path)}, a file that looks like a secret (a key, a"
                        " credentials or environment file, version control's own files):"
                        " never combined"
                    )
            return local
        if not absolute:
            raise UntrustedPath(f"it names {shown(path)}, which leads out of the root {base}")
        how = f" ([paths] maps it to {shown(mapped)})" if mapped != path else ""
        raise UntrustedPath(
            f"it names {shown(path)}{how}, outside the root {base} (another machine's paths"
            " are combined when a [paths] entry of the coverage configuration maps them into it)"
        )

    return checked_mapper(to_local)


def combiner_mapper(cov: Coverage, root: Path) -> tuple[Callable[[str], str], str]:
    """:func:`shard_mapper` with ``cov``'s ``[paths]``; and a note if this coverage.py cannot
    apply them ('' otherwise)."""
    from pytest_distcov.covapi.paths import remapper

    remap, note = remapper(cov)
    return shard_mapper(root, remap), note


class Shard(NamedTuple):
    """One data file in a store: ``where`` names it for the user, ``ref`` for the store;
    ``size`` in bytes, when the listing says it."""

    where: str
    ref: str
    size: int | None = None


class Store(Protocol):
    url: str

    def put(self, local: Path, name: str) -> str: ...
    def shards(self) -> list[Shard]: ...
    def holds(self) -> str: ...
    def fetch(self, shard: Shard, scratch: Path, max_bytes: int = MAX_SHARD_BYTES) -> Path: ...


def _too_big(shard: Shard, size: int, max_bytes: int) -> StoreError:
    return StoreError(
        f"shard {shard.where} is {size:,} bytes, more than --max-shard-size allows"
        f" ({max_bytes:,}); it was not read"
    )


def _holding(files: list[str], dirs: list[str], *, s3: bool, deeper: str) -> str:
    """What a store without shards holds, for its error: how many files (objects) and
    directories (prefixes below it), and some of their names."""
    if not files and not dirs:
        return "it is empty"
    item, sub = ("object", "prefix") if s3 else ("file", "directory")
    counts = [_count(len(files), item)] if files else []
    if dirs:
        counts.append(_count(len(dirs), sub))
    names = [shown(n) for n in files[:3]] + [shown(d) + "/" for d in dirs[: 4 - min(3, len(files))]]
    more = ", ..." if len(files) + len(dirs) > len(names) else ""
    text = f"it holds {' and '.join(counts)}, none named {SHARD_PREFIX}* or {COVERAGE_PREFIX}*"
    text += f": {', '.join(names)}{more}"
    return text + (f"; to read the shards below it, give {deeper} as the store" if dirs else "")


_PLURALS = {"file": "files", "directory": "directories", "object": "objects", "prefix": "prefixes"}


def _count(number: int, noun: str) -> str:
    return f"{number} {noun if number == 1 else _PLURALS[noun]}"


class DirStore:
    """A directory: local, or a shared mount (NFS, SMB) that several machines write to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = str(path)
        self._listed: tuple[list[str], list[str]] = ([], [])  # files, directories

    def put(self, local: Path, name: str) -> str:
        partial = self.path / f"{_PARTIAL}{name}"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, partial)
            os.replace(partial, self.path / name)
        except OSError as exc:
            with contextlib.suppress(OSError):  # a full disk leaves part of a copy behind
                partial.unlink(missing_ok=True)
            raise StoreError(f"cannot write to the store {self.url}: {exc}") from None
        return str(self.path / name)

    def shards(self) -> list[Shard]:
        if self.path.is_file():  # named by the user: a symlink to it is followed here, once
            return [Shard(str(self.path), os.path.realpath(self.path))]
        if not self.path.is_dir():
            if self.path.exists():
                raise StoreError(f"store {self.url} is neither a directory nor a data file")
            raise StoreError(f"store {self.url} does not exist (no such directory)")
        try:
            with os.scandir(self.path) as entries:
                found = [(e.name, e.is_dir()) for e in entries]
        except OSError as exc:
            raise StoreError(f"cannot list the store {self.url}: {exc}") from None
        files = sorted(name for name, is_dir in found if not is_dir)
        self._listed = (files, sorted(name for name, is_dir in found if is_dir))
        names = [n for n in files if is_shard_name(n) and (self.path / n).is_file()]
        return [Shard(str(self.path / n), str(self.path / n)) for n in names]

    def holds(self) -> str:
        """What the last listing found, said when it found no shard."""
        return _holding(*self._listed, s3=False, deeper=f"'{self.path}/*/'")

    def fetch(self, shard: Shard, scratch: Path, max_bytes: int = MAX_SHARD_BYTES) -> Path:
        """The shard itself, unless it is too big. What is there when it is read may be another
        file by then (see ``data.readers.read_shard``: it is read through one descriptor, and
        refused if it is no regular file); a symlink is not followed here either."""
        try:
            size = os.lstat(shard.ref).st_size
        except OSError as exc:
            raise StoreError(f"cannot read {shard.where}: {exc.strerror}") from None
        if size > max_bytes:
            raise _too_big(shard, size, max_bytes)
        return Path(shard.ref)


class S3Store:
    """``s3://bucket/prefix``, through boto3 and the standard AWS environment."""

    def __init__(self, url: str) -> None:
        self.url = check_spec(url)
        self.bucket, _, prefix = self.url.removeprefix("s3://").partition("/")
        self.prefix = prefix.strip("/")
        self._listed: tuple[list[str], list[str]] = ([], [])  # objects, prefixes below this one
        problem = s3_environment_problem(os.environ)
        if problem:
            raise StoreError(f"cannot use the store {self.url}: {problem}")
        try:
            import boto3
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError
        except ImportError:
            raise StoreError(
                f"the store {url} needs boto3: pip install 'pytest-distcov[s3]'"
            ) from None
        # boto3 reads the standard AWS environment itself (credentials, region, profile and
        # AWS_ENDPOINT_URL for S3-compatible servers); bounded retries and timeouts.
        try:
            self._client: Any = boto3.client(
                "s3",
                config=Config(
                    connect_timeout=10,
                    read_timeout=60,
                    retries={"max_attempts": 4, "mode": "standard"},
                ),
            )
        except (BotoCoreError, ValueError) as exc:  # a profile, region or endpoint it refuses
            raise StoreError(
                f"cannot use the store {self.url}: {str(exc).rstrip('.')} (check the AWS_*"
                " environment variables and the AWS config file)"
            ) from None

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _error(self, action: str, exc: Exception) -> StoreError:
        from botocore.exceptions import ClientError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            return StoreError(
                f"cannot {action} {self.url}: no AWS credentials (set AWS_ACCESS_KEY_ID and"
                " AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
            )
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                return StoreError(
                    f"cannot {action} {self.url}: bucket {self.bucket} does not exist"
                )
            return StoreError(f"cannot {action} {self.url}: {code or exc}")
        return StoreError(f"cannot {action} {self.url}: {exc}")

    def put(self, local: Path, name: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            with open(local, "rb") as body:  # one PUT: the object appears whole or not at all
                self._client.put_object(Bucket=self.bucket, Key=self._key(name), Body=body)
        except (BotoCoreError, ClientError) as exc:
            raise self._error("write to the store", exc) from None
        return f"s3://{self.bucket}/{self._key(name)}"

    def shards(self) -> list[Shard]:
        from botocore.exceptions import BotoCoreError, ClientError

        prefix = f"{self.prefix}/" if self.prefix else ""
        objects: dict[str, int] = {}  # name under the prefix -> size
        below: set[str] = set()
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                for item in page.get("Contents", []):
                    name = item["Key"][len(prefix) :]
                    if "/" in name:
                        below.add(name.split("/", 1)[0])
                    else:
                        objects[name] = int(item.get("Size", 0))
        except (BotoCoreError, ClientError) as exc:
            raise self._error("list the store", exc) from None
        if not objects and not below and not self._bucket_exists():
            raise StoreError(f"store {self.url} does not exist (no bucket {self.bucket})")
        self._listed = (sorted(objects), sorted(below))
        return [
            Shard(f"s3://{self.bucket}/{prefix}{n}", f"{prefix}{n}", objects[n])
            for n in sorted(objects)
            if is_shard_name(n)
        ]

    def holds(self) -> str:
        """What the last listing found, said when it found no shard."""
        return _holding(*self._listed, s3=True, deeper=f"each prefix below {self.url}")

    def _bucket_exists(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError):
            return False
        return True

    def fetch(self, shard: Shard, scratch: Path, max_bytes: int = MAX_SHARD_BYTES) -> Path:
        """Download the shard into ``scratch``: never more than ``max_bytes`` of it, whatever
        the listing said (the object may have been replaced since)."""
        from botocore.exceptions import BotoCoreError, ClientError

        if shard.size is not None and shard.size > max_bytes:
            raise _too_big(shard, shard.size, max_bytes)
        # the key's last part, made a safe file name (a key may hold anything, even a NUL)
        local = scratch / (
            re.sub(r"[^A-Za-z0-9._-]", "_", posixpath.basename(shard.ref))[:200] or "shard"
        )
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=shard.ref)
            with contextlib.closing(answer["Body"]) as body:
                size = int(answer.get("ContentLength") or 0)
                if size <= max_bytes:
                    with open(local, "wb") as out:
                        size = max(size, copy_at_most(body, out, max_bytes + 1))
        except (BotoCoreError, ClientError, OSError) as exc:
            raise self._error(f"download {shard.where} from", exc) from None
        if size > max_bytes:
            local.unlink(missing_ok=True)
            raise _too_big(shard, size, max_bytes)
        return local


_S3 = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?")
#: The variables that give boto3 an S3 endpoint, the more specific first.
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def s3_environment_problem(env: Mapping[str, str]) -> str:
    """'' if the S3 endpoint that ``env`` sets (if any) is a URL boto3 can use, else what is
    wrong with it, naming the variable (boto3 itself raises a bare ValueError)."""
    from urllib.parse import urlsplit

    if env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return ""
    for name in ENDPOINT_VARIABLES:
        value = env.get(name)
        if not value:
            continue
        try:
            parts = urlsplit(value)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
        except ValueError:
            ok = False
        if not ok:
            return (
                f"{name}={value!r} is not a URL such as https://s3.example.com or"
                f" http://127.0.0.1:9000; correct it, or unset it to use AWS itself"
            )
        return ""  # boto3 uses the first one set
    return ""


def check_spec(spec: str) -> str:
    """A store as written by a user, checked: a directory, or ``s3://bucket[/prefix]``."""
    text = spec.strip()
    if text.startswith("s3:"):
        if not _S3.fullmatch(text):
            raise StoreError("expected s3://bucket/prefix with a valid bucket name")
        return text.rstrip("/")
    if "://" in text or not text:
        raise StoreError("a store is a directory or s3://bucket/prefix")
    return text


def open_store(spec: str) -> Store:
    text = check_spec(spec)
    return S3Store(text) if text.startswith("s3:") else DirStore(Path(text).expanduser())


def expand_stores(specs: list[str]) -> list[Store]:
    """Command-line STOREs: directories, data files, globs of either, and S3 prefixes."""
    stores: list[Store] = []
    for spec in specs:
        if not spec.startswith("s3://") and _GLOB.search(spec):
            matches = sorted(glob.glob(os.path.expanduser(spec)))
            if not matches:
                raise StoreError(f"no store matches {spec!r}")
            stores.extend(DirStore(Path(m)) for m in matches)
        else:
            stores.append(open_store(spec))
    return stores


def fetch_all(
    store: Store, shards: list[Shard], scratch: Path, max_bytes: int = MAX_SHARD_BYTES
) -> Iterator[tuple[Shard, Path | StoreError]]:
    """Each shard with its local copy (or why it could not be fetched: one bigger than
    ``max_bytes`` is not), in order; S3 objects are downloaded eight at a time."""
    if isinstance(store, DirStore):
        for shard in shards:
            try:
                yield shard, store.fetch(shard, scratch, max_bytes)
            except StoreError as exc:
                yield shard, exc
        return

    def one(item: tuple[int, Shard]) -> Path | StoreError:
        index, shard = item
        slot = scratch / str(index)
        try:
            slot.mkdir()
            return store.fetch(shard, slot, max_bytes)
        except StoreError as exc:
            return exc
        except OSError as exc:  # the scratch directory (a full TMPDIR)
            return StoreError(f"cannot download {shard.where} into {scratch}: {exc.strerror}")
        except Exception as exc:  # whatever else one download meets is that shard's error
            return StoreError(f"cannot download {shard.where}: {type(exc).__name__}: {exc}")

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        yield from zip(shards, pool.map(one, enumerate(shards)), strict=True)


def write_shard(data_file: Path, root: Path, store: Store) -> str:
    """Copy ``data_file`` into the store as a new shard, paths under ``root`` made relative."""
    import sqlite3

    from coverage import CoverageData
    from coverage.exceptions import CoverageException

    from pytest_distcov.data.readers import read_data_file

    source = read_data_file(data_file)
    try:
        with tempfile.TemporaryDirectory(prefix="distcov-shard-") as tmp:
            local = Path(tmp) / "shard"
            shard = CoverageData(basename=str(local))
            try:
                shard.update(source, map_path=relative_mapper(root))
                shard.write()
            except (CoverageException, sqlite3.Error, OSError) as exc:  # a full temp dir
                raise StoreError(f"cannot make a shard for the store {store.url}: {exc}") from None
            finally:
                shard.close(force=True)
            return store.put(local, shard_name())
    except OSError as exc:  # making or removing the temporary directory
        raise StoreError(f"cannot make a shard for the store {store.url}: {exc}") from None
    finally:
        source.close(force=True)

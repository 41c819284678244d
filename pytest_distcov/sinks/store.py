"""Shared stores of shard data files: a directory (local or mounted) or an S3 prefix.

One CI machine's run writes one *shard*: a coverage data file whose paths under the project
root are relative, so that a combiner in any checkout gets its own paths back. A shard's name is
unique (machine, process, random) and starts with :data:`SHARD_PREFIX`, never with
``.coverage.``, so that coverage's own ``combine`` (which every coverage report command runs
since 7.14) never eats a store's files. Writing is atomic: a directory store writes a hidden
temporary name and renames it; an S3 object appears whole or not at all.

Reading never changes a store: files are opened read-only or downloaded.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from pytest_distcov.errors import StoreError

__all__ = [
    "SHARD_PREFIX",
    "DirStore",
    "S3Store",
    "Shard",
    "Store",
    "check_spec",
    "open_store",
    "relative_mapper",
    "s3_environment_problem",
    "shard_name",
    "write_shard",
]

SHARD_PREFIX = ".distcov."
_PARTIAL = ".distcov-partial-"
_GLOB = re.compile(r"[*?\[]")


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


def absolute_mapper(root: Path) -> Callable[[str], str]:
    """The combiner's side: a relative (shard) path becomes a path under ``root``."""
    base = root.resolve()

    def to_local(path: str) -> str:
        return path if os.path.isabs(path) else str(base.joinpath(*path.split("/")))

    return to_local


class Shard(NamedTuple):
    """One data file in a store: ``where`` names it for the user, ``ref`` for the store."""

    where: str
    ref: str


class Store(Protocol):
    url: str

    def put(self, local: Path, name: str) -> str: ...
    def shards(self) -> list[Shard]: ...
    def fetch(self, shard: Shard, scratch: Path) -> Path: ...


class DirStore:
    """A directory: local, or a shared mount (NFS, SMB) that several machines write to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = str(path)

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
        if self.path.is_file():
            return [Shard(str(self.path), str(self.path))]
        if not self.path.is_dir():
            if self.path.exists():
                raise StoreError(f"store {self.url} is neither a directory nor a data file")
            raise StoreError(f"store {self.url} does not exist (no such directory)")
        try:
            with os.scandir(self.path) as entries:
                names = sorted(
                    e.name for e in entries if e.name.startswith(SHARD_PREFIX) and e.is_file()
                )
        except OSError as exc:
            raise StoreError(f"cannot list the store {self.url}: {exc}") from None
        return [Shard(str(self.path / n), str(self.path / n)) for n in names]

    def fetch(self, shard: Shard, scratch: Path) -> Path:
        return Path(shard.ref)  # read in place, read-only


class S3Store:
    """``s3://bucket/prefix``, through boto3 and the standard AWS environment."""

    def __init__(self, url: str) -> None:
        self.url = check_spec(url)
        self.bucket, _, prefix = self.url.removeprefix("s3://").partition("/")
        self.prefix = prefix.strip("/")
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
        keys: list[str] = []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                for item in page.get("Contents", []):
                    key = item["Key"]
                    if (
                        key.rsplit("/", 1)[-1].startswith(SHARD_PREFIX)
                        and "/" not in key[len(prefix) :]
                    ):
                        keys.append(key)
        except (BotoCoreError, ClientError) as exc:
            raise self._error("list the store", exc) from None
        if not keys and not self._bucket_exists():
            raise StoreError(f"store {self.url} does not exist (no bucket {self.bucket})")
        return [Shard(f"s3://{self.bucket}/{k}", k) for k in sorted(keys)]

    def _bucket_exists(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError):
            return False
        return True

    def fetch(self, shard: Shard, scratch: Path) -> Path:
        from botocore.exceptions import BotoCoreError, ClientError

        local = scratch / Path(shard.ref).name
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=shard.ref)
            with open(local, "wb") as out:
                shutil.copyfileobj(answer["Body"], out)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise self._error(f"download {shard.where} from", exc) from None
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
    store: Store, shards: list[Shard], scratch: Path
) -> Iterator[tuple[Shard, Path | StoreError]]:
    """Each shard with its local copy (or why it could not be fetched), in order; S3 objects
    are downloaded eight at a time."""
    if isinstance(store, DirStore):
        for shard in shards:
            yield shard, Path(shard.ref)
        return

    def one(item: tuple[int, Shard]) -> Path | StoreError:
        index, shard = item
        slot = scratch / str(index)
        try:
            slot.mkdir()
            return store.fetch(shard, slot)
        except StoreError as exc:
            return exc
        except OSError as exc:  # the scratch directory (a full TMPDIR)
            return StoreError(f"cannot download {shard.where} into {scratch}: {exc.strerror}")

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

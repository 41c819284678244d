"""Coveralls: CI detection, the job payload, and the upload with requests (no pytest here).

* :func:`detect_ci` maps each CI's own environment variables to Coveralls' service fields, from
  one table (:data:`CI_SERVICES`); ``COVERALLS_*`` variables override what it finds.
* :func:`build_payload` makes the documented job JSON from the combined data, through
  coverage.py's public API only (``analysis2`` for lines, the JSON report for branches).
* :class:`Uploader` posts it (multipart ``json_file``) and closes parallel builds (``/webhook``),
  with explicit timeouts and bounded retries with backoff on connection errors, 429 and 5xx.
* The repo token is a :class:`Secret`: read from the environment only, shown as ``[secure]``
  everywhere (repr, str, ``--output`` files, error messages), and scrubbed from any text that
  leaves this module. It travels only to the configured host, only over https unless the user
  opts in (:data:`ALLOW_HTTP_ENV`), and never on to wherever a redirect points.
* Credentials that other tools put in URLs (a CI's clone URL ``https://user:TOKEN@host/...``)
  are dropped from every URL that goes into a job, an ``--output`` file or a message: see
  :func:`without_userinfo`. A ``COVERALLS_HOST`` with a user and password (a self-hosted
  Coveralls behind a proxy) has them taken out of the URL at once: they travel as HTTP basic
  auth to that host only, held as :class:`Secret` objects, and no URL that a request or a
  message holds has them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests
from coverage import Coverage
from coverage.exceptions import CoverageException

from pytest_distcov.errors import DistCovError, printable

__all__ = [
    "ALLOW_HTTP_ENV",
    "CI_SERVICES",
    "CoverallsError",
    "InsecureHostError",
    "Secret",
    "Uploader",
    "build_payload",
    "detect_ci",
    "find_token",
    "finish",
    "host_from_env",
    "split_userinfo",
    "submit",
    "without_userinfo",
    "write_private",
]

DEFAULT_HOST = "https://coveralls.io"
#: (connect, read) seconds: Coveralls answers a job in well under a minute; a stuck connection
#: must not hold a CI job for ever (the reference client sets no timeout at all).
TIMEOUT = (10.0, 60.0)
#: Environment variable for the read timeout in seconds (e.g. a slow self-hosted Coveralls).
TIMEOUT_ENV = "DISTCOV_COVERALLS_TIMEOUT"
#: Attempts per request and the first pause between them (doubled each time): enough to ride
#: out a deploy or a brief outage at Coveralls, short enough for a CI job.
ATTEMPTS = 4
BACKOFF = 2.0
SECURE = "[secure]"
#: Environment variable that lets the token travel over plain http (a self-hosted Coveralls on a
#: trusted network, a local test server). Named like :data:`TIMEOUT_ENV`; nothing else turns the
#: refusal off, so a mistyped ``http://`` in CI never sends the token in clear by accident.
ALLOW_HTTP_ENV = "DISTCOV_COVERALLS_ALLOW_HTTP"
#: Mode of ``--output`` files: the payload names the repository, its remotes and its people; it
#: is nobody else's to read on a shared machine (the token in it is ``[secure]`` anyway).
OUTPUT_MODE = 0o600


class CoverallsError(DistCovError):
    """An upload or finish that did not succeed (the message never holds the token)."""


class InsecureHostError(CoverallsError):
    """``COVERALLS_HOST``/``COVERALLS_ENDPOINT`` is plain http and :data:`ALLOW_HTTP_ENV` is not
    set: the token would cross the network in clear, so nothing is sent."""


class Secret:
    """A token that never shows itself."""

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def scrub(self, text: str) -> str:
        return text.replace(self._value, SECURE) if self._value else text

    def __repr__(self) -> str:
        return SECURE

    __str__ = __repr__


# -- CI detection -------------------------------------------------------------------------------


def _pr_number(value: str | None) -> str | None:
    """The number at the end of a PR reference (``refs/pull/12/merge``, a URL, ``12``)."""
    if not value or value == "false":
        return None
    found = re.findall(r"\d+", value)
    return found[-1] if found else None


def _github(env: Mapping[str, str]) -> dict[str, str | None]:
    ref = env.get("GITHUB_REF", "")
    pr = _pr_number(ref) if ref.startswith("refs/pull/") else None
    branch = env.get("GITHUB_HEAD_REF") or ref.removeprefix("refs/heads/").removeprefix(
        "refs/tags/"
    )
    return {
        "service_name": "github",
        "service_number": env.get("GITHUB_RUN_ID"),
        "service_job_id": env.get("GITHUB_RUN_ID"),
        "service_pull_request": pr,
        "service_branch": branch or None,
        "commit_sha": env.get("GITHUB_SHA"),
    }


Detector = Callable[[Mapping[str, str]], dict[str, str | None]]


def _fields(
    name: str, **keys: str | tuple[str, ...]
) -> Callable[[Mapping[str, str]], dict[str, str | None]]:
    """A detector reading each field from the first set variable among ``keys[field]``."""

    def read(env: Mapping[str, str]) -> dict[str, str | None]:
        out: dict[str, str | None] = {"service_name": name}
        for fld, names in keys.items():
            for var in (names,) if isinstance(names, str) else names:
                if env.get(var):
                    out[fld] = env[var]
                    break
            else:
                out[fld] = None
        if out.get("service_pull_request"):
            out["service_pull_request"] = _pr_number(out["service_pull_request"])
        return out

    return read


#: (environment variable that identifies the CI, detector). First match wins; the generic
#: ``CI_NAME`` set comes last. Variable names are each CI's documented ones.
CI_SERVICES: tuple[tuple[str, Detector], ...] = (
    ("GITHUB_ACTIONS", _github),
    (
        "GITLAB_CI",
        _fields(
            "gitlab-ci",
            service_number="CI_PIPELINE_ID",
            service_job_id="CI_JOB_ID",
            service_pull_request="CI_MERGE_REQUEST_IID",
            service_branch=("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", "CI_COMMIT_REF_NAME"),
            commit_sha="CI_COMMIT_SHA",
        ),
    ),
    (
        "BITBUCKET_BUILD_NUMBER",
        _fields(
            "bitbucket",
            service_number="BITBUCKET_BUILD_NUMBER",
            service_job_id=("BITBUCKET_STEP_UUID", "BITBUCKET_PARALLEL_STEP"),
            service_pull_request="BITBUCKET_PR_ID",
            service_branch=("BITBUCKET_BRANCH", "BITBUCKET_TAG"),
            commit_sha="BITBUCKET_COMMIT",
        ),
    ),
    (
        "JENKINS_HOME",
        _fields(
            "jenkins",
            service_number="BUILD_NUMBER",
            service_job_id="BUILD_ID",
            service_pull_request=("CHANGE_ID", "ghprbPullId"),
            service_branch=("CHANGE_BRANCH", "BRANCH_NAME", "GIT_BRANCH"),
            commit_sha="GIT_COMMIT",
        ),
    ),
    (
        "CIRCLECI",
        _fields(
            "circleci",
            service_number=("CIRCLE_WORKFLOW_ID", "CIRCLE_BUILD_NUM"),
            service_job_id="CIRCLE_NODE_INDEX",
            service_pull_request=("CIRCLE_PR_NUMBER", "CIRCLE_PULL_REQUEST"),
            service_branch="CIRCLE_BRANCH",
            commit_sha="CIRCLE_SHA1",
        ),
    ),
    (
        "BUILDKITE",
        _fields(
            "buildkite",
            service_number="BUILDKITE_BUILD_NUMBER",
            service_job_id="BUILDKITE_JOB_ID",
            service_pull_request="BUILDKITE_PULL_REQUEST",
            service_branch="BUILDKITE_BRANCH",
            commit_sha="BUILDKITE_COMMIT",
        ),
    ),
    (
        "TRAVIS",
        _fields(
            "travis-ci",
            service_number="TRAVIS_BUILD_NUMBER",
            service_job_id="TRAVIS_JOB_ID",
            service_pull_request="TRAVIS_PULL_REQUEST",
            service_branch=("TRAVIS_PULL_REQUEST_BRANCH", "TRAVIS_BRANCH"),
            commit_sha="TRAVIS_COMMIT",
        ),
    ),
    (
        "APPVEYOR",
        _fields(
            "appveyor",
            service_number="APPVEYOR_BUILD_NUMBER",
            service_job_id="APPVEYOR_JOB_ID",
            service_pull_request="APPVEYOR_PULL_REQUEST_NUMBER",
            service_branch=("APPVEYOR_PULL_REQUEST_HEAD_REPO_BRANCH", "APPVEYOR_REPO_BRANCH"),
            commit_sha="APPVEYOR_REPO_COMMIT",
        ),
    ),
    (
        "TF_BUILD",
        _fields(
            "azure-pipelines",
            service_number="BUILD_BUILDID",
            service_job_id="SYSTEM_JOBID",
            service_pull_request=(
                "SYSTEM_PULLREQUEST_PULLREQUESTNUMBER",
                "SYSTEM_PULLREQUEST_PULLREQUESTID",
            ),
            service_branch=("SYSTEM_PULLREQUEST_SOURCEBRANCH", "BUILD_SOURCEBRANCHNAME"),
            commit_sha="BUILD_SOURCEVERSION",
        ),
    ),
    (
        "SEMAPHORE",
        _fields(
            "semaphore-ci",
            service_number=("SEMAPHORE_WORKFLOW_ID", "SEMAPHORE_BUILD_NUMBER"),
            service_job_id=("SEMAPHORE_JOB_ID", "SEMAPHORE_JOB_UUID"),
            service_pull_request="SEMAPHORE_GIT_PR_NUMBER",
            service_branch=("SEMAPHORE_GIT_PR_BRANCH", "SEMAPHORE_GIT_BRANCH"),
            commit_sha="SEMAPHORE_GIT_SHA",
        ),
    ),
    (
        "CI_NAME",
        _fields(
            "",
            service_number="CI_BUILD_NUMBER",
            service_job_id="CI_JOB_ID",
            service_pull_request="CI_PULL_REQUEST",
            service_branch="CI_BRANCH",
            commit_sha="CI_COMMIT_SHA",
        ),
    ),
)

#: COVERALLS_* variables and the payload field each one sets (they win over detection).
OVERRIDES = {
    "COVERALLS_SERVICE_NAME": "service_name",
    "COVERALLS_SERVICE_NUMBER": "service_number",
    "COVERALLS_SERVICE_JOB_ID": "service_job_id",
    "COVERALLS_SERVICE_JOB_NUMBER": "service_job_number",
    "COVERALLS_FLAG_NAME": "flag_name",
}


def detect_ci(env: Mapping[str, str]) -> dict[str, Any]:
    """Service fields for the CI this runs on ({} outside CI), then ``COVERALLS_*`` overrides."""
    found: dict[str, Any] = {}
    for marker, detector in CI_SERVICES:
        if env.get(marker):
            found = {k: v for k, v in detector(env).items() if v}
            if marker == "CI_NAME":
                found["service_name"] = env["CI_NAME"]
            break
    for var, fld in OVERRIDES.items():
        if env.get(var):
            found[fld] = env[var]
    if env.get("COVERALLS_PARALLEL", "").lower() == "true":
        found["parallel"] = True
    return found


def find_token(env: Mapping[str, str]) -> Secret | None:
    """The repo token, from the environment only (never from a file)."""
    if env.get("COVERALLS_REPO_TOKEN"):
        return Secret(env["COVERALLS_REPO_TOKEN"])
    if env.get("GITHUB_ACTIONS") and env.get("GITHUB_TOKEN"):
        return Secret(env["GITHUB_TOKEN"])
    return None


# -- the payload --------------------------------------------------------------------------------


def _git(root: Path, *args: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


#: ``scheme://authority rest``: the authority ends at the first ``/``, ``?`` or ``#`` (RFC 3986).
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<authority>[^/?#]*)(?P<rest>.*)", re.S)


def without_userinfo(url: str) -> str:
    """``url`` without the user and password that clone URLs and hosts may carry.

    * URL-style (``https://``, ``ssh://``, ...): the whole userinfo goes, user included, up to
      the authority's last ``@``. GitLab CI clones from ``https://gitlab-ci-token:TOKEN@host/``,
      and GitHub takes a token as the user alone (``https://TOKEN@github.com/``), so no part of
      it is safe to keep; Coveralls needs only the host and path to link the repository.
    * scp-style ``user@host:path`` is kept as it is: ssh never takes a password in the address,
      so its user (``git@``) is a login name, not a secret. A "user" holding a ``:`` there
      (``name:password@host:path``, which git does not even read as a user) is dropped too.
    * Local paths (``/srv/git/x.git``, ``../x``) are kept.
    """
    found = _URL.fullmatch(url)
    if found:
        return found["scheme"] + found["authority"].rpartition("@")[2] + found["rest"]
    user, at, rest = url.partition("@")
    if at and ":" in user and "/" not in user:
        return rest
    return url


def split_userinfo(url: str) -> tuple[str, tuple[Secret, Secret] | None]:
    """``url`` without its user and password (see :func:`without_userinfo`), and them,
    percent-decoded as HTTP basic auth takes them (None if it has none)."""
    from urllib.parse import unquote

    found = _URL.fullmatch(url)
    if not found or "@" not in found["authority"]:
        return url, None
    userinfo = found["authority"].rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    return without_userinfo(url), (Secret(unquote(user)), Secret(unquote(password)))


def git_info(root: Path, ci: Mapping[str, Any]) -> dict[str, Any]:
    """``git`` of the payload: the head commit, the branch (the CI's own first) and remotes.

    Only the remotes hold URLs, and they lose their credentials (:func:`without_userinfo`) before
    they are compared, so a fetch and a push URL that differ only in a token are one remote. The
    head (names, emails, the subject, the commit id) and the branch are what every clone shows,
    and a git branch name cannot hold a URL's ``:``.
    """
    keys = ("id", "author_name", "author_email", "committer_name", "committer_email", "message")
    head = _git(root, "log", "-1", "--pretty=format:%H%n%aN%n%ae%n%cN%n%ce%n%s").split("\n")
    if len(head) != len(keys):
        head = [str(ci.get("commit_sha") or ""), "", "", "", "", ""]
    branch = ci.get("service_branch") or _git(root, "rev-parse", "--abbrev-ref", "HEAD")
    remotes = []
    for line in _git(root, "remote", "-v").splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        remote = {"name": parts[0], "url": without_userinfo(parts[1])}
        if remote not in remotes:
            remotes.append(remote)
    return {"head": dict(zip(keys, head, strict=True)), "branch": branch, "remotes": remotes}


def repo_root(start: Path) -> Path:
    top = _git(start, "rev-parse", "--show-toplevel")
    return Path(top) if top else start


def count_lines(content: bytes) -> int:
    """Physical lines as Python's tokenizer (and so coverage's reporters) count them.

    ``bytes.splitlines`` ends lines only at LF, CRLF and CR, as the tokenizer does; decoding
    first and using ``str.splitlines`` would also split at form feeds and other separators and
    make a longer ``coverage`` array than coverage.py's.
    """
    return len(content.splitlines())


def _branch_groups(report: Mapping[str, Any]) -> list[int]:
    groups: list[int] = []
    for l1, l2 in report.get("executed_branches", []):
        groups.extend((l1, 0, abs(l2), 1))
    for l1, l2 in report.get("missing_branches", []):
        groups.extend((l1, 0, abs(l2), 0))
    return groups


def _json_report(cov: Coverage) -> dict[str, Any]:
    try:
        with tempfile.TemporaryDirectory(prefix="distcov-coveralls-") as tmp:
            out = os.path.join(tmp, "coverage.json")
            try:
                cov.json_report(outfile=out)
            except CoverageException as exc:
                raise CoverallsError(
                    f"no upload: coverage could not report the data ({exc})"
                ) from exc
            files: dict[str, Any] = json.loads(Path(out).read_text())["files"]
    except OSError as exc:  # the temporary directory: full, or not writable
        raise CoverallsError(
            f"no upload: cannot write coverage's JSON report to a temporary directory ({exc});"
            " free space there or set TMPDIR"
        ) from None
    return files


def source_files(cov: Coverage, root: Path) -> list[dict[str, Any]]:
    """``source_files`` entries for every file coverage's own reports show.

    Everything comes from coverage's JSON report (public API; it applies ``[report]`` include,
    omit and exclusions): statements are its executed plus missing lines.
    """
    entries = []
    for reported, info in sorted(_json_report(cov).items()):
        path = Path(reported)
        if not path.is_absolute():
            path = Path.cwd() / path
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise CoverallsError(
                f"no upload: cannot read {path} for its line count and digest"
                f" ({exc.strerror or exc}); Coveralls needs each reported file on disk: leave it"
                " out of the reports ([report] omit) or make it readable"
            ) from None
        missing = set(info["missing_lines"])
        executed = set(info["executed_lines"])
        hits: list[int | None] = [
            0 if n in missing else (1 if n in executed else None)
            for n in range(1, count_lines(content) + 1)
        ]
        try:
            name = path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            name = path.as_posix()
        entry: dict[str, Any] = {
            "name": name,
            "source_digest": hashlib.md5(content, usedforsecurity=False).hexdigest(),
            "coverage": hits,
        }
        branches = _branch_groups(info)
        if branches:
            entry["branches"] = branches
        entries.append(entry)
    return entries


def build_payload(
    cov: Coverage,
    *,
    env: Mapping[str, str],
    root: Path,
    token: Secret | None,
    parallel: bool = False,
    flag_name: str | None = None,
) -> dict[str, Any]:
    """The job JSON. The token is included as the Secret object: see :func:`to_json`."""
    payload: dict[str, Any] = detect_ci(env)
    payload.setdefault("service_name", "pytest-distcov")
    if parallel:
        payload["parallel"] = True
    if flag_name:
        payload["flag_name"] = flag_name
    if token is not None:
        payload["repo_token"] = token
    payload["run_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    payload["git"] = git_info(root, payload)
    payload["source_files"] = source_files(cov, root)
    return payload


def to_json(payload: Mapping[str, Any], *, reveal: bool) -> str:
    """JSON text of the payload: the token in clear only for the request itself."""

    def encode(obj: object) -> str:
        if isinstance(obj, Secret):
            return obj.reveal() if reveal else SECURE
        raise TypeError(type(obj).__name__)

    return json.dumps(payload, default=encode)


# -- HTTP ---------------------------------------------------------------------------------------


def _is_http_url(text: str) -> bool:
    """An http(s) URL with a host and a valid port (a request to anything else cannot succeed,
    so it is refused at once instead of being retried)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: where a redirect points, without its userinfo, path
    or query (either may hold a token of the server's making)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "an address that is not a URL"
    if not parts.scheme or not parts.hostname:
        return "an address that is not a URL"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def _allow_http(env: Mapping[str, str]) -> bool:
    value = env.get(ALLOW_HTTP_ENV, "").strip()
    if value.lower() in ("", "0", "false", "no"):
        return False
    if value.lower() in ("1", "true", "yes"):
        return True
    raise CoverallsError(
        f"{ALLOW_HTTP_ENV} must be 1 (send the token over plain http) or 0, not {value!r}"
    )


def host_from_env(env: Mapping[str, str]) -> str:
    """The Coveralls host (``COVERALLS_HOST``, else ``COVERALLS_ENDPOINT``, else coveralls.io).

    A plain ``http://`` host is an :class:`InsecureHostError` unless :data:`ALLOW_HTTP_ENV` is
    set: the job and the webhook carry the repo token in their bodies.
    """
    for name in ("COVERALLS_HOST", "COVERALLS_ENDPOINT"):
        host = env.get(name)
        if host:
            break
    else:
        return DEFAULT_HOST
    from urllib.parse import urlsplit

    shown = without_userinfo(host)
    # urlsplit and requests strip leading whitespace and control characters: " http://..."
    # must not pass for something other than plain http, so such a host is refused whole.
    if not _is_http_url(host) or any(c.isspace() or not c.isprintable() for c in host):
        raise CoverallsError(f"{name} must be an http(s) URL such as {DEFAULT_HOST}, not {shown!r}")
    if urlsplit(host).scheme == "http" and not _allow_http(env):
        raise InsecureHostError(
            f"{name} is {shown.rstrip('/')}, plain http, which would send the repo token"
            f" unencrypted; nothing was sent: use https, or set {ALLOW_HTTP_ENV}=1 to allow it"
        )
    return host.rstrip("/")


@dataclass
class Uploader:
    """Posts jobs and finishes parallel builds, with retries; never shows the token.

    Redirects are never followed: both requests carry the token in their body, and ``requests``
    resends a body on a 307 or 308 to wherever ``Location`` points, another host included (it
    drops only an ``Authorization`` header there). On a 301 or 302 it would turn the POST into
    a GET without the job and could report the redirected page's 200 as an accepted job. The
    API does not redirect; a 3xx is a moved or misconfigured host, reported with where it
    points, and not retried.
    """

    token: Secret
    host: str = DEFAULT_HOST
    attempts: int = ATTEMPTS
    backoff: float = BACKOFF
    timeout: tuple[float, float] = TIMEOUT
    log: Callable[[str], None] = field(default=lambda _line: None)

    @classmethod
    def from_env(cls, token: Secret, env: Mapping[str, str], **kw: Any) -> Uploader:
        host = host_from_env(env)
        wait = env.get(TIMEOUT_ENV)
        if wait:
            try:
                seconds = float(wait)
            except ValueError:
                seconds = -1.0
            if not 0 < seconds < 3600:
                raise CoverallsError(
                    f"{TIMEOUT_ENV} must be seconds between 0 and 3600, not {wait!r}"
                )
            kw.setdefault("timeout", (min(TIMEOUT[0], seconds), seconds))
        return cls(token, host, **kw)

    #: HTTP basic auth (user, password) taken from the host's URL, never kept in it: a URL
    #: ends up in exceptions, logs and reprs, where a password must not.
    auth: tuple[Secret, Secret] | None = None

    def __post_init__(self) -> None:
        self.host, found = split_userinfo(self.host)
        if found is not None:
            self.auth = found

    @property
    def shown(self) -> str:
        """The host as messages show it (it holds no user and password: see :attr:`auth`)."""
        return self.host

    def scrub(self, text: str) -> str:
        """``text`` (from an exception or the server) without the token or the password; the
        user too when there is no password (a token given as the user, GitHub-style)."""
        text = self.token.scrub(text)
        if self.auth is not None:
            user, password = self.auth
            text = password.scrub(text) if password.reveal() else user.scrub(text)
        return text

    def _post(self, url: str, **kw: Any) -> requests.Response:
        """One POST to the host: never redirected, with the basic auth if there is one."""
        auth = None if self.auth is None else (self.auth[0].reveal(), self.auth[1].reveal())
        return requests.post(url, timeout=self.timeout, allow_redirects=False, auth=auth, **kw)

    def _request(self, what: str, send: Callable[[], requests.Response]) -> requests.Response:
        pause = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                response = send()
            except requests.RequestException as exc:
                problem = f"{type(exc).__name__}: {self.scrub(str(exc))}"
            else:
                if 300 <= response.status_code < 400:
                    raise CoverallsError(self._redirected(what, response))
                if response.status_code != 429 and response.status_code < 500:
                    return response
                problem = f"HTTP {response.status_code}"
            if attempt == self.attempts:
                raise CoverallsError(
                    f"{what} failed after {self.attempts} attempts ({problem}); the coverage"
                    " data is unchanged: upload it later with `pytest-distcov coveralls`"
                )
            self.log(f"{what}: {problem}; retrying in {pause:.0f} s")
            time.sleep(pause)
            pause *= 2
        raise AssertionError("unreachable")

    def _redirected(self, what: str, response: requests.Response) -> str:
        from urllib.parse import urljoin

        location = response.headers.get("Location")
        where = _origin(urljoin(response.url, location)) if location else "nowhere (no Location)"
        return self.scrub(
            f"{what}: the server answered HTTP {response.status_code}, a redirect to {where},"
            " which is not followed (the request carries the repo token; nothing was resent);"
            " if that host is Coveralls, set COVERALLS_HOST to it"
        )

    def _message(self, response: requests.Response) -> str:
        """What the server said, shown: its first 300 characters, without secrets, escaped
        as :func:`printable` escapes (it is a stranger's text bound for a terminal)."""
        try:
            body = response.json()
        except ValueError:
            text = response.text.strip().splitlines()[0] if response.text.strip() else ""
        else:
            said = body.get("message") or body.get("error") if isinstance(body, dict) else None
            text = str(said or body)
        return printable(self.scrub(text)[:300])  # scrubbed whole: a cut token is still a token

    def upload(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        body = gzip.compress(to_json(payload, reveal=True).encode())
        url = f"{self.host}/api/v1/jobs"
        response = self._request(
            f"upload to {self.shown}",
            lambda: self._post(url, files={"json_file": ("json_file", body, "application/gzip")}),
        )
        if response.status_code == 422:
            raise CoverallsError(
                f"Coveralls refused the job (422): {self._message(response)}; check"
                " COVERALLS_REPO_TOKEN (or GITHUB_TOKEN on GitHub Actions) and the service name"
            )
        if response.status_code >= 400:
            raise CoverallsError(
                f"Coveralls answered HTTP {response.status_code}: {self._message(response)}"
            )
        return self._json(response)

    def finish(self, build_num: str) -> dict[str, Any]:
        data = {
            "repo_token": self.token.reveal(),
            "payload": {"build_num": build_num, "status": "done"},
        }
        response = self._request(
            f"finishing the parallel build at {self.shown}",
            lambda: self._post(f"{self.host}/webhook", json=data),
        )
        answer = self._json(response) if response.status_code < 400 else {}
        if response.status_code >= 400 or answer.get("error"):
            raise CoverallsError(
                f"Coveralls did not close build {build_num}: {self._message(response)}"
            )
        return answer

    def _json(self, response: requests.Response) -> dict[str, Any]:
        try:
            answer = response.json()
        except ValueError:
            return {}
        return answer if isinstance(answer, dict) else {}


# -- the two things users do --------------------------------------------------------------------

_NO_TOKEN = (
    "no Coveralls token: set COVERALLS_REPO_TOKEN (or GITHUB_TOKEN on GitHub Actions) in the"
    " environment; nothing was sent"
)


def submit(
    cov: Coverage,
    *,
    env: Mapping[str, str],
    root: Path,
    parallel: bool = False,
    flag_name: str | None = None,
    output: Path | None = None,
    log: Callable[[str], None] = lambda _line: None,
) -> str:
    """Upload one job (or, with ``output``, only write its payload); return a line to show.

    The host is checked before anything else is done, so a refused one costs no git calls and
    no report.
    """
    token = find_token(env)
    uploader = None
    if output is None:
        if token is None:
            raise CoverallsError(_NO_TOKEN)
        uploader = Uploader.from_env(token, env, log=log)
    payload = build_payload(
        cov, env=env, root=root, token=token, parallel=parallel, flag_name=flag_name
    )
    if uploader is None:
        assert output is not None
        write_private(output, to_json(payload, reveal=False))
        return f"wrote the Coveralls payload to {output} (nothing was sent)"
    assert token is not None
    answer = uploader.upload(payload)
    # scrubbed whole (the token, and a basic-auth password), then cut
    message = printable(uploader.scrub(str(answer.get("message") or "job accepted"))[:300])
    url = printable(uploader.scrub(str(answer.get("url") or ""))[:300])
    return f"Coveralls: {message}" + (f" {url}" if url else "")


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode :data:`OUTPUT_MODE`, from its first byte.

    A new file is created 0600 (``os.open``'s mode; a umask can only narrow it, and ``fchmod``
    then sets it exactly); an existing file is made 0600 before it is truncated and written, so
    the payload is never readable by others, not even for a moment. A file that this user
    cannot make private (another user's) is left as it was. A pipe or device (``/dev/stdout``)
    is only written to: its mode is not a file's to keep private.
    """
    fail = f"cannot write the Coveralls payload to {path}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, OUTPUT_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                if hasattr(os, "fchmod"):  # not on Windows before 3.13 (no such modes there)
                    try:
                        os.fchmod(fd, OUTPUT_MODE)
                    except OSError as exc:
                        raise CoverallsError(
                            f"{fail}: cannot make it private (mode 0600): {exc.strerror or exc};"
                            " name a new file or one of your own (nothing was sent)"
                        ) from None
                out.truncate()
            out.write(text)
    except OSError as exc:
        raise CoverallsError(f"{fail}: {exc.strerror or exc} (nothing was sent)") from None


def finish(env: Mapping[str, str], *, log: Callable[[str], None] = lambda _line: None) -> str:
    """Close a parallel build (after every job uploaded with parallel: true)."""
    token = find_token(env)
    if token is None:
        raise CoverallsError(_NO_TOKEN)
    build = detect_ci(env).get("service_number")
    if not build:
        raise CoverallsError(
            "no build number to close: not on a known CI; set COVERALLS_SERVICE_NUMBER to the"
            " number every parallel job used"
        )
    uploader = Uploader.from_env(token, env, log=log)
    answer = uploader.finish(str(build))
    jobs = printable(uploader.scrub(str(answer.get("jobs")))[:20]) if "jobs" in answer else ""
    return f"Coveralls: parallel build {build} closed" + (f" ({jobs} jobs)" if jobs else "")

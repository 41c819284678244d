"""Coveralls pieces on their own: the CI table, the token, credentials in URLs, the HTTP
policy and the ``--output`` file's mode.

The CI cases use each service's documented variable names and realistic values. The HTTP
cases talk to the real server of tests/fake_coveralls.py on 127.0.0.1, with short pauses.
"""

from __future__ import annotations

import base64
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_distcov.sinks import coveralls
from pytest_distcov.sinks.coveralls import (
    CoverallsError,
    InsecureHostError,
    Secret,
    Uploader,
    detect_ci,
    find_token,
    without_userinfo,
)

from .fake_coveralls import ERROR_PAGE, Answer, FakeCoveralls

SHA = "9fceb02d0ae598e95dc970b74767f19372d61af8"

CASES = {
    "github-push": (
        {
            "GITHUB_ACTIONS": "true",
            "GITHUB_RUN_ID": "1658821493",
            "GITHUB_REF": "refs/heads/main",
            "GITHUB_HEAD_REF": "",
            "GITHUB_SHA": SHA,
        },
        {
            "service_name": "github",
            "service_number": "1658821493",
            "service_job_id": "1658821493",
            "service_branch": "main",
            "commit_sha": SHA,
        },
    ),
    "github-pr": (
        {
            "GITHUB_ACTIONS": "true",
            "GITHUB_RUN_ID": "1658821494",
            "GITHUB_REF": "refs/pull/42/merge",
            "GITHUB_HEAD_REF": "fix/parser",
            "GITHUB_SHA": SHA,
        },
        {
            "service_name": "github",
            "service_number": "1658821494",
            "service_job_id": "1658821494",
            "service_pull_request": "42",
            "service_branch": "fix/parser",
            "commit_sha": SHA,
        },
    ),
    "gitlab-mr": (
        {
            "GITLAB_CI": "true",
            "CI": "true",
            "CI_PIPELINE_ID": "1049236",
            "CI_JOB_ID": "4501177",
            "CI_COMMIT_REF_NAME": "main",
            "CI_MERGE_REQUEST_IID": "31",
            "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "feature/x",
            "CI_COMMIT_SHA": SHA,
        },
        {
            "service_name": "gitlab-ci",
            "service_number": "1049236",
            "service_job_id": "4501177",
            "service_pull_request": "31",
            "service_branch": "feature/x",
            "commit_sha": SHA,
        },
    ),
    "bitbucket-pr": (
        {
            "CI": "true",
            "BITBUCKET_BUILD_NUMBER": "311",
            "BITBUCKET_STEP_UUID": "{8a1d7c58-2b5f-4f3e-9f3a-2f4d7b0a2c11}",
            "BITBUCKET_PARALLEL_STEP": "1",
            "BITBUCKET_PR_ID": "8",
            "BITBUCKET_BRANCH": "topic",
            "BITBUCKET_COMMIT": SHA,
        },
        {
            "service_name": "bitbucket",
            "service_number": "311",
            "service_job_id": "{8a1d7c58-2b5f-4f3e-9f3a-2f4d7b0a2c11}",
            "service_pull_request": "8",
            "service_branch": "topic",
            "commit_sha": SHA,
        },
    ),
    "bitbucket-tag": (
        {
            "BITBUCKET_BUILD_NUMBER": "312",
            "BITBUCKET_PARALLEL_STEP": "0",
            "BITBUCKET_TAG": "v1.2.0",
            "BITBUCKET_COMMIT": SHA,
        },
        {
            "service_name": "bitbucket",
            "service_number": "312",
            "service_job_id": "0",
            "service_branch": "v1.2.0",
            "commit_sha": SHA,
        },
    ),
    "jenkins-multibranch-pr": (
        {
            "JENKINS_HOME": "/var/jenkins_home",
            "BUILD_NUMBER": "57",
            "BUILD_ID": "57",
            "CHANGE_ID": "118",
            "CHANGE_BRANCH": "feature/y",
            "BRANCH_NAME": "PR-118",
            "GIT_COMMIT": SHA,
        },
        {
            "service_name": "jenkins",
            "service_number": "57",
            "service_job_id": "57",
            "service_pull_request": "118",
            "service_branch": "feature/y",
            "commit_sha": SHA,
        },
    ),
    "jenkins-freestyle": (
        {"JENKINS_HOME": "/var/lib/jenkins", "BUILD_NUMBER": "9", "GIT_BRANCH": "origin/main"},
        {"service_name": "jenkins", "service_number": "9", "service_branch": "origin/main"},
    ),
    "circleci": (
        {
            "CIRCLECI": "true",
            "CIRCLE_WORKFLOW_ID": "6d2f4e4a-54c4-4f6b-9b57-0d5b0e1cbd3e",
            "CIRCLE_BUILD_NUM": "2210",
            "CIRCLE_NODE_INDEX": "2",
            "CIRCLE_PULL_REQUEST": "https://github.com/ada/shapes/pull/77",
            "CIRCLE_BRANCH": "feature/z",
            "CIRCLE_SHA1": SHA,
        },
        {
            "service_name": "circleci",
            "service_number": "6d2f4e4a-54c4-4f6b-9b57-0d5b0e1cbd3e",
            "service_job_id": "2",
            "service_pull_request": "77",
            "service_branch": "feature/z",
            "commit_sha": SHA,
        },
    ),
    "buildkite-no-pr": (
        {
            "BUILDKITE": "true",
            "BUILDKITE_BUILD_NUMBER": "1514",
            "BUILDKITE_JOB_ID": "e44f9784-e20e-4b93-a21d-f41fd5869db9",
            "BUILDKITE_PULL_REQUEST": "false",
            "BUILDKITE_BRANCH": "main",
            "BUILDKITE_COMMIT": SHA,
        },
        {
            "service_name": "buildkite",
            "service_number": "1514",
            "service_job_id": "e44f9784-e20e-4b93-a21d-f41fd5869db9",
            "service_branch": "main",
            "commit_sha": SHA,
        },
    ),
    "travis-pr": (
        {
            "TRAVIS": "true",
            "TRAVIS_BUILD_NUMBER": "405",
            "TRAVIS_JOB_ID": "771231",
            "TRAVIS_PULL_REQUEST": "12",
            "TRAVIS_PULL_REQUEST_BRANCH": "fix",
            "TRAVIS_BRANCH": "main",
            "TRAVIS_COMMIT": SHA,
        },
        {
            "service_name": "travis-ci",
            "service_number": "405",
            "service_job_id": "771231",
            "service_pull_request": "12",
            "service_branch": "fix",
            "commit_sha": SHA,
        },
    ),
    "appveyor": (
        {
            "APPVEYOR": "True",
            "APPVEYOR_BUILD_NUMBER": "88",
            "APPVEYOR_JOB_ID": "x1y2z3",
            "APPVEYOR_REPO_BRANCH": "main",
            "APPVEYOR_REPO_COMMIT": SHA,
        },
        {
            "service_name": "appveyor",
            "service_number": "88",
            "service_job_id": "x1y2z3",
            "service_branch": "main",
            "commit_sha": SHA,
        },
    ),
    "azure-pr": (
        {
            "TF_BUILD": "True",
            "BUILD_BUILDID": "2331",
            "SYSTEM_JOBID": "12f1170f-54f2-53f3-20dd-22fc7dff55f9",
            "SYSTEM_PULLREQUEST_PULLREQUESTNUMBER": "19",
            "SYSTEM_PULLREQUEST_SOURCEBRANCH": "refs/heads/feature",
            "BUILD_SOURCEBRANCHNAME": "merge",
            "BUILD_SOURCEVERSION": SHA,
        },
        {
            "service_name": "azure-pipelines",
            "service_number": "2331",
            "service_job_id": "12f1170f-54f2-53f3-20dd-22fc7dff55f9",
            "service_pull_request": "19",
            "service_branch": "refs/heads/feature",
            "commit_sha": SHA,
        },
    ),
    "semaphore": (
        {
            "SEMAPHORE": "true",
            "SEMAPHORE_WORKFLOW_ID": "65c9bb1c-aeb6-41f0-b8d9-6fa177241cdf",
            "SEMAPHORE_JOB_ID": "a26d42cf-89ac-4c3f-9e2d-51bb231897bf",
            "SEMAPHORE_GIT_PR_NUMBER": "4",
            "SEMAPHORE_GIT_PR_BRANCH": "topic",
            "SEMAPHORE_GIT_BRANCH": "main",
            "SEMAPHORE_GIT_SHA": SHA,
        },
        {
            "service_name": "semaphore-ci",
            "service_number": "65c9bb1c-aeb6-41f0-b8d9-6fa177241cdf",
            "service_job_id": "a26d42cf-89ac-4c3f-9e2d-51bb231897bf",
            "service_pull_request": "4",
            "service_branch": "topic",
            "commit_sha": SHA,
        },
    ),
    "generic-ci": (
        {
            "CI_NAME": "drone",
            "CI_BUILD_NUMBER": "14",
            "CI_JOB_ID": "14.2",
            "CI_PULL_REQUEST": "https://git.example.org/ada/shapes/merge_requests/6",
            "CI_BRANCH": "main",
        },
        {
            "service_name": "drone",
            "service_number": "14",
            "service_job_id": "14.2",
            "service_pull_request": "6",
            "service_branch": "main",
        },
    ),
    "no-ci": ({"HOME": "/root", "PATH": "/usr/bin"}, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ci_detection(case: str) -> None:
    env, expected = CASES[case]
    assert detect_ci(env) == expected


def test_every_ci_of_the_table_has_a_case() -> None:
    names = {detect_ci(env).get("service_name") for env, _ in CASES.values()} - {None}
    markers = {marker for marker, _ in coveralls.CI_SERVICES}
    assert len(names) == len(markers)


def test_coveralls_variables_override_detection() -> None:
    env = dict(CASES["gitlab-mr"][0])
    env.update(
        COVERALLS_SERVICE_NAME="gitlab",
        COVERALLS_SERVICE_NUMBER="build-7",
        COVERALLS_SERVICE_JOB_ID="job-3",
        COVERALLS_FLAG_NAME="integration",
        COVERALLS_PARALLEL="true",
    )
    found = detect_ci(env)
    assert found["service_name"] == "gitlab"
    assert (found["service_number"], found["service_job_id"]) == ("build-7", "job-3")
    assert found["flag_name"] == "integration"
    assert found["parallel"] is True
    assert found["commit_sha"] == SHA  # what is not overridden stays
    assert "parallel" not in detect_ci({"COVERALLS_PARALLEL": "1"})  # only "true" counts


def test_token_comes_from_the_environment_only() -> None:
    assert find_token({}) is None
    assert find_token({"GITHUB_TOKEN": "ghs_x"}) is None  # outside GitHub Actions: not ours
    token = find_token({"GITHUB_ACTIONS": "true", "GITHUB_TOKEN": "ghs_abc"})
    assert token is not None
    assert token.reveal() == "ghs_abc"
    token = find_token(
        {"GITHUB_ACTIONS": "true", "GITHUB_TOKEN": "ghs_abc", "COVERALLS_REPO_TOKEN": "r1"}
    )
    assert token is not None
    assert token.reveal() == "r1"


def test_secret_never_shows_itself() -> None:
    secret = Secret("s3cr3t-value")
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}", repr([secret])):
        assert "s3cr3t-value" not in shown
        assert "[secure]" in shown
    assert secret.scrub("a s3cr3t-value b") == "a [secure] b"
    payload = {"repo_token": secret, "source_files": []}
    assert '"repo_token": "[secure]"' in coveralls.to_json(payload, reveal=False)
    assert '"repo_token": "s3cr3t-value"' in coveralls.to_json(payload, reveal=True)


@pytest.mark.parametrize(
    ("content", "lines"),
    [
        (b"", 0),
        (b"a = 1\n", 1),
        (b"a = 1", 1),
        (b"a = 1\r\nb = 2\r\n", 2),
        (b"a = 1\rb = 2", 2),
        (b"a = 1\n\x0c\nb = 2\n", 3),  # a form feed is not a line end for Python
        (b"s = '\x0b\x1c'\n", 1),
        ("s = '\u2028\u0085'\n".encode(), 1),
    ],
)
def test_lines_are_counted_as_python_counts_them(content: bytes, lines: int) -> None:
    assert coveralls.count_lines(content) == lines


# -- HTTP policy against the real server ---------------------------------------------------------


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCoveralls]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with FakeCoveralls() as fake:
        yield fake


def _uploader(url: str, **kw: object) -> tuple[Uploader, list[str]]:
    lines: list[str] = []
    kw.setdefault("backoff", 0.01)
    up = Uploader(Secret("tok-unit"), url, log=lines.append, **kw)  # type: ignore[arg-type]
    return up, lines


PAYLOAD = {"source_files": [], "service_name": "pytest-distcov"}


def test_no_retry_on_client_errors(server: FakeCoveralls) -> None:
    server.job_script = [Answer(404, "<h1>Not Found</h1>")]
    up, lines = _uploader(server.url)
    with pytest.raises(CoverallsError, match=r"^Coveralls answered HTTP 404: <h1>Not Found</h1>$"):
        up.upload(PAYLOAD)
    assert len(server.jobs) == 1
    assert lines == []


def test_retry_on_429_and_5xx_then_success(server: FakeCoveralls) -> None:
    server.job_script = [Answer(429, {"message": "slow down"}), Answer(502, ERROR_PAGE), Answer()]
    up, lines = _uploader(server.url)
    assert up.upload(PAYLOAD)["url"] == "https://coveralls.example/jobs/4242"
    assert len(server.jobs) == 3
    assert [ln.split(": ", 1)[1] for ln in lines] == [
        "HTTP 429; retrying in 0 s",
        "HTTP 502; retrying in 0 s",
    ]


def test_retries_are_bounded(server: FakeCoveralls) -> None:
    server.job_script = [Answer(503, ERROR_PAGE)]
    up, lines = _uploader(server.url, attempts=3)
    with pytest.raises(CoverallsError) as info:
        up.upload(PAYLOAD)
    assert str(info.value) == (
        f"upload to {server.url} failed after 3 attempts (HTTP 503); the coverage data is"
        " unchanged: upload it later with `pytest-distcov coveralls`"
    )
    assert len(server.jobs) == 3
    assert len(lines) == 2


def test_a_server_that_never_answers_in_time(server: FakeCoveralls) -> None:
    server.job_script = [Answer(delay=2.0)]
    up, _ = _uploader(server.url, attempts=2, timeout=(1.0, 0.3))
    with pytest.raises(CoverallsError, match=r"failed after 2 attempts \(ReadTimeout: "):
        up.upload(PAYLOAD)
    assert len(server.jobs) == 2


def test_nobody_listening() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    up, lines = _uploader(f"http://127.0.0.1:{port}", attempts=2)
    with pytest.raises(CoverallsError, match=r"failed after 2 attempts \(ConnectionError: "):
        up.upload(PAYLOAD)
    assert len(lines) == 1


def test_finish_posts_the_build_and_reads_errors_in_a_200(server: FakeCoveralls) -> None:
    up, _ = _uploader(server.url)
    assert up.finish("311") == {"done": True, "url": "u", "jobs": 2}
    assert server.hooks[0].document["payload"] == {"build_num": "311", "status": "done"}
    server.hook_script = [Answer(200, {"error": "Build not found"})]
    with pytest.raises(CoverallsError, match=r"^Coveralls did not close build 311: Build not"):
        up.finish("311")


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        ([], "[]"),  # a JSON body that is no object used to end in an AttributeError
        (["a", 1], "['a', 1]"),
        ({"message": "bad\x1b[2J\nline"}, "bad\\x1b[2J\\nline"),
        ("\x1b]0;title\x07oops", "\\x1b]0;title\\x07oops"),
    ],
)
def test_what_the_server_says_is_shown_escaped_whatever_its_shape(
    server: FakeCoveralls, body: object, shown: str
) -> None:
    """A server's answer is a stranger's text bound for a terminal: any JSON shape is read,
    and control characters (a screen clear, a newline that forges a second line, a title
    change) reach the message escaped."""
    server.job_script = [Answer(422, body)]
    up, _ = _uploader(server.url)
    with pytest.raises(CoverallsError) as info:
        up.upload(PAYLOAD)
    assert str(info.value).startswith(f"Coveralls refused the job (422): {shown}; check ")
    server.hook_script = [Answer(500 if body == [] else 400, body)]
    up, _ = _uploader(server.url, attempts=1)
    with pytest.raises(CoverallsError) as info:
        up.finish("7")
    if body != []:
        assert str(info.value) == f"Coveralls did not close build 7: {shown}"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"COVERALLS_HOST": "coveralls.io"}, "COVERALLS_HOST must be an http(s) URL"),
        ({"DISTCOV_COVERALLS_TIMEOUT": "soon"}, "DISTCOV_COVERALLS_TIMEOUT must be seconds"),
        ({"DISTCOV_COVERALLS_TIMEOUT": "0"}, "DISTCOV_COVERALLS_TIMEOUT must be seconds"),
    ],
)
def test_bad_settings_are_clear_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(CoverallsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Uploader.from_env(Secret("t"), env)


def test_host_and_timeout_from_the_environment() -> None:
    up = Uploader.from_env(
        Secret("t"),
        {"COVERALLS_ENDPOINT": "https://coveralls.example.org/", "DISTCOV_COVERALLS_TIMEOUT": "5"},
    )
    assert (up.host, up.timeout) == ("https://coveralls.example.org", (5.0, 5.0))
    assert Uploader.from_env(Secret("t"), {}).host == "https://coveralls.io"


# -- credentials in URLs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "public"),
    [
        # GitLab CI's clone URL: the job token is the password
        (
            "https://gitlab-ci-token:glcbt-64_Zx9@gitlab.example.org/ada/shapes.git",
            "https://gitlab.example.org/ada/shapes.git",
        ),
        # GitHub takes a token as the user alone
        ("https://ghp_a1B2c3@github.com/ada/shapes", "https://github.com/ada/shapes"),
        ("https://x-access-token:ghs_Q@github.com/a/b.git", "https://github.com/a/b.git"),
        # an unencoded @ in the password: everything up to the authority's last @ goes
        ("https://ada:p@ss@host.example:8443/r.git", "https://host.example:8443/r.git"),
        ("ssh://deploy:pw@git.example.org:2222/r.git", "ssh://git.example.org:2222/r.git"),
        ("ssh://git@git.example.org/r.git", "ssh://git.example.org/r.git"),
        ("HTTP://u:p@[::1]:8080/r", "HTTP://[::1]:8080/r"),
        # an @ after the authority is part of the path
        ("https://host.example/ada/r@v2.git", "https://host.example/ada/r@v2.git"),
        ("https://host.example/r.git?ref=a@b", "https://host.example/r.git?ref=a@b"),
        ("https://host.example/r.git", "https://host.example/r.git"),
        # scp-style: the user is an ssh login name, kept; a "user:password" is not
        ("git@github.com:ada/shapes.git", "git@github.com:ada/shapes.git"),
        ("gitlab.example.org:ada/shapes.git", "gitlab.example.org:ada/shapes.git"),
        ("ada:hunter2@git.example.org:shapes.git", "git.example.org:shapes.git"),
        # local paths
        ("/srv/git/shapes.git", "/srv/git/shapes.git"),
        ("../shapes", "../shapes"),
        ("/srv/a:b@c/shapes.git", "/srv/a:b@c/shapes.git"),
        ("file:///srv/git/shapes.git", "file:///srv/git/shapes.git"),
    ],
)
def test_urls_lose_their_credentials(url: str, public: str) -> None:
    assert without_userinfo(url) == public


# -- plain http -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["COVERALLS_HOST", "COVERALLS_ENDPOINT"])
@pytest.mark.parametrize("opt_in", ["", "0", "false", "No"])
def test_plain_http_is_refused_without_the_opt_in(name: str, opt_in: str) -> None:
    env = {name: "http://coveralls.corp.example:8080/", "DISTCOV_COVERALLS_ALLOW_HTTP": opt_in}
    with pytest.raises(InsecureHostError) as info:
        Uploader.from_env(Secret("t"), env)
    assert str(info.value) == (
        f"{name} is http://coveralls.corp.example:8080, plain http, which would send the repo"
        " token unencrypted; nothing was sent: use https, or set DISTCOV_COVERALLS_ALLOW_HTTP=1"
        " to allow it"
    )
    assert isinstance(info.value, CoverallsError)  # a one-line error wherever errors are shown


@pytest.mark.parametrize(
    "host", [" http://127.0.0.1:8080", "\thttp://127.0.0.1:8080", "\x01http://h"]
)
def test_a_host_with_whitespace_or_control_characters_is_refused(host: str) -> None:
    """urlsplit and requests strip them: " http://..." once passed the plain-http refusal and
    sent the token unencrypted."""
    with pytest.raises(CoverallsError) as info:
        Uploader.from_env(Secret("t"), {"COVERALLS_HOST": host})
    assert str(info.value).startswith("COVERALLS_HOST must be an http(s) URL such as"), info.value


def test_a_refused_host_shows_no_credentials() -> None:
    with pytest.raises(InsecureHostError) as info:
        Uploader.from_env(Secret("t"), {"COVERALLS_HOST": "http://ci:hunter2-pw@10.0.0.7"})
    assert "hunter2" not in str(info.value)
    assert str(info.value).startswith("COVERALLS_HOST is http://10.0.0.7, plain http")


@pytest.mark.parametrize("opt_in", ["1", "true", "YES", " 1 "])
def test_plain_http_with_the_opt_in(opt_in: str) -> None:
    env = {"COVERALLS_ENDPOINT": "http://127.0.0.1:8080", "DISTCOV_COVERALLS_ALLOW_HTTP": opt_in}
    assert Uploader.from_env(Secret("t"), env).host == "http://127.0.0.1:8080"


def test_a_bad_opt_in_value_is_a_clear_error() -> None:
    env = {"COVERALLS_HOST": "http://127.0.0.1:8080", "DISTCOV_COVERALLS_ALLOW_HTTP": "maybe"}
    with pytest.raises(CoverallsError) as info:
        Uploader.from_env(Secret("t"), env)
    assert str(info.value) == (
        "DISTCOV_COVERALLS_ALLOW_HTTP must be 1 (send the token over plain http) or 0, not 'maybe'"
    )
    # https needs no opt-in, and the variable is not read for it
    assert Uploader.from_env(Secret("t"), {**env, "COVERALLS_HOST": "https://h.example"})


def test_a_host_with_a_user_and_password_is_shown_without_them() -> None:
    env = {"COVERALLS_HOST": "https://ci:hunter2-pw@coveralls.corp.example/"}
    up = Uploader.from_env(Secret("t"), env)
    assert up.host == up.shown == "https://coveralls.corp.example"  # no URL holds them
    assert up.auth is not None
    assert [s.reveal() for s in up.auth] == ["ci", "hunter2-pw"]  # sent as basic auth
    assert "hunter2" not in repr(up)
    with pytest.raises(CoverallsError) as info:
        Uploader.from_env(Secret("t"), {"COVERALLS_HOST": "ftp://ci:hunter2-pw@host"})
    assert str(info.value) == (
        "COVERALLS_HOST must be an http(s) URL such as https://coveralls.io, not 'ftp://host'"
    )


@pytest.mark.parametrize("name", ["COVERALLS_HOST", "COVERALLS_ENDPOINT"])
def test_a_host_password_travels_as_basic_auth_and_is_never_shown(
    server: FakeCoveralls, name: str
) -> None:
    """The user and password of the host's URL reach that host as basic auth (percent-decoded,
    as a URL holds them); no error, retry line or repr shows them, not even when the server
    echoes them back or when nobody listens."""
    password = "hunter2 pw-9c4e"
    host = server.url.replace("http://", "http://ci:hunter2%20pw-9c4e@")
    env = {name: host, "DISTCOV_COVERALLS_ALLOW_HTTP": "1"}
    server.job_script = [
        Answer(),
        Answer(503, ERROR_PAGE),
        Answer(422, {"message": f"bad {password}"}),
    ]
    server.hook_script = [*server.hook_script, Answer(401, {"error": f"who is ci:{password}?"})]
    lines: list[str] = []
    up = Uploader.from_env(Secret("tok-auth"), env, log=lines.append, backoff=0.01)
    assert up.upload(PAYLOAD)["url"] == "https://coveralls.example/jobs/4242"
    assert up.finish("311")["done"] is True
    basic = "Basic " + base64.b64encode(f"ci:{password}".encode()).decode()
    assert [r.headers["Authorization"] for r in server.received] == [basic, basic]

    with pytest.raises(CoverallsError) as refused:
        up.upload(PAYLOAD)
    with pytest.raises(CoverallsError) as unknown:
        up.finish("311")
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env[name] = f"http://ci:hunter2%20pw-9c4e@127.0.0.1:{port}"
    nobody = Uploader.from_env(Secret("tok-auth"), env, log=lines.append, backoff=0.01)
    with pytest.raises(CoverallsError) as unreachable:
        nobody.upload(PAYLOAD)
    assert str(refused.value).startswith("Coveralls refused the job (422): bad [secure];")
    assert str(unknown.value) == "Coveralls did not close build 311: who is ci:[secure]?"
    assert str(unreachable.value).startswith(f"upload to http://127.0.0.1:{port} failed after")
    shown = [str(refused.value), str(unknown.value), str(unreachable.value), *lines]
    shown += [repr(up), repr(nobody)]
    for text in shown:
        assert "hunter2" not in text, text
        assert "ci:" not in text.replace("who is ci:[secure]", ""), text
    assert len(lines) == 1 + nobody.attempts - 1  # the 503 and the retries that found nobody


# -- redirects ------------------------------------------------------------------------------------


@pytest.fixture
def elsewhere(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCoveralls]:
    """A second server on another port: where a redirect points."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with FakeCoveralls() as fake:
        yield fake


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_not_followed(
    server: FakeCoveralls, elsewhere: FakeCoveralls, status: int
) -> None:
    """``requests`` would resend the job, token and all, to the other host on a 307 or 308."""
    secret = Secret("tok-redirect-5d1c")
    location = f"{elsewhere.url}/api/v1/jobs?repo_token=tok-redirect-5d1c"
    server.job_script = [Answer(status, "", headers={"Location": location})]
    server.hook_script = [Answer(status, "", headers={"Location": f"{elsewhere.url}/webhook"})]
    up = Uploader(secret, server.url, backoff=0.01)
    with pytest.raises(CoverallsError) as info:
        up.upload({**PAYLOAD, "repo_token": secret})
    assert str(info.value) == (
        f"upload to {server.url}: the server answered HTTP {status}, a redirect to"
        f" {elsewhere.url}, which is not followed (the request carries the repo token; nothing"
        " was resent); if that host is Coveralls, set COVERALLS_HOST to it"
    )
    with pytest.raises(CoverallsError, match=rf"^finishing .* HTTP {status}, a redirect to"):
        up.finish("311")
    assert len(server.jobs) == len(server.hooks) == 1, "a redirect is not retried either"
    assert server.jobs[0].document["repo_token"] == "tok-redirect-5d1c"
    assert elsewhere.received == []


def test_a_relative_redirect_names_the_same_host(server: FakeCoveralls) -> None:
    server.job_script = [Answer(307, "", headers={"Location": "/api/v2/jobs"})]
    with pytest.raises(CoverallsError, match=rf"HTTP 307, a redirect to {server.url}, which"):
        Uploader(Secret("tok-relative"), server.url).upload(PAYLOAD)
    assert len(server.jobs) == 1  # not even to the same host: the API does not redirect
    server.job_script = [Answer(308, "")]
    with pytest.raises(CoverallsError, match=r"HTTP 308, a redirect to nowhere \(no Location\)"):
        Uploader(Secret("tok-relative"), server.url).upload(PAYLOAD)


# -- the --output file ----------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that leaves every bit, as on a careless shared machine."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_output_is_created_private(
    tmp_path: Path, open_umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "payload.json"
    coveralls.write_private(out, '{"a": 1}')
    assert (_mode(out), out.read_text()) == (0o600, '{"a": 1}')
    # created 0600 by open() itself, not changed afterwards: without fchmod it is 0600 too
    monkeypatch.delattr(os, "fchmod")
    fresh = tmp_path / "fresh.json"
    coveralls.write_private(fresh, "{}")
    assert _mode(fresh) == 0o600


def test_an_existing_output_is_made_private_and_replaced(tmp_path: Path, open_umask: None) -> None:
    out = tmp_path / "payload.json"
    out.write_text("an older and much longer payload than the new one\n" * 10)
    out.chmod(0o666)
    coveralls.write_private(out, "{}")
    assert (_mode(out), out.read_text()) == (0o600, "{}")


def test_an_output_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CoverallsError) as info:
        coveralls.write_private(tmp_path / "missing" / "p.json", "{}")
    assert str(info.value) == (
        f"cannot write the Coveralls payload to {tmp_path / 'missing' / 'p.json'}: No such file"
        " or directory (nothing was sent)"
    )


def test_a_pipe_as_output_is_only_written_to(tmp_path: Path) -> None:
    """``--output /dev/stdout`` piped to another command: no mode to set, nothing to truncate."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o644)
    read: list[bytes] = []
    reader = threading.Thread(target=lambda: read.append(fifo.read_bytes()))
    reader.start()
    coveralls.write_private(fifo, '{"source_files": []}')
    reader.join(timeout=10)
    assert read == [b'{"source_files": []}']
    assert _mode(fifo) == 0o644

"""Coveralls: real sessions and the CLI uploading to a real HTTP server on 127.0.0.1.

The server (tests/fake_coveralls.py) speaks Coveralls' jobs endpoint and webhook; its scripts
make it accept, refuse (422), fail then recover (500, then 200), answer too slowly, report a
webhook error inside an HTTP 200, or redirect elsewhere. It is plain http, so the runs opt in
with DISTCOV_COVERALLS_ALLOW_HTTP=1 (one test shows the refusal without it). No traffic leaves
the machine. Payloads are compared with what coveralls-python 4.1 makes of the same data file.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from coverage import CoverageData

from .fake_coveralls import ERROR_PAGE, REFUSED, Answer, FakeCoveralls
from .helpers import RUN_TIMEOUT, run_pytest

TOKEN = "tok-7f3a9c1e55d04b2b8e6f0a1d2c3b4a59"  # unique: grepped for in every output

#: Prefixes of variables that CI services set (and that coveralls clients read): the runs under
#: test must see only the CI this test declares, whatever CI runs this suite.
_CI_PREFIXES = (
    "GITHUB_",
    "GITLAB_",
    "CI",
    "BITBUCKET_",
    "JENKINS_",
    "BUILD_",
    "CIRCLE",
    "BUILDKITE",
    "TRAVIS",
    "APPVEYOR",
    "TF_BUILD",
    "SYSTEM_",
    "SEMAPHORE",
    "COVERALLS_",
    "DISTCOV_COVERALLS_",
    "CHANGE_",
    "GIT_",
    "BRANCH_NAME",
)

GITLAB = {
    "GITLAB_CI": "true",
    "CI_PIPELINE_ID": "880011",
    "CI_JOB_ID": "55501",
    "CI_COMMIT_REF_NAME": "feature/upload",
    "CI_MERGE_REQUEST_IID": "17",
    "CI_COMMIT_SHA": "0123456789abcdef0123456789abcdef01234567",
}

#: A module whose lines are counted differently by str.splitlines() and by Python's tokenizer
#: (form feeds, CRLF, no final newline), with a multi-line statement and an excluded line.
ODD = (
    b"import os\r\n"
    b"\x0c\n"
    b"def pick(flag):\n"
    b"\tif flag:  # a tab\n"
    b"\t\treturn (1 +\n"
    b"\t\t        2)\n"
    b"\treturn os.sep\n"
    b"\x0c\n"
    b"def never():  # pragma: no cover\n"
    b"    return 3\n"
    b"\n"
    b"VALUE = pick(True)"
)


def _git(path: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=Ada", "-c", "user.email=ada@example.org", *args],
        cwd=path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCoveralls]:
    for name in list(os.environ):
        if name.upper().startswith(_CI_PREFIXES) or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with FakeCoveralls() as fake:
        monkeypatch.setenv("COVERALLS_HOST", fake.url)
        monkeypatch.setenv("DISTCOV_COVERALLS_ALLOW_HTTP", "1")  # the fake server is plain http
        yield fake


@pytest.fixture
def project(pytester: pytest.Pytester, shapes: Path) -> Path:
    """The example project with an odd module, as a git repository with one commit."""
    (shapes / "shapes" / "odd.py").write_bytes(ODD)
    (shapes / "tests" / "test_odd.py").write_text(
        "from shapes import odd\n\ndef test_odd():\n    assert odd.pick(False) == odd.os.sep\n"
    )
    _git(shapes, "init", "-q", "-b", "main")
    _git(shapes, "remote", "add", "origin", "https://git.example.org/ada/shapes.git")
    _git(shapes, "add", ".")
    _git(shapes, "commit", "-q", "-m", "Shapes for the upload test")
    return shapes


@pytest.fixture
def measured(pytester: pytest.Pytester, project: Path) -> Path:
    """The project's data file, from a measured run without reports or upload."""
    assert run_pytest(pytester, "--distcov", "-n", "2", "--distcov-report=").ret == 0
    return project / ".coverage"


def _cli(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.run(sys.executable, "-m", "pytest_distcov", *args, timeout=RUN_TIMEOUT)


def _reference(pytester: pytest.Pytester) -> dict[str, dict[str, Any]]:
    """coveralls-python 4.1's ``--output`` for the project's data file, by file name."""
    out = pytester.path / "reference.json"
    result = pytester.run(
        sys.executable,
        "-m",
        "coveralls",
        "--output",
        str(out),
        "--rcfile",
        "pyproject.toml",
        timeout=RUN_TIMEOUT,
    )
    assert result.ret == 0, result.stderr.str()
    return {f["name"]: f for f in json.loads(out.read_text())["source_files"]}


def _groups(entry: dict[str, Any]) -> set[tuple[int, ...]]:
    flat = entry.get("branches", [])
    return {tuple(flat[i : i + 4]) for i in range(0, len(flat), 4)}


@pytest.mark.parametrize("branch", [False, True], ids=["lines", "branches"])
def test_session_upload_equals_coveralls_python(
    pytester: pytest.Pytester,
    project: Path,
    server: FakeCoveralls,
    monkeypatch: pytest.MonkeyPatch,
    branch: bool,
) -> None:
    monkeypatch.setenv("COVERALLS_REPO_TOKEN", TOKEN)
    for name, value in GITLAB.items():
        monkeypatch.setenv(name, value)
    args = ["--distcov", "-n", "2", "--distcov-coveralls"] + (
        ["--distcov-branch"] if branch else []
    )
    result = run_pytest(pytester, *args)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(
        ["distcov: Coveralls: Job #12.1 https://coveralls.example/jobs/4242"]
    )

    (job,) = server.jobs
    assert job.part_name == "json_file"
    assert job.gzipped
    assert job.part_type == "application/gzip"
    doc = job.document
    assert doc["repo_token"] == TOKEN
    assert {k: doc.get(k) for k in ("service_name", "service_number", "service_job_id")} == {
        "service_name": "gitlab-ci",
        "service_number": "880011",
        "service_job_id": "55501",
    }
    assert doc["service_pull_request"] == "17"
    assert doc["service_branch"] == doc["git"]["branch"] == "feature/upload"
    assert doc["commit_sha"] == GITLAB["CI_COMMIT_SHA"]
    assert doc["git"]["head"]["id"] == _git(project, "rev-parse", "HEAD")
    assert doc["git"]["head"]["author_name"] == "Ada"
    assert doc["git"]["head"]["message"] == "Shapes for the upload test"
    assert doc["git"]["remotes"] == [
        {"name": "origin", "url": "https://git.example.org/ada/shapes.git"}
    ]
    assert "parallel" not in doc
    assert doc["run_at"]

    ours = {f["name"]: f for f in doc["source_files"]}
    assert set(ours) == {
        "shapes/__init__.py",
        "shapes/geometry.py",
        "shapes/odd.py",
        "shapes/palette.py",
    }
    for name, entry in ours.items():
        assert entry["source_digest"] == hashlib.md5((project / name).read_bytes()).hexdigest()
    # odd.py: 12 physical lines, whatever str.splitlines() makes of its form feeds
    odd = [1, None, 1, 1, 1, None, 1, None, None, None, None, 1]
    assert ours["shapes/odd.py"]["coverage"] == odd

    reference = _reference(pytester)
    assert set(reference) == set(ours)
    for name, entry in reference.items():
        assert ours[name]["coverage"] == entry["coverage"], name
        assert _groups(ours[name]) == _groups(entry), name
    has_branches = [name for name, entry in ours.items() if entry.get("branches")]
    assert bool(has_branches) == branch

    # what the data file says is what was sent
    data = CoverageData(str(project / ".coverage"))
    data.read()
    for name, entry in ours.items():
        executed = {n for n, hits in enumerate(entry["coverage"], 1) if hits}
        assert executed <= set(data.lines(str(project / name)) or ()), name


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("required", [False, True], ids=["warning", "required"])
def test_refused_job_keeps_status_unless_required(
    pytester: pytest.Pytester,
    project: Path,
    server: FakeCoveralls,
    monkeypatch: pytest.MonkeyPatch,
    required: bool,
) -> None:
    monkeypatch.setenv("COVERALLS_REPO_TOKEN", TOKEN)
    server.job_script = [Answer(422, REFUSED)]
    extra = ["--distcov-coveralls-required"] if required else []
    result = run_pytest(pytester, "--distcov", "-n", "2", "--distcov-coveralls", *extra)
    assert len(server.jobs) == 1, "a 422 is not retried"
    line = (
        "*Coveralls refused the job (422): Couldn't find a repository matching this job.;"
        " check COVERALLS_REPO_TOKEN (or GITHUB_TOKEN on GitHub Actions) and the service name*"
    )
    result.stdout.fnmatch_lines([line])
    if required:
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.stdout.fnmatch_lines(["*FAIL: Coveralls upload:*(distcov_coveralls_required)*"])
    else:
        assert result.ret == pytest.ExitCode.OK
        result.stdout.fnmatch_lines(["*Coveralls upload failed (the run's result stands)*"])
    # the data is all there: the report from the file equals the one the session printed
    again = _cli(pytester, "report", "--format", "term")
    assert again.ret == 0
    total = [ln for ln in again.stdout.lines if ln.startswith("TOTAL")]
    assert total
    assert total[0] in result.stdout.lines


def test_ini_key_turns_upload_on_and_server_errors_are_retried(
    pytester: pytest.Pytester,
    project: Path,
    server: FakeCoveralls,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COVERALLS_REPO_TOKEN", TOKEN)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace(
            "[tool.pytest.ini_options]\n", "[tool.pytest.ini_options]\ndistcov_coveralls = true\n"
        )
    )
    server.job_script = [Answer(500, ERROR_PAGE), Answer()]
    result = run_pytest(pytester, "--distcov", "-n", "2")
    assert result.ret == 0, result.stdout.str()
    assert len(server.jobs) == 2
    assert server.jobs[0].document == server.jobs[1].document
    result.stdout.fnmatch_lines(
        [
            "distcov: upload to http://127.0.0.1:*: HTTP 500; retrying in 2 s",
            "distcov: Coveralls: Job #12.1 https://coveralls.example/jobs/4242",
        ]
    )


def test_slow_answer_times_out_and_is_retried(
    pytester: pytest.Pytester,
    measured: Path,
    server: FakeCoveralls,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COVERALLS_REPO_TOKEN", TOKEN)
    monkeypatch.setenv("DISTCOV_COVERALLS_TIMEOUT", "0.5")
    server.job_script = [Answer(delay=3.0), Answer()]
    result = _cli(pytester, "coveralls")
    assert result.ret == 0, result.stderr.str()
    result.stderr.fnmatch_lines(
        ["pytest-distcov: upload to http://127.0.0.1:*: ReadTimeout: *; retrying in 2 s"]
    )
    result.stdout.fnmatch_lines(["pytest-distcov: Coveralls: Job #12.1 *"])
    assert len(server.jobs) == 2


def test_parallel_build_jobs_and_finish(
    pytester: pytest.Pytester,
    measured: Path,
    server: FakeCoveralls,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = _digest(measured)
    monkeypatch.setenv("COVERALLS_REPO_TOKEN", TOKEN)
    monkeypatch.setenv("BITBUCKET_BUILD_NUMBER", "311")
    monkeypatch.setenv("BITBUCKET_COMMIT", "c0ffee")
    monkeypatch.setenv("BITBUCKET_BRANCH", "main")
    for step in ("0", "1"):
        monkeypatch.setenv("BITBUCKET_PARALLEL_STEP", step)
        result = _cli(pytester, "coveralls", "--parallel", "--flag-name", f"shard-{step}")
        assert result.ret == 0, result.stderr.str()
    monkeypatch.setenv("COVERALLS_PARALLEL", "true")  # the variable does what --parallel does
    monkeypatch.setenv("COVERALLS_FLAG_NAME", "shard-2")
    assert _cli(pytester, "coveralls").ret == 0
    docs = [job.document for job in server.jobs]
    assert [(d["parallel"], d["flag_name"], d["service_number"]) for d in docs] == [
        (True, "shard-0", "311"),
        (True, "shard-1", "311"),
        (True, "shard-2", "311"),
    ]
    assert [d["service_job_id"] for d in docs] == ["0", "1", "1"]
    assert {d["service_name"] for d in docs} == {"bitbucket"}

    result = _cli(pytester, "coveralls", "--finish")
    assert result.ret == 0, result.stderr.str()
    assert result.stdout.lines == ["pytest-distcov: Coveralls: parallel build 311 closed (2 jobs)"]
    (hook,) = server.hooks
    assert hook.document == {"repo_token": TOKEN, "payload": {"build_num": "311", "status": "done"}}
    assert _digest(measured) == before, "uploading never changes the data file"


def test_what_the_server_accepts_with_is_shown_escaped(
    pytester: pytest.Pytester,
    measured: Path,
    server: FakeCoveralls,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An accepted job's message and URL, and a closed build's job count, are the server's
    text bound for a terminal: a newline in them forges no second line, an escape no colour."""
    monkeypatch.setenv("COVERALLS_REPO_TOKEN", TOKEN)
    monkeypatch.setenv("COVERALLS_SERVICE_NUMBER", "78")
    server.job_script = [Answer(200, {"message": "ok\x1b[31m", "url": "https://c/\nFAKE"})]
    server.hook_script = [Answer(200, {"done": True, "jobs": "2\r\x1b[2K"})]
    result = _cli(pytester, "coveralls")
    assert result.ret == 0, result.stderr.str()
    assert result.stdout.lines == ["pytest-distcov: Coveralls: ok\\x1b[31m https://c/\\nFAKE"]
    result = _cli(pytester, "coveralls", "--finish")
    assert result.ret == 0, result.stderr.str()
    assert result.stdout.lines == [
        "pytest-distcov: Coveralls: parallel build 78 closed (2\\r\\x1b[2K jobs)"
    ]


def test_webhook_error_in_a_200_is_an_error(
    pytester: pytest.Pytester, server: FakeCoveralls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COVERALLS_REPO_TOKEN", TOKEN)
    monkeypatch.setenv("COVERALLS_SERVICE_NUMBER", "77")
    server.hook_script = [Answer(200, {"error": "No build matching CI build number 77 found"})]
    result = _cli(pytester, "coveralls", "--finish")
    assert result.ret == 1
    assert result.stderr.lines == [
        "pytest-distcov: error: Coveralls did not close build 77:"
        " No build matching CI build number 77 found"
    ]
    assert len(server.hooks) == 1


def test_no_token_and_no_ci_sends_nothing(
    pytester: pytest.Pytester, project: Path, server: FakeCoveralls
) -> None:
    result = run_pytest(pytester, "--distcov", "--distcov-coveralls")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "*Coveralls upload failed (the run's result stands): no Coveralls token: set"
            " COVERALLS_REPO_TOKEN (or GITHUB_TOKEN on GitHub Actions) in the environment;"
            " nothing was sent*"
        ]
    )
    result = _cli(pytester, "coveralls")
    assert result.ret == 1
    assert len(result.stderr.lines) == 1
    assert "no Coveralls token" in result.stderr.lines[0]
    result = _cli(pytester, "coveralls", "--finish")
    assert result.ret == 1
    assert "no Coveralls token" in result.stderr.str()
    assert server.received == []


def test_output_writes_the_payload_and_sends_nothing(
    pytester: pytest.Pytester,
    project: Path,
    measured: Path,
    server: FakeCoveralls,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COVERALLS_REPO_TOKEN", TOKEN)
    result = _cli(pytester, "coveralls", "--output", "payload.json")
    assert result.ret == 0
    assert result.stdout.lines == [
        "pytest-distcov: wrote the Coveralls payload to payload.json (nothing was sent)"
    ]
    payload = json.loads((project / "payload.json").read_text())
    assert payload["repo_token"] == "[secure]"
    assert {f["name"] for f in payload["source_files"]} >= {"shapes/odd.py"}
    assert server.received == []
    # without a token, --output still works (there is nothing to hide and nothing is sent)
    monkeypatch.delenv("COVERALLS_REPO_TOKEN")
    assert _cli(pytester, "coveralls", "--output", "p2.json").ret == 0
    assert "repo_token" not in json.loads((project / "p2.json").read_text())


def test_token_never_leaves_the_request(
    pytester: pytest.Pytester,
    project: Path,
    server: FakeCoveralls,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every path that could print or write the token runs; no output or file holds it."""
    monkeypatch.setenv("COVERALLS_REPO_TOKEN", TOKEN)
    monkeypatch.setenv("COVERALLS_SERVICE_NUMBER", "9")
    # the server echoes the token back in its error messages: they are shown scrubbed
    server.job_script = [
        Answer(503, f"<h1>overloaded, token {TOKEN}</h1>"),
        Answer(422, {"message": f"Unknown repo_token {TOKEN}", "error": True}),
        Answer(200, {"message": f"ok {TOKEN}", "url": f"https://x/{TOKEN}"}),
    ]
    server.hook_script = [Answer(200, {"error": f"bad token {TOKEN}"})]
    outputs = []
    session = run_pytest(
        pytester,
        "--distcov",
        "-n",
        "2",
        "--distcov-coveralls",
        "--distcov-report=term-missing",
        "--distcov-report=html",
        "--distcov-report=xml",
        "--distcov-report=json",
        "--distcov-report=lcov",
        "--distcov-report=markdown:cov.md",
        "--junitxml=junit.xml",
        "-v",
    )
    outputs.append(session)
    for args in (("coveralls",), ("coveralls", "--output", "out.json"), ("coveralls", "--finish")):
        outputs.append(_cli(pytester, *args))
    shown = "\n".join(r.stdout.str() + r.stderr.str() for r in outputs)
    assert "Unknown repo_token [secure]" in shown  # the 422 message, scrubbed
    assert "bad token [secure]" in shown  # the webhook error, scrubbed
    assert "Coveralls: ok [secure] https://x/[secure]" in shown
    assert TOKEN not in shown

    # the token really was used: every request carried it (gzip on the wire)
    assert len(server.jobs) == 3
    assert all(j.document["repo_token"] == TOKEN for j in server.jobs)
    assert TOKEN.encode() not in server.jobs[0].body  # compressed, so not even on the wire
    assert server.hooks[0].document["repo_token"] == TOKEN

    written = [p for p in pytester.path.rglob("*") if p.is_file()]
    assert len(written) > 20
    assert any(p.name == "out.json" for p in written)
    for path in written:
        content = path.read_bytes()
        assert TOKEN.encode() not in content, path
        if content[:2] == b"\x1f\x8b":
            assert TOKEN.encode() not in gzip.decompress(content), path


def test_upload_flag_without_measuring_is_a_usage_error(
    pytester: pytest.Pytester, server: FakeCoveralls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COVERALLS_REPO_TOKEN", TOKEN)
    pytester.makepyfile(test_a="def test_a(): pass")
    result = run_pytest(pytester, "--distcov-coveralls")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0] == (
        "ERROR: distcov: --distcov-coveralls uploads what --distcov measures; add --distcov (or"
        " distcov = true in the ini file), or upload a data file with `pytest-distcov coveralls`"
    )
    # --no-distcov wins quietly: a run measured off by choice uploads nothing
    assert run_pytest(pytester, "--distcov-coveralls", "--no-distcov").ret == 0
    assert server.received == []


#: What a CI clone's remotes can hold: GitLab's job token as a password, a push URL with a
#: personal password, a GitHub token as the user, an ssh URL with a password, and scp-style.
GIT_SECRETS = {
    "origin": "https://gitlab-ci-token:glcbt-PW-origin-8e1f@gitlab.example.org/ada/shapes.git",
    "push": "https://ada:PW-push-41c7@gitlab.example.org/ada/shapes.git",
    "ghtoken": "https://ghp_PWtokenuser0c55@github.com/ada/shapes.git",
    "mirror": "ssh://deploy:PW-ssh-93d2@git.example.org:2222/shapes.git",
}


def test_no_credential_reaches_the_output_the_files_or_the_job(
    pytester: pytest.Pytester,
    project: Path,
    server: FakeCoveralls,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An upload from a GitLab CI clone: the repo token goes to Coveralls in the job and
    nowhere else; the clone's credentials go nowhere at all."""
    _git(project, "remote", "set-url", "origin", GIT_SECRETS["origin"])
    _git(project, "remote", "set-url", "--push", "origin", GIT_SECRETS["push"])
    _git(project, "remote", "add", "ghtoken", GIT_SECRETS["ghtoken"])
    _git(project, "remote", "add", "mirror", GIT_SECRETS["mirror"])
    _git(project, "remote", "add", "scp", "git@github.com:ada/shapes.git")
    monkeypatch.setenv("COVERALLS_REPO_TOKEN", TOKEN)
    for name, value in GITLAB.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CI_REPOSITORY_URL", GIT_SECRETS["origin"])  # GitLab sets it too
    runs = [run_pytest(pytester, "--distcov", "-n", "2", "--distcov-coveralls", "-v")]
    for args in (("coveralls",), ("coveralls", "--output", "out.json"), ("coveralls", "--finish")):
        runs.append(_cli(pytester, *args))
        assert runs[-1].ret == 0, runs[-1].stderr.str()
    assert runs[0].ret == 0, runs[0].stdout.str()

    secrets = [TOKEN, "PW-origin-8e1f", "PW-push-41c7", "PWtokenuser0c55", "PW-ssh-93d2"]
    shown = "\n".join(r.stdout.str() + r.stderr.str() for r in runs)
    written = [p for p in pytester.path.rglob("*") if p.is_file() and ".git" not in p.parts]
    assert any(p.name == "out.json" for p in written)
    for secret in secrets:
        assert secret not in shown, secret
        for path in written:
            content = path.read_bytes()
            if content[:2] == b"\x1f\x8b":
                content = gzip.decompress(content)
            assert secret.encode() not in content, (secret, path)

    remotes = [
        {"name": "ghtoken", "url": "https://github.com/ada/shapes.git"},
        {"name": "mirror", "url": "ssh://git.example.org:2222/shapes.git"},
        {"name": "origin", "url": "https://gitlab.example.org/ada/shapes.git"},
        {"name": "scp", "url": "git@github.com:ada/shapes.git"},
    ]
    documents = [job.document for job in server.jobs]
    documents.append(json.loads((project / "out.json").read_text()))
    assert len(documents) == 3
    for doc in documents:
        assert doc["git"]["remotes"] == remotes  # fetch and push URL of origin: one remote
        text = json.dumps(doc)
        for secret in secrets[1:]:
            assert secret not in text, secret
    # the repo token went where the API needs it, and only there
    assert [doc.get("repo_token") for doc in documents] == [TOKEN, TOKEN, "[secure]"]
    assert server.hooks[0].document["repo_token"] == TOKEN


def test_plain_http_is_refused_without_the_opt_in(
    pytester: pytest.Pytester,
    project: Path,
    measured: Path,
    server: FakeCoveralls,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COVERALLS_REPO_TOKEN", TOKEN)
    monkeypatch.setenv("COVERALLS_SERVICE_NUMBER", "9")
    monkeypatch.delenv("DISTCOV_COVERALLS_ALLOW_HTTP")
    refusal = (
        f"COVERALLS_HOST is {server.url}, plain http, which would send the repo token"
        " unencrypted; nothing was sent: use https, or set DISTCOV_COVERALLS_ALLOW_HTTP=1 to"
        " allow it"
    )
    for args in (("coveralls",), ("coveralls", "--finish")):
        result = _cli(pytester, *args)
        assert result.ret == 1
        assert result.stderr.lines == [f"pytest-distcov: error: {refusal}"]
        assert result.stdout.lines == []
    result = run_pytest(pytester, "--distcov", "-n", "2", "--distcov-coveralls")
    assert result.ret == 0
    result.stdout.fnmatch_lines([f"*Coveralls upload failed (the run's result stands): {refusal}"])
    result = run_pytest(
        pytester, "--distcov", "--distcov-coveralls-required", "--distcov-coveralls"
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [f"*FAIL: Coveralls upload: {refusal} (distcov_coveralls_required)"]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    # --output sends nothing, so it needs no opt-in
    assert _cli(pytester, "coveralls", "--output", "payload.json").ret == 0
    assert server.received == []


@pytest.mark.parametrize("status", [307, 308])
def test_a_redirect_elsewhere_gets_nothing(
    pytester: pytest.Pytester,
    measured: Path,
    server: FakeCoveralls,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
) -> None:
    """A 307/308 would make requests resend the job, token and all, to the other host."""
    monkeypatch.setenv("COVERALLS_REPO_TOKEN", TOKEN)
    monkeypatch.setenv("COVERALLS_SERVICE_NUMBER", "9")
    with FakeCoveralls() as elsewhere:
        server.job_script = [
            Answer(status, "", headers={"Location": f"{elsewhere.url}/api/v1/jobs?t={TOKEN}"})
        ]
        server.hook_script = [Answer(status, "", headers={"Location": f"{elsewhere.url}/webhook"})]
        upload = _cli(pytester, "coveralls")
        finish = _cli(pytester, "coveralls", "--finish")
    assert (upload.ret, finish.ret) == (1, 1)
    assert upload.stderr.lines == [
        f"pytest-distcov: error: upload to {server.url}: the server answered HTTP {status}, a"
        f" redirect to {elsewhere.url}, which is not followed (the request carries the repo"
        " token; nothing was resent); if that host is Coveralls, set COVERALLS_HOST to it"
    ]
    finish.stderr.fnmatch_lines(
        [f"pytest-distcov: error: finishing the parallel build at {server.url}: *{elsewhere.url}*"]
    )
    assert elsewhere.received == []
    assert (len(server.jobs), len(server.hooks)) == (1, 1)  # not retried
    assert server.jobs[0].document["repo_token"] == TOKEN


def test_output_files_are_private(
    pytester: pytest.Pytester,
    project: Path,
    measured: Path,
    server: FakeCoveralls,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COVERALLS_REPO_TOKEN", TOKEN)
    old = project / "old.json"
    old.write_text("{}")
    old.chmod(0o644)
    umask = os.umask(0o022)  # what a CI machine usually has: new files readable by all
    try:
        for name in ("new.json", "old.json"):
            result = _cli(pytester, "coveralls", "--output", name)
            assert result.ret == 0, result.stderr.str()
    finally:
        os.umask(umask)
    for name in ("new.json", "old.json"):
        path = project / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        assert json.loads(path.read_text())["repo_token"] == "[secure]"
    assert server.received == []

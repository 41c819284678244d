"""The parts of --distcov-remote that need no host: parsing, shipping lists, path plumbing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_distcov.errors import SettingsError
from pytest_distcov.remote.launch import host_sys_path, map_arg
from pytest_distcov.remote.shipping import Bundle, PathEntry, Tree, build_bundle, project_files
from pytest_distcov.settings.hosts import SSH_OPTIONS, parse_hosts

from .helpers import run_pytest


def test_host_entries() -> None:
    hosts = parse_hosts(["4*build@host1:2222, host2", "ssh=host3//python=/opt/py/bin/python3"])
    assert [(h.label, h.count) for h in hosts] == [
        ("build@host1:2222", 4),
        ("host2", 1),
        ("host3", 1),
    ]
    assert hosts[0].ssh == f"{SSH_OPTIONS} -p 2222 build@host1"
    assert hosts[0].python == "python3"
    assert hosts[2].ssh == "host3"  # a full spec is used as given
    assert hosts[2].python == "/opt/py/bin/python3"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("x*host", "worker count before '*'"),
        ("0*host", "worker count before '*'"),
        ("host:port", "is not a host"),
        ("host name", "is not a host"),
        ("popen//python=python3", "a full spec must be an ssh spec"),
        ("ssh=h//chdir=/x", "a full spec must be an ssh spec"),
        ("h1,2*h1", "given twice"),
    ],
)
def test_bad_host_entries(entry: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("*", r"\*")):
        parse_hosts([entry])


def test_remote_option_errors_are_usage_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a="def test_a(): pass")
    bad = run_pytest(pytester, "--distcov", "--distcov-remote=2x*h1")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["ERROR: distcov: invalid value for --distcov-remote: *2x*h1*"])
    missing = run_pytest(pytester, "--distcov", "--distcov-remote=h1", "--distcov-ssh-config=nope")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines(["*ssh config file 'nope' given by --distcov-ssh-config*"])
    off = run_pytest(pytester, "--distcov-remote=h1")
    assert off.ret == pytest.ExitCode.USAGE_ERROR
    off.stderr.fnmatch_lines(["*--distcov-remote * needs --distcov*"])
    for result in (bad, missing, off):
        assert "Traceback" not in result.stdout.str() + result.stderr.str()


def _tree(root: Path) -> None:
    for rel in [
        "pkg/__init__.py",
        "pkg/mod.py",
        "tests/test_x.py",
        "build/out.txt",
        "data/big.bin",
        ".git/config",
        "pkg/__pycache__/mod.cpython-311.pyc",
        ".pytest_cache/v/x",
        ".coverage",
        ".coverage.host.1",
        "env/pyvenv.cfg",
        "env/lib/site.py",
        "notes.log",
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    (root / ".gitignore").write_text("build/\n*.log\n")


WANTED = [".gitignore", "pkg/__init__.py", "pkg/mod.py", "tests/test_x.py"]


def test_project_files_without_git(tmp_path: Path) -> None:
    _tree(tmp_path)
    assert sorted(project_files(str(tmp_path), ["data"])) == WANTED
    assert "data/big.bin" in project_files(str(tmp_path))


@pytest.mark.skipif(shutil.which("git") is None, reason="git is missing")
def test_project_files_with_git(tmp_path: Path) -> None:
    _tree(tmp_path)
    shutil.rmtree(tmp_path / ".git")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "pkg" / "untracked.py").write_text("x = 1\n")
    files = project_files(str(tmp_path), ["data/*"])
    assert sorted(files) == sorted([*WANTED, "pkg/untracked.py"])


def _named_tree(bundle: Bundle, name: str) -> Tree:
    return next(t for t in bundle.trees if t.name == name)


def test_bundle_layout_follows_sys_path(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / "src" / "pkg").mkdir(parents=True)
    (project / "src" / "pkg" / "__init__.py").write_text("")
    outside = tmp_path / "outside"
    (outside / "lib").mkdir(parents=True)
    (outside / "lib" / "helper.py").write_text("X = 1\n")
    stdlib = os.path.dirname(os.__file__)
    bundle, digests = build_bundle(
        str(project), path=["", str(project / "src"), stdlib, str(outside / "lib")]
    )
    assert bundle.sys_path[:4] == (
        PathEntry("cwd"),
        PathEntry("tree", "project", "src"),
        PathEntry("stdlib"),
        PathEntry("tree", "packages-1"),
    )
    helper = _named_tree(bundle, "packages-1")
    assert [f.rel for f in helper.files] == ["helper.py"]
    assert str(outside / "lib" / "helper.py") in digests
    # A second build with the digests it returned reads no file again and agrees.
    again, _ = build_bundle(
        str(project),
        path=["", str(project / "src"), stdlib, str(outside / "lib")],
        hash_cache=digests,
    )
    assert _named_tree(again, "packages-1").digest == helper.digest
    assert again.project.digest == bundle.project.digest


def test_path_map_of_the_extras_tree(tmp_path: Path) -> None:
    from pytest_distcov.remote.shipping import Tree

    tree = Tree("extras", (("pkg", "/src/pkg"), ("mod.py", "/lib/mod.py")), (), per_run=False)
    assert tree.local_path("pkg/a/b.py") == os.path.join("/src/pkg", "a", "b.py")
    assert tree.local_path("mod.py") == "/lib/mod.py"
    assert tree.path_map("/h/extras") == [
        ("/h/extras/pkg", "/src/pkg"),
        ("/h/extras/mod.py", "/lib/mod.py"),
    ]


def test_worker_arguments_and_path_on_the_host() -> None:
    prefixes = [["/home/me/proj", "/cache/runs/1/project"]]
    assert map_arg("/home/me/proj/tests/t.py::x", prefixes) == "/cache/runs/1/project/tests/t.py::x"
    assert map_arg("--rootdir=/home/me/proj", prefixes) == "--rootdir=/cache/runs/1/project"
    assert map_arg("/home/me/project2", prefixes) == "/home/me/project2"
    assert map_arg("tests", prefixes) == "tests"
    path = host_sys_path([["path", ""], ["path", "/p/one"], ["path", "/std"], ["path", "/p/one"]])
    assert path == ["", "/p/one", "/std"]


def test_worker_path_uses_the_hosts_standard_library(tmp_path: Path) -> None:
    """The controller lays out the worker's sys.path with the host's own paths: the copies of
    the shipped trees, the venv's site-packages, and the stdlib the agent found there."""
    from pytest_distcov.remote.fleet import Fleet

    project = tmp_path / "proj"
    project.mkdir()
    site = tmp_path / "site"
    site.mkdir()
    (site / "mod.py").write_text("")
    stdlib = os.path.dirname(os.__file__)
    bundle, _ = build_bundle(str(project), path=["", stdlib, str(site)])
    fleet = Fleet(parse_hosts(["h"]), bundle)
    try:
        host = fleet.hosts[0]
        host.info = {"stdlib": ["/usr/lib/python3.x", "/usr/lib/python3.x/lib-dynload"]}
        host.trees = {"project": "/c/runs/1/project", "packages-1": "/c/trees/abc"}
        assert fleet.worker_sys_path(host) == [
            ["path", ""],
            ["path", "/usr/lib/python3.x"],
            ["path", "/usr/lib/python3.x/lib-dynload"],
            ["path", "/c/trees/abc"],
        ]
        assert sys.path  # the controller's own sys.path is only read
    finally:
        fleet.close()


def test_a_host_that_never_answers_is_named_after_the_remote_timeout(
    pytester: pytest.Pytester,
) -> None:
    """--distcov-remote-timeout bounds the wait for a host: ssh's proxy here never answers."""
    if shutil.which("ssh") is None:
        pytest.skip("needs an ssh client")
    pytester.makepyfile(test_a="def test_a():\n    pass\n")
    config = pytester.path / "ssh_config"
    config.write_text("Host silent\n    ProxyCommand sleep 60\n    BatchMode yes\n")
    result = run_pytest(
        pytester,
        "--distcov",
        "--distcov-remote=silent",
        f"--distcov-ssh-config={config}",
        "--distcov-remote-timeout=2",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*silent: no answer within 2 s*"])
    assert result.duration < 45, result.duration  # not the default 30 s, nor the proxy's 60


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf", "nan", ""])
def test_remote_timeout_must_be_a_positive_number(pytester: pytest.Pytester, value: str) -> None:
    result = run_pytest(pytester, "--distcov", f"--distcov-remote-timeout={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"*invalid value '{value}' for --distcov-remote-timeout:"
            " expected a number of seconds above 0"
        ]
    )


#: A stand-in agent on a real execnet gateway (a local popen process): it answers every request
#: with the reply it was given first, as a hostile or broken host might.
_HOSTILE_AGENT = """
reply = channel.receive()
while True:
    request = channel.receive()
    if request is None:
        break
    channel.send(reply)
"""


GOOD_REPLY = {"ok": [(".coverage.gw0.x1", b"data")]}


@pytest.mark.parametrize(
    "reply",
    [
        GOOD_REPLY,
        {"ok": [("../../escaped", b"x")]},
        {"ok": [("/tmp/.coverage.abs", b"x")]},
        {"ok": [(".coverage.sub/../x", b"x")]},
        {"ok": [("not-coverage-data", b"x")]},
        {"ok": [(".coverage.gw0", "text, not bytes")]},
        {"ok": [(".coverage.gw0",)]},
        {"ok": "a string"},
        ["not", "a", "dict"],
        {"neither": 1},
    ],
)
def test_a_hostile_fetch_reply_is_a_remote_error(reply: object, tmp_path: Path) -> None:
    """What a host sends back is checked before anything is written: plain data file names and
    bytes only; anything else is a RemoteError naming the host (never a TypeError, never a
    file outside the recovery directory)."""
    import execnet

    from pytest_distcov.errors import RemoteError
    from pytest_distcov.remote.fleet import Fleet, HostSession

    gateway = execnet.makegateway("popen")
    try:
        channel = gateway.remote_exec(_HOSTILE_AGENT)
        channel.send(reply)
        spec = parse_hosts(["evil"])[0]
        host = HostSession(spec, 1, gateway=gateway, channel=channel)
        fleet = Fleet([], build_bundle(str(tmp_path), path=[])[0])
        if reply == GOOD_REPLY:
            assert fleet.fetch(host, "/some/dir") == [(".coverage.gw0.x1", b"data")]
        else:
            with pytest.raises(RemoteError, match=r"^evil: "):
                fleet.fetch(host, "/some/dir")
        channel.send(None)
    finally:
        gateway.exit()
    assert not list(tmp_path.parent.glob("escaped"))

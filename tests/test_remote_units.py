"""The parts of --distcov-remote that need no host: parsing, shipping lists, path plumbing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_distcov.errors import SettingsError
from pytest_distcov.remote.launch import host_sys_path, map_arg, set_environment
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
        # ssh options where a host belongs (-oProxyCommand=... would run a command here)
        ("-oProxyCommand=touch /tmp/pwned", "starts with '-': ssh would read it as an option"),
        ("-oProxyCommand", "starts with '-': ssh would read it as an option"),
        ("2*-p2222", "starts with '-': ssh would read it as an option"),
        ("-user@host", "starts with '-': ssh would read it as an option"),
        ("ssh=-oProxyCommand=x//python=python3", "starts with '-': ssh would read it"),
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


@pytest.mark.parametrize("controller_core", ["", "pytrace"])
def test_a_worker_on_a_host_takes_the_controllers_core_never_the_hosts_own(
    monkeypatch: pytest.MonkeyPatch, controller_core: str
) -> None:
    """The host's ssh environment set COVERAGE_CORE=sysmon: the worker there measures with
    the controller's choice, or with what the run's settings choose (no variable)."""
    for name in ("PYTEST_DISTCOV_OMIT", "DISTCOV_ENGINE", "PYTEST_DISTCOV_TMP_PARENT"):
        monkeypatch.delenv(name, raising=False)  # (restored after the test)
    monkeypatch.setenv("COVERAGE_CORE", "sysmon")
    remote = {"engine": "auto", "tmp_parent": "/run/d", "coverage_core": controller_core}
    set_environment(remote, "/ctl/launch.py")
    assert os.environ.get("COVERAGE_CORE") == (controller_core or None)
    assert os.environ["DISTCOV_ENGINE"] == "auto"
    assert os.environ["PYTEST_DISTCOV_TMP_PARENT"] == "/run/d"
    assert os.environ["PYTEST_DISTCOV_OMIT"] == "/ctl/launch.py"


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
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """--distcov-remote-timeout bounds the wait for a host: ssh's proxy here never answers."""
    if shutil.which("ssh") is None:
        pytest.skip("needs an ssh client")
    # pytester's HOME is the project, a rootdir --distcov-remote refuses to ship
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
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


BAD_REMOTE_VALUES = [
    *(("timeout", v, "a number of seconds above 0") for v in ["0", "-1", "soon", "inf", "nan", ""]),
    *(
        ("cache-size", v, "a size in bytes, 1 or more, such as 500M or 2G")
        for v in ["0", "2X", "big", "", "-1G"]
    ),
]


@pytest.mark.parametrize(("option", "value", "expected"), BAD_REMOTE_VALUES)
def test_a_bad_remote_timeout_or_cache_size_is_one_usage_error(
    pytester: pytest.Pytester, option: str, value: str, expected: str
) -> None:
    result = run_pytest(pytester, "--distcov", f"--distcov-remote-{option}={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*invalid value '{value}' for --distcov-remote-{option}: expected {expected}"]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


#: A stand-in agent on a real execnet gateway (a local popen process): it answers every request
#: with the reply it was given first (with the request's id, as the agent echoes it), as a
#: hostile or broken host might.
_HOSTILE_AGENT = """
reply = channel.receive()
while True:
    request = channel.receive()
    if request is None:
        break
    channel.send({**reply, "id": request["id"]} if isinstance(reply, dict) else reply)
"""


GOOD_REPLY = {"ok": [(".coverage.gw0.x1", b"data")]}


@pytest.mark.parametrize(
    "reply",
    [
        GOOD_REPLY,
        {"ok": [("../../escaped", b"x")]},
        {"ok": [("/tmp/.coverage.abs", b"x")]},
        {"ok": [(".coverage.sub/../x", b"x")]},
        {"ok": [(".coverage.gw0/", b"x")]},
        {"ok": [(".coverage.gw0\x00.x", b"x")]},
        {"ok": [("..", b"x")]},
        {"ok": [(b".coverage.gw0", b"x")]},
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


def test_agent_refuses_to_build_from_an_object_damaged_after_its_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the manifest's check and the build an object changes: the build is refused and
    the object removed (the next run sends it again); nothing is built from it."""
    from pytest_distcov.remote import agent
    from pytest_distcov.remote.shipping import digest_bytes

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    host = agent.Agent()
    host.setup({"run": "r1", "trees": []})
    content = b"X = 1\n"
    digest = digest_bytes(content)
    tree = {"name": "project", "digest": "d", "per_run": True}
    files = [["mod.py", digest, len(content), False]]
    assert host.manifests({"trees": [{**tree, "files": files}]}) == [digest]
    host.blobs({"items": [(digest, content)]})
    stored = Path(host._object(digest))
    stored.write_bytes(b"X = 9\n")
    with pytest.raises(agent.Refused, match="does not match its digest"):
        host.build({})
    assert not stored.exists()
    assert not (tmp_path / "xdg" / "pytest-distcov" / "runs" / "r1" / "project").exists()


def test_secret_looking_files_are_not_shipped_unless_included(tmp_path: Path) -> None:
    from pytest_distcov.secretnames import looks_secret

    project = tmp_path / "proj"
    secret = [
        ".env",
        ".env.production",
        ".envrc",
        "certs/server.pem",
        "deploy/tls.key",
        "keys/id_rsa",
        "keys/id_ed25519.pub",
        ".netrc",
        ".pypirc",
        ".git-credentials",
        "home/.ssh/config",
        "home/.aws/credentials",
        ".ENV",
        "certs/Client.P12",
        ".npmrc",
        ".pgpass",
        "ops/.kube/config",
        "ops/.docker/config.json",
        "home/.gnupg/pubring.kbx",
    ]
    plain = ["app.py", "id_utils.py", "docs/environment.md", "keyring.py", "envs/x.py"]
    for rel in secret + plain:
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(rel)
    assert [r for r in secret + plain if looks_secret(r)] == secret
    (project / "settings.py").symlink_to(project / ".env")  # a plain name for a secret
    secret.append("settings.py")
    bundle, _ = build_bundle(str(project), path=[])
    assert sorted(f.rel for f in bundle.project.files) == sorted(plain)
    assert sorted(bundle.secrets) == sorted(str(project / r) for r in secret)
    opted, _ = build_bundle(str(project), path=[], include=["certs/*.pem", ".envrc"])
    assert sorted(f.rel for f in opted.project.files) == sorted(
        [*plain, "certs/server.pem", ".envrc"]
    )
    assert len(opted.secrets) == len(secret) - 2


def test_links_out_of_a_tree_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private.txt").write_text("not the project's\n")
    project = tmp_path / "proj"
    (project / "pkg").mkdir(parents=True)
    (project / "pkg" / "mod.py").write_text("X = 1\n")
    (project / "inner.py").symlink_to(project / "pkg" / "mod.py")  # inside: shipped
    (project / "leak.txt").symlink_to(outside / "private.txt")
    (project / "dir").symlink_to(outside)  # a linked directory is not walked either
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "libmod.py").symlink_to(outside / "private.txt")
    bundle, _ = build_bundle(str(project), path=[str(lib)])
    assert sorted(f.rel for f in bundle.project.files) == ["inner.py", "pkg/mod.py"]
    assert [f.rel for t in bundle.packages if t.name == "packages-1" for f in t.files] == []
    assert sorted(bundle.outside_links) == sorted(
        [str(project / "leak.txt"), str(lib / "libmod.py")]
    )


@pytest.mark.parametrize("entry", ["~", "/"])
def test_home_or_root_on_sys_path_is_refused(tmp_path: Path, entry: str) -> None:
    from pytest_distcov.errors import RemoteError

    project = tmp_path / "proj"
    project.mkdir()
    what = "your home directory" if entry == "~" else "the root directory"
    with pytest.raises(RemoteError, match=f"sys.path holds .*, {what}: it would be shipped"):
        build_bundle(str(project), path=["", os.path.expanduser(entry)])


@pytest.mark.parametrize("root", ["home", "above home", "/"])
def test_a_rootdir_that_holds_the_home_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root: str
) -> None:
    """``pytest --distcov-remote=...`` run in the home directory (no ini file found: the
    rootdir is the working directory) would ship ``~/.ssh``, ``~/.aws`` and the rest to every
    host: refused with one line, before a file is read."""
    from pytest_distcov.errors import RemoteError

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("secret")
    monkeypatch.setenv("HOME", str(home))
    rootdir = {"home": str(home), "above home": str(tmp_path), "/": "/"}[root]
    what = {
        "home": "your home directory",
        "above home": f"a directory that holds your home directory ({home})",
        "/": "the root directory",
    }[root]
    with pytest.raises(RemoteError) as caught:
        build_bundle(rootdir, path=[""])
    assert str(caught.value) == (
        f"--distcov-remote: pytest's rootdir is {rootdir!r}, {what}: the project would be"
        " shipped whole to every host; run pytest in the project's directory, or give"
        " --rootdir (or a pytest.ini, pyproject.toml, tox.ini or setup.cfg in the project)"
    )
    # the project below it is shipped as before
    project = home / "proj"
    project.mkdir()
    (project / "mod.py").write_text("x = 1\n")
    bundle, _ = build_bundle(str(project), path=[""])
    assert [f.rel for f in bundle.project.files] == ["mod.py"]


def test_a_late_answer_is_never_taken_for_the_next_one() -> None:
    """The real agent on a real execnet gateway (a local popen process), with one slow request:
    the controller gives up waiting, the answer arrives later, and the next request still gets
    its own answer."""
    import inspect

    import execnet

    from pytest_distcov.errors import RemoteError
    from pytest_distcov.remote import agent
    from pytest_distcov.remote.fleet import HostSession

    source = inspect.getsource(agent).replace('if __name__ == "__channelexec__":', "if False:")
    source += (
        "\nAgent.slow = lambda self, msg: (time.sleep(msg['seconds']), 'slow')[1]\nserve(channel)\n"
    )
    gateway = execnet.makegateway("popen")
    try:
        channel = gateway.remote_exec(source)
        host = HostSession(parse_hosts(["h"])[0], 1, gateway=gateway, channel=channel)
        with pytest.raises(execnet.TimeoutError):
            host.request({"op": "slow", "seconds": 1.0}, timeout=0.2)
        time.sleep(1.5)  # the late answer is on the channel now
        assert host.request({"op": "ping"}, timeout=30) == "pong"
        channel.send({"op": "ping", "id": 99})  # its answer answers no request made
        with pytest.raises(RemoteError, match=r"^h: a malformed reply"):
            host.request({"op": "ping"}, timeout=30)
        channel.send(None)
    finally:
        gateway.exit()


# -- the host cache: pruning, concurrent builds, what the agent touches ----------------------


def _tree_of(name: str, contents: dict[str, bytes], *, per_run: bool = False) -> dict[str, Any]:
    """A tree as the controller describes it to the agent (with its file list)."""
    from pytest_distcov.remote.shipping import FileEntry, Tree, digest_bytes

    entries = tuple(
        FileEntry(rel, digest_bytes(data), len(data), False) for rel, data in contents.items()
    )
    tree = Tree(name, (("", "/nowhere"),), entries, per_run=per_run)
    return {
        "name": name,
        "digest": tree.digest,
        "per_run": per_run,
        "files": [list(f.wire()) for f in entries],
    }


def _ship_to(
    host: Any,
    trees: list[dict[str, Any]],
    contents: dict[str, bytes],
    site_tree: str | None = None,
    **msg: Any,
) -> Any:
    """What the controller does with an agent: setup, manifests, blobs, build; the build's
    answer. Stored contents the build finds damaged are sent again once, and the build asked
    again, as the controller does (``Fleet``): another run's agent sharing the cache may be
    storing or pruning the same contents meanwhile."""
    from pytest_distcov.remote.shipping import digest_bytes

    by_digest = {digest_bytes(c): c for c in contents.values()}
    info = host.setup(
        {
            "run": msg.pop("run"),
            "trees": [{k: t[k] for k in ("name", "digest", "per_run")} for t in trees],
            **msg,
        }
    )
    todo = [t for t in trees if t["name"] not in info["have"]]
    if todo:
        missing = host.manifests({"trees": todo})
        host.blobs({"items": [(d, by_digest[d]) for d in missing]})
    request = {"overrides": [], "resend": True, "site_tree": site_tree}
    paths = host.build(request)
    if isinstance(paths, dict) and "damaged" in paths:
        host.blobs({"items": [(d, by_digest[d]) for d in paths["damaged"]]})
        paths = host.build(request)
    return info, paths


def _cache_of(tmp_path: Path) -> Path:
    return tmp_path / "xdg" / "pytest-distcov"


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_the_host_cache_is_pruned_least_recently_used_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three finished runs left a tree each; the cache may hold two of them: the one used
    longest ago goes (objects first, they are older still), the others stay whole."""
    from pytest_distcov.remote import agent

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cache = _cache_of(tmp_path)
    trees = []
    for i in range(3):
        contents = {f"m{i}.py": bytes([65 + i]) * 1000}
        tree = _tree_of("packages-1", contents)
        host = agent.Agent()
        _info, paths = _ship_to(host, [tree], contents, run=f"r{i}")
        assert Path(paths["packages-1"], f"m{i}.py").read_bytes() == contents[f"m{i}.py"]
        host.cleanup({"dirs": []})
        trees.append(Path(paths["packages-1"]))
    for obj in (cache / "objects").rglob("*"):
        _age(obj, 3000)  # files last used long ago
    for i, tree in enumerate(trees):
        _age(tree / ".distcov-complete", 1000 - 100 * i)  # r0's tree longest ago
    host = agent.Agent()
    info = host.setup({"run": "r3", "trees": [], "cache_size": 2500})
    assert info["pruned"] == {
        "objects": 3,
        "trees": 1,
        "envs": 0,
        "leftovers": 0,
        "freed": 3000 + 1000,
        "size": 2000,
    }
    assert not trees[0].exists()
    for tree in trees[1:]:
        assert (tree / ".distcov-complete").is_file()
    assert not list((cache / "trees").glob("*.stale"))
    # under the limit: nothing to prune, nothing said
    host.cleanup({})
    again = agent.Agent().setup({"run": "r4", "trees": [], "cache_size": 2500})
    assert again["pruned"] is None


def test_a_live_runs_directory_and_what_it_uses_are_never_pruned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose lock is held (its agent lives) keeps its directory, its tree and its
    environment through another run's setup with a tiny cache size; what nobody uses goes,
    and so do old leftovers of interrupted builds."""
    from pytest_distcov.remote import agent

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cache = _cache_of(tmp_path)
    contents = {"lib.py": b"L = 1\n" * 100}
    live = agent.Agent()
    _info, paths = _ship_to(live, [_tree_of("packages-1", contents)], contents, run="live")
    tree = Path(paths["packages-1"])
    old = {"old.py": b"O = 1\n" * 100}
    finished = agent.Agent()
    _info, old_paths = _ship_to(finished, [_tree_of("packages-1", old)], old, run="done")
    finished.cleanup({"dirs": []})
    # the live run's environment (made around its site tree)
    live.pending.clear()
    env_paths = live.build({"site_tree": "packages-1", "overrides": []})
    env = Path(env_paths["venv-python"]).parent.parent
    leftover = cache / "trees" / "abc.1.x.building"
    leftover.mkdir()
    _age(leftover, 2 * agent.LEFTOVER_AGE)
    fresh = cache / "trees" / "def.1.x.building"  # someone's build under way (not ours)
    fresh.mkdir()
    for path in [*cache.rglob("*")]:  # everything old: only the locks and uses keep things
        if path.is_file() and not path.name.endswith(".lock"):
            _age(path, 5000)

    other = agent.Agent()
    info = other.setup({"run": "other", "trees": [], "cache_size": 1})
    assert (cache / "runs" / "live").is_dir()
    assert (cache / "runs" / "live" / "distcov.lock").is_file()
    assert (tree / ".distcov-complete").is_file()
    assert (tree / "lib.py").read_bytes() == contents["lib.py"]
    assert (env / ".distcov-complete").is_file()
    assert not Path(old_paths["packages-1"]).exists()
    assert not leftover.exists()
    assert fresh.exists()
    assert not [p for p in (cache / "objects").rglob("*") if p.is_file()]
    assert info["pruned"]["trees"] == 1
    assert info["pruned"]["leftovers"] == 1
    assert info["removed"] == 0  # the live run's directory is not a killed run's
    other.cleanup({})
    live.cleanup({})
    # the live run is over: its tree is pruned by the next run that needs the room
    last = agent.Agent().setup({"run": "last", "trees": [], "cache_size": 1})
    assert last["pruned"]["trees"] == 1
    assert not tree.exists()
    assert not env.exists()


def test_pruning_waits_for_no_run_and_never_takes_what_a_run_is_building_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run between its manifest's answer and its build holds the cache lock shared: another
    run's setup does not prune then (it would take the objects the build copies), and
    pruning happens at the next setup after the build."""
    from pytest_distcov.remote import agent
    from pytest_distcov.remote.shipping import digest_bytes

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    contents = {"a.py": b"A = 1\n" * 50, "b.py": b"B = 2\n" * 50}
    first = agent.Agent()
    _ship_to(first, [_tree_of("project", contents, per_run=True)], contents, run="r1")
    first.cleanup({})
    building = agent.Agent()
    project = _tree_of("project", contents, per_run=True)
    building.setup({"run": "r2", "trees": [], "cache_size": 1 << 30})
    assert building.manifests({"trees": [project]}) == []  # every object is there
    other = agent.Agent()
    assert other.setup({"run": "r3", "trees": [], "cache_size": 1})["pruned"] is None
    paths = building.build({"overrides": []})
    assert Path(paths["project"], "a.py").read_bytes() == contents["a.py"]
    other.cleanup({})
    after = agent.Agent().setup({"run": "r4", "trees": [], "cache_size": 1})
    assert after["pruned"]["objects"] == 2
    assert not Path(building._object(digest_bytes(contents["a.py"]))).exists()
    building.cleanup({})


#: One agent process of the concurrency test: for each round, wait at the barrier (a line on
#: stdin), then ship to its own agent as the controller would, check what it got and clean up.
_BUILDER = r"""
import json, os, sys
from pathlib import Path
from typing import Any
from pytest_distcov.remote import agent
sys.path.insert(0, sys.argv[2])
from tests.test_remote_units import _ship_to
os.umask(0o077)
rounds = json.loads(Path(sys.argv[1]).read_text())
out = []
for i, (trees, contents, size) in enumerate(rounds):
    contents = {k: bytes.fromhex(v) for k, v in contents.items()}
    print("ready", flush=True)
    sys.stdin.readline()
    host = agent.Agent()
    _info, paths = _ship_to(host, trees, contents, run=f"{os.getpid()}-{i}", cache_size=size,
                        site_tree="packages-1")
    for tree in trees:
        built = Path(paths[tree["name"]])
        if not tree["per_run"]:
            assert (built / ".distcov-complete").read_text() == tree["digest"], built
        for rel, _d, _s, _x in tree["files"]:
            assert (built / rel).read_bytes() == contents[rel], (built, rel)
    assert Path(paths["venv-python"]).parent.parent.joinpath(".distcov-complete").is_file()
    out.append(paths)
    host.cleanup({"dirs": []})
print(json.dumps(out), flush=True)
"""


def test_two_runs_building_the_same_trees_at_once_both_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two agent processes, one cache: in every round both start at once (a barrier) and ship
    the same trees (a site tree with its environment, and a project); both get complete,
    verified trees, whichever installed them, with pruning under way in some rounds."""
    import json

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    rounds = []
    for i in range(6):
        site = {f"pkg/m{j}.py": f"X = {i * 1000 + j}\n".encode() * 20 for j in range(150)}
        project = {"test_a.py": f"def test_a(): assert {i}\n".encode()}
        trees = [_tree_of("packages-1", site), _tree_of("project", project, per_run=True)]
        contents = {k: v.hex() for k, v in {**site, **project}.items()}
        rounds.append([trees, contents, 1 if i % 2 else 1 << 30])
    spec = tmp_path / "rounds.json"
    spec.write_text(json.dumps(rounds))
    here = str(Path(__file__).parents[1])  # where `tests` is a package
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILDER, str(spec), here],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        for _ in range(2)
    ]
    try:
        for _round in rounds:
            for proc in procs:  # both are at the barrier
                assert proc.stdout is not None
                line = proc.stdout.readline()
                assert line == "ready\n", line + (proc.stderr.read() if proc.stderr else "")
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
        answers = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            answers.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    for left, right in zip(*answers, strict=True):
        assert left["packages-1"] == right["packages-1"]  # one shared copy
        assert left["project"] != right["project"]  # a copy each
    cache = _cache_of(tmp_path)
    assert not list((cache / "trees").glob("*.building"))
    assert not list((cache / "objects").rglob("*.tmp"))


def test_fetch_and_cleanup_stay_in_this_runs_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the controller sends: fetch reads only regular files (no link, no FIFO, not
    too big) in a directory directly in this run's directory; cleanup removes nothing else."""
    from pytest_distcov.remote import agent

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    host = agent.Agent()
    info = host.setup({"run": "r1", "trees": []})
    run_dir = Path(info["run_dir"])
    worker = run_dir / "distcov-gw0-abc"
    worker.mkdir()
    (worker / ".coverage.gw0").write_bytes(b"data")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / ".coverage.x").write_bytes(b"not the run's")
    (worker / ".coverage.link").symlink_to(secret / ".coverage.x")
    os.mkfifo(worker / ".coverage.fifo")
    (run_dir / "linked").symlink_to(secret)
    assert host.fetch({"dir": str(worker), "pattern": ".coverage.*"}) == [
        (".coverage.gw0", b"data")
    ]
    for bad in [
        str(secret),
        str(run_dir),
        str(run_dir / "linked"),
        f"{run_dir}/distcov-gw0-abc/..",
        f"{run_dir}/../r1/distcov-gw0-abc",
        str(tmp_path),
        "relative",
        ["not", "a", "path"],
    ]:
        with pytest.raises(agent.Refused, match="not a worker directory of this run"):
            host.fetch({"dir": bad, "pattern": ".coverage.*"})
    with pytest.raises(agent.Refused, match="not a file name pattern"):
        host.fetch({"dir": str(worker), "pattern": "../*"})
    monkeypatch.setattr(agent, "FETCH_MAX", 3)
    with pytest.raises(agent.Refused, match=r"\.coverage\.gw0 is 4 bytes, more than"):
        host.fetch({"dir": str(worker), "pattern": ".coverage.*"})
    answer = host.cleanup({"dirs": [str(secret), str(run_dir / "linked"), str(worker), "/"]})
    assert answer == {"removed": 2, "ignored": 3}
    assert (secret / ".coverage.x").read_bytes() == b"not the run's"
    assert not run_dir.exists()


def test_a_damaged_object_is_named_for_sending_again_when_the_controller_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build checks every object it copies (the manifest checks only sizes): a damaged
    one is removed and named, the tree that needs it stays pending, and the next build
    (with the object sent again) builds it."""
    from pytest_distcov.remote import agent
    from pytest_distcov.remote.shipping import digest_bytes

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    contents = {"a.py": b"A = 1\n", "b.py": b"B = 2\n"}
    site = {"lib.py": b"L = 3\n"}
    host = agent.Agent()
    _ship_to(host, [_tree_of("project", contents, per_run=True)], contents, run="r0")
    host.cleanup({})
    host = agent.Agent()
    project = _tree_of("project", contents, per_run=True)
    lib = _tree_of("packages-1", site)
    host.setup({"run": "r1", "trees": [project, lib]})
    missing = host.manifests({"trees": [project, lib]})
    assert missing == [digest_bytes(site["lib.py"])]
    host.blobs({"items": [(missing[0], site["lib.py"])]})
    damaged = digest_bytes(b"A = 1\n")
    stored = Path(host._object(damaged))
    stored.write_bytes(b"A = 9\n")  # same size: the manifest took it
    assert host.build({"overrides": [], "resend": True}) == {"damaged": [damaged]}
    assert not stored.exists()
    assert list(host.pending) == ["project"]  # the site tree was built
    host.blobs({"items": [(damaged, b"A = 1\n")]})
    paths = host.build({"overrides": []})
    assert Path(paths["project"], "a.py").read_bytes() == b"A = 1\n"
    assert Path(paths["packages-1"], "lib.py").read_bytes() == b"L = 3\n"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("host", 5),
        ("version", "3.12"),
        ("version", [3]),
        ("stdlib", "/usr/lib"),
        ("stdlib", [b"/usr/lib"]),
        ("have", None),
        ("removed", -1),
        ("removed", True),
        ("has_packages", "yes"),
        ("run_dir", "relative/run"),
        ("pruned", {"trees": "many"}),
        ("pruned", [1]),
    ],
)
def test_a_malformed_setup_answer_is_one_line_naming_the_host(
    field: str, value: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hostile stand-in agent answers the setup with one field wrong: Fleet.start fails
    with one line naming the host and the field, not a TypeError far away."""
    import execnet

    from pytest_distcov.errors import RemoteError
    from pytest_distcov.remote import fleet as fleet_module
    from pytest_distcov.remote.fleet import Fleet
    from pytest_distcov.settings.hosts import HostSpec

    good = {
        "host": "h",
        "python": "3.x",
        "version": list(sys.version_info[:2]),
        "executable": "/usr/bin/python3",
        "stdlib": ["/usr/lib/python3"],
        "site": [],
        "cache": "/c",
        "run_dir": "/c/runs/1",
        "have": [],
        "removed": 0,
        "has_packages": False,
        "pruned": None,
    }
    assert fleet_module._setup_answer("h", good) == good
    # the stand-in: its first message is the reply it then gives to every request
    source = _HOSTILE_AGENT.replace("reply = channel.receive()\n", "")
    source = f"reply = {{'ok': { ({**good, field: value})!r}}}\n" + source
    monkeypatch.setattr(HostSpec, "xspec", lambda self, id: f"popen//id={id}")
    monkeypatch.setattr(fleet_module, "remote_agent", source)
    fleet = Fleet(parse_hosts(["evil"]), build_bundle(str(tmp_path), path=[])[0], timeout=60)
    with pytest.raises(RemoteError) as info:
        fleet.start()
    message = str(info.value)
    assert message.startswith("evil: a malformed setup answer from the host: "), message
    assert "\n" not in message
    assert fleet.closed
    assert isinstance(execnet.Group, type)


def test_include_patterns_that_match_nothing_are_named(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / "certs").mkdir(parents=True)
    (project / "certs" / "server.pem").write_text("x")
    (project / "app.py").write_text("x")
    bundle, _ = build_bundle(str(project), path=[], include=["certs/*.pem", "app.py", "keys/*.key"])
    assert "certs/server.pem" in [f.rel for f in bundle.project.files]
    assert bundle.unused_include == ("app.py", "keys/*.key")


@pytest.mark.parametrize(
    ("value", "size"), [("500M", 500 << 20), ("2G", 2 << 30), ("4096", 4096), ("1kb", 1024)]
)
def test_the_remote_cache_size(pytester: pytest.Pytester, value: str, size: int) -> None:
    from pytest_distcov.settings.options import REMOTE_CACHE_SIZE, Layers

    config = pytester.parseconfig(f"--distcov-remote-cache-size={value}")
    assert REMOTE_CACHE_SIZE.value(Layers(config)) == size
    assert REMOTE_CACHE_SIZE.value(Layers(pytester.parseconfig())) == 2 << 30


def test_the_header_names_unused_include_patterns_and_what_pruning_removed(
    tmp_path: Path,
) -> None:
    from pytest_distcov.remote.fleet import Fleet, RemoteHooks

    (tmp_path / "app.py").write_text("x")
    bundle, _ = build_bundle(str(tmp_path), path=[], include=["keys/*.key", "*.pem"])
    fleet = Fleet(parse_hosts(["h1", "h2"]), bundle)
    try:
        fleet.hosts[0].report.pruned = {"trees": 12, "envs": 1, "objects": 0, "size": 2040 << 20}
        header = RemoteHooks(fleet).pytest_report_header()
    finally:
        fleet.close()
    assert (
        "distcov: distcov_remote_include patterns that matched no file that looks like a secret"
        " (they include nothing): keys/*.key, *.pem"
    ) in header
    assert "distcov: host h1: cache pruned to 2.0 GiB (removed 12 trees, 1 environment)" in header
    assert not [line for line in header if line.startswith("distcov: host h2: cache")]


def _project_with_secrets_and_links(tmp_path: Path) -> tuple[Path, Path]:
    """A project with a secret, git's config, a link to a key outside it and a linked
    directory outside it; and that outside directory."""
    outside = tmp_path / "outside"
    (outside / "ssh").mkdir(parents=True)
    (outside / "ssh" / "id_rsa").write_text("-----BEGIN KEY-----\n")
    (outside / "ssh" / "notes.py").write_text("HOST_KEY = 'x'\n")
    proj = tmp_path / "proj"
    (proj / "pkg").mkdir(parents=True)
    (proj / "pkg" / "mod.py").write_text("X = 1\n")
    (proj / ".env").write_text("TOKEN=s3cret\n")
    (proj / ".git").mkdir()
    (proj / ".git" / "config").write_text("[remote]\nurl = https://u:tok@h/r\n")
    (proj / "leak.py").symlink_to(outside / "ssh" / "id_rsa")
    (proj / "linked").symlink_to(outside / "ssh")
    return outside, proj


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths and symlinks")
def test_a_hosts_paths_come_home_only_as_files_shipped_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host's data may name a shipped file (mapped home), a file under a tree that only
    the host has (kept: nothing here is read, unless its name looks private), or with the
    host's own packages a module in its site-packages (when no such file is here, or it is
    one of this machine's installed packages). A local file that was not shipped (a secret
    left out, git's config, a link out of the tree, a file under a linked directory) is
    refused, by any path that leads to it, absolute or relative; so is a relative name of no
    file here (a later report elsewhere could find one), and a local file under a directory
    the host merely says is its site-packages."""
    import sysconfig

    from pytest_distcov.errors import UntrustedPath
    from pytest_distcov.remote.fleet import Fleet, HostSession

    outside, proj = _project_with_secrets_and_links(tmp_path)
    claimed = tmp_path / "lib" / "site-packages"  # no site-packages of this machine's
    claimed.mkdir(parents=True)
    (claimed / "private_cfg.py").write_text("PASSWORD = 's3cret'\n")
    own_site = sysconfig.get_paths()["purelib"]
    own_module = os.path.join(own_site, "pytest", "__init__.py")
    assert os.path.isfile(own_module)
    bundle = build_bundle(str(proj), path=[])[0]
    assert {f.rel for f in bundle.project.files} == {"pkg/mod.py"}
    fleet = Fleet([], bundle)
    try:
        host = HostSession(
            parse_hosts(["h1"])[0],
            1,
            info={
                "has_packages": True,
                "site": [
                    "/usr/lib/python3/dist-packages",
                    "/home/u",
                    "/opt/sp/../x",
                    own_site,
                    str(claimed),
                ],
            },
            trees={bundle.project.name: "/r/proj"},
        )
        to_local = fleet.path_mapper(host)
        monkeypatch.chdir(proj)
        real = os.path.realpath(proj)
        assert to_local("/r/proj/pkg/mod.py") == os.path.join(real, "pkg", "mod.py")
        assert to_local("/r/proj/made_on_host.py") == os.path.join(real, "made_on_host.py")
        assert to_local("pkg/mod.py") == os.path.join("pkg", "mod.py")
        assert to_local("pkg/./mod.py") == os.path.join("pkg", "mod.py")
        host_only = "/usr/lib/python3/dist-packages/no_such_pkg_here/mod.py"
        assert to_local(host_only) == host_only
        assert to_local(own_module) == own_module
        not_shipped = "a file here that was not shipped to it"
        outside_trees = "outside the trees shipped to that host"
        private = "a file that looks like a secret"
        for path, why in [
            ("/r/proj/.env", private),
            ("/r/proj/.git/config", private),
            ("/r/proj/.env.local", private),  # not here: a later report must not find one
            ("/r/proj/deploy/.ENV", private),
            ("/r/proj/leak.py", not_shipped),
            ("/r/proj/linked/id_rsa", private),
            ("/r/proj/linked/notes.py", not_shipped),
            ("/r/proj/pkg/../.env", private),
            (".env", private),
            ("linked/id_rsa", private),
            ("linked/notes.py", not_shipped),
            ("pkg/new.py", "a relative name of no file shipped to it"),
            (str(claimed / "private_cfg.py"), outside_trees),  # the host's word alone
            ("../outside/ssh/id_rsa", "which leads out of its root"),
            ("/r/proj/../../etc/passwd", outside_trees),
            ("/home/u/notes.py", outside_trees),  # a site entry that is no site-packages
            ("/usr/lib/python3/dist-packages/../../../etc/x.py", outside_trees),
            ("/usr/lib/python3/dist-packages/data.txt", outside_trees),  # .py files only
            (str(outside / "ssh" / "id_rsa"), outside_trees),
        ]:
            with pytest.raises(UntrustedPath, match=re.escape(why)):
                to_local(path)
        elsewhere = tmp_path / "elsewhere"  # on sys.path: coverage.py would look there too
        elsewhere.mkdir()
        (elsewhere / "local_settings.py").write_text("API_TOKEN = 's3cret'\n")
        monkeypatch.syspath_prepend(str(elsewhere))
        with pytest.raises(UntrustedPath, match=re.escape(not_shipped)):
            to_local("local_settings.py")
        host.info["has_packages"] = False  # shipped packages: no host site-packages taken
        with pytest.raises(UntrustedPath, match=outside_trees):
            fleet.path_mapper(host)(host_only)
    finally:
        fleet.close()

"""Real ssh hosts on this machine, with no daemon and no network: the lab for remote tests.

Each host is `sshd -i` started by the ssh client's ProxyCommand inside fresh mount and UTS
namespaces (root only). A host has its own hostname, its own `/srv`, `/tmp` and `~/.cache`
(directories under the lab, kept for the whole test session, so a host's cache stays warm
between tests like a real host's), and it cannot see the controller's virtualenv or checkout
(empty tmpfs over them), so the workers there have nothing but the Python they are given and
what pytest-distcov ships. It dies with the connection: there is nothing to clean up and no port
is opened. A name that is not a lab host fails like an unknown host (ssh exit 255), without any
DNS lookup. Connect with `ssh -F lab.ssh_config HOST`, or execnet's `//ssh_config=`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
DEBIAN_PYTHON = "/usr/bin/python3"
REPO = Path(__file__).resolve().parents[1]


def lab_unavailable() -> str | None:
    """Why no lab can be built here, or None."""
    if not Path(SSHD).exists():
        return f"{SSHD} is missing (apt-get install openssh-server)"
    if os.geteuid() != 0:
        return "the lab needs root (mount and UTS namespaces)"
    for tool in ("unshare", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} is missing"
    return None


def hidden_dirs() -> list[str]:
    """What a host must not see: the test environment's virtualenv and this checkout."""
    dirs = [str(REPO)]
    if sys.prefix != sys.base_prefix:
        dirs.append(os.path.realpath(sys.prefix))
    return dirs


def _minor(python: str) -> tuple[int, ...] | None:
    """(major, minor) of an interpreter, or None if it cannot be run."""
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return tuple(int(x) for x in out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def host_python(python: str | None = None) -> str:
    """A bare Python on the hosts with the minor version of ``python`` (default: this one):
    Debian's own where it matches, else the versioned interpreter of the system or of the base
    installation ``python``'s environment was made from (no packages). A machine may have no
    ``python3`` of this minor (a root with only python3.14 and python3.15, or pyenv's 3.13
    beside Debian's 3.11), so the versioned names are asked for too."""
    version: tuple[int, ...]
    if python is None:
        version, base = sys.version_info[:2], sys.base_prefix
    else:
        found = _minor(python)
        if found is None:
            raise RuntimeError(f"{python} cannot be run")
        version = found
        base = subprocess.check_output(
            [python, "-c", "import sys; print(sys.base_prefix)"], text=True
        ).strip()
    minor = f"python{version[0]}.{version[1]}"
    candidates = [
        DEBIAN_PYTHON,
        f"/usr/bin/{minor}",
        os.path.join(base, "bin", minor),
        os.path.join(base, "bin", "python3"),
    ]
    for cand in candidates:
        if _minor(cand) == version:
            return cand
    raise RuntimeError(f"no {minor} outside this environment among {candidates}")


def other_minor_python() -> str | None:
    """A Python on the hosts whose minor version differs from this one, if there is one."""
    candidates = [
        DEBIAN_PYTHON,
        *sorted(Path("/usr/bin").glob("python3.*[0-9]")),
        *sorted(Path("/root/.pyenv/versions").glob("3.*/bin/python3")),
    ]
    for cand in map(str, candidates):
        minor = _minor(cand)
        if minor is not None and minor != sys.version_info[:2]:
            return cand
    return None


@dataclass(frozen=True)
class SshLab:
    root: Path

    @property
    def ssh_config(self) -> Path:
        return self.root / "ssh_config"

    def add_host(self, host: str) -> Path:
        """Make ``host`` a known host; return the directory holding its filesystems."""
        base = self.root / "hostfs" / host
        for sub in ("srv", "tmp", "cache"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "tmp").chmod(0o1777)
        return base

    def srv(self, host: str) -> Path:
        """The directory a host sees as its /srv."""
        return self.add_host(host) / "srv"

    def ssh(self, host: str, command: str) -> subprocess.CompletedProcess[str]:
        self.add_host(host)
        return subprocess.run(
            ["ssh", "-F", str(self.ssh_config), host, command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def build_lab(root: Path, hide: list[str] | None = None) -> SshLab:
    run = root / "run"
    (run / "sshd").mkdir(parents=True)
    (root / "hostfs").mkdir()
    for key in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(run / key)], check=True
        )
    shutil.copy(run / "client_key.pub", run / "authorized_keys")
    # Read by sshd after the mounts, where the lab's run directory is /run.
    (run / "sshd_config").write_text(
        "HostKey /run/host_key\n"
        "UsePAM no\nStrictModes no\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin yes\n"
        "AuthorizedKeysFile /run/authorized_keys\nPidFile none\nLogLevel ERROR\n"
    )
    Path("/root/.cache").mkdir(parents=True, exist_ok=True)
    fs = f"{root}/hostfs/%n"
    steps = [
        f'[ -d {fs} ] || {{ echo "ssh: Could not resolve hostname %n" >&2; exit 255; }}',
        "hostname %n",
        f"mount --bind {run} /run",
        f"mount --bind {fs}/srv /srv",
        f"mount --bind {fs}/cache /root/.cache",
        f"mount --bind {fs}/tmp /tmp",  # last bind: the lab itself lives under /tmp
        *(f"{{ [ ! -d {d} ] || mount -t tmpfs tmpfs {d}; }}" for d in hide or hidden_dirs()),
        f"exec {SSHD} -i -f /run/sshd_config",
    ]
    proxy = "unshare --mount --uts --propagation private sh -c '" + " && ".join(steps) + "'"
    (root / "ssh_config").write_text(
        "Host *\n  User root\n"
        f"  IdentityFile {run}/client_key\n  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n"
        f"  LogLevel ERROR\n  ConnectTimeout 20\n  ProxyCommand {proxy}\n"
    )
    return SshLab(root)

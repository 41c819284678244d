"""Real ssh hosts on this machine, with no daemon and no network: the lab for remote tests.

Each host is `sshd -i` started by the ssh client's ProxyCommand inside fresh mount and UTS
namespaces (root only): it has its own hostname and its own `/srv` (a directory under the lab),
and it dies with the connection, so there is nothing to clean up and no port is opened.
Connections use the lab's own keys and ssh_config (`ssh -F lab.ssh_config HOST`, or execnet's
`//ssh_config=`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"


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


@dataclass(frozen=True)
class SshLab:
    root: Path

    @property
    def ssh_config(self) -> Path:
        return self.root / "ssh_config"

    def srv(self, host: str) -> Path:
        """The directory a host sees as its /srv."""
        path = self.root / "hostfs" / host
        path.mkdir(parents=True, exist_ok=True)
        return path

    def ssh(self, host: str, command: str) -> subprocess.CompletedProcess[str]:
        self.srv(host)
        return subprocess.run(
            ["ssh", "-F", str(self.ssh_config), host, command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def build_lab(root: Path) -> SshLab:
    (root / "run" / "sshd").mkdir(parents=True)
    (root / "hostfs").mkdir()
    for key in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / key)], check=True
        )
    shutil.copy(root / "client_key.pub", root / "authorized_keys")
    (root / "sshd_config").write_text(
        f"HostKey {root}/host_key\n"
        "UsePAM no\nStrictModes no\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin yes\n"
        f"AuthorizedKeysFile {root}/authorized_keys\nPidFile none\nLogLevel ERROR\n"
    )
    proxy = (
        "unshare --mount --uts --propagation private sh -c 'hostname %n"
        f" && mount --bind {root}/run /run && mount --bind {root}/hostfs/%n /srv"
        f" && exec {SSHD} -i -f {root}/sshd_config'"
    )
    (root / "ssh_config").write_text(
        "Host *\n  User root\n"
        f"  IdentityFile {root}/client_key\n  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n"
        f"  LogLevel ERROR\n  ConnectTimeout 20\n  ProxyCommand {proxy}\n"
    )
    return SshLab(root)

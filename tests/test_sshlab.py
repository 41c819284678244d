"""The ssh lab itself: several real hosts, each with its own hostname and /srv."""

from __future__ import annotations

import execnet
import pytest

from .sshlab import SshLab, host_python

pytestmark = pytest.mark.slow


def test_hosts_are_distinct(sshlab: SshLab) -> None:
    (sshlab.srv("alpha") / "mine").write_text("alpha's")
    a = sshlab.ssh("alpha", "hostname; cat /srv/mine")
    b = sshlab.ssh("beta", "hostname; ls /srv")
    assert a.returncode == 0, a.stderr
    assert a.stdout.split() == ["alpha", "alpha's"]
    assert b.stdout.split() == ["beta"]


def test_execnet_gateways_over_the_lab(sshlab: SshLab) -> None:
    group = execnet.Group()
    try:
        for host in ("alpha", "beta"):
            sshlab.srv(host)
            group.makegateway(
                f"ssh={host}//python={host_python()}//ssh_config={sshlab.ssh_config}//id={host}"
            )
        names = sorted(
            gw.remote_exec("import platform; channel.send(platform.node())").receive(timeout=30)
            for gw in group
        )
    finally:
        group.terminate(timeout=10)
    assert names == ["alpha", "beta"]

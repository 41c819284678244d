"""Remote host entries: ``[N*][user@]host[:port]`` or a full execnet ``ssh=`` spec.

Parsed when the options are resolved, so a typo is a usage error before anything connects.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pytest_distcov.errors import SettingsError

__all__ = ["HostSpec", "parse_hosts"]

#: ssh options for hosts given as [user@]host[:port]: never prompt (a prompt would hang the
#: run), give up on an unreachable host quickly, and notice a host that went away.
SSH_OPTIONS = (
    "-o BatchMode=yes -o ConnectTimeout=15 -o ServerAliveInterval=5 -o ServerAliveCountMax=3"
)
_HOST_RE = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)"
    r"(?::(?P<port>[0-9]{1,5}))?$"
)


@dataclass(frozen=True)
class HostSpec:
    """One entry of ``--distcov-remote``."""

    label: str  # as the user wrote it, without the N* prefix
    count: int
    ssh: str  # the value of execnet's ssh= key: ssh options and destination
    python: str
    ssh_config: str | None

    def xspec(self, **extra: str) -> str:
        parts = [f"ssh={self.ssh}", f"python={self.python}"]
        if self.ssh_config:
            parts.append(f"ssh_config={self.ssh_config}")
        parts.extend(f"{k}={v}" for k, v in extra.items())
        return "//".join(parts)


def _option_like(entry: str) -> SettingsError:
    return SettingsError(
        f"{entry!r} starts with '-': ssh would read it as an option, not a host; give a host"
        " name (ssh options go in --distcov-ssh-config or a full ssh= spec)"
    )


def _parse_one(entry: str, python: str, ssh_config: str | None) -> HostSpec:
    count = 1
    mult, star, rest = entry.partition("*")
    if star:
        if not mult.isdigit() or int(mult) < 1:
            raise SettingsError(f"{entry!r}: the worker count before '*' must be a number >= 1")
        count, entry = int(mult), rest.strip()
    # ssh takes a destination that starts with '-' for an option (-oProxyCommand=... runs a
    # command here): never let one through as a host, in either form.
    if entry.startswith("-"):
        raise _option_like(entry)
    if "=" in entry:
        import execnet  # only for a full spec: resolving the options stays light

        spec = execnet.XSpec(entry)
        keys = {k for k, v in vars(spec).items() if not k.startswith("_") and v}
        unknown = keys - {"ssh", "python", "ssh_config", "id"}
        if not spec.ssh or unknown:
            raise SettingsError(
                f"{entry!r}: a full spec must be an ssh spec with only ssh=, python= and"
                " ssh_config= keys, e.g. ssh=host//python=/opt/py/bin/python3"
            )
        if str(spec.ssh).split()[-1].startswith("-"):
            raise _option_like(str(spec.ssh).split()[-1])
        return HostSpec(
            label=str(spec.ssh).split()[-1],
            count=count,
            ssh=str(spec.ssh),
            python=str(spec.python or python),
            ssh_config=str(spec.ssh_config) if spec.ssh_config else ssh_config,
        )
    match = _HOST_RE.match(entry)
    if match and (match["host"].startswith("-") or (match["user"] or "").startswith("-")):
        raise _option_like(entry)
    if not match:
        raise SettingsError(
            f"{entry!r} is not a host: expected [N*][user@]host[:port] or an ssh= execnet spec"
        )
    dest = match["host"].strip("[]")
    if match["user"]:
        dest = f"{match['user']}@{dest}"
    port = f" -p {int(match['port'])}" if match["port"] else ""
    return HostSpec(entry, count, f"{SSH_OPTIONS}{port} {dest}", python, ssh_config)


def parse_hosts(
    entries: Iterable[str], *, python: str = "python3", ssh_config: str | None = None
) -> tuple[HostSpec, ...]:
    """Parse comma-separated host entries (each list item may hold several)."""
    hosts: list[HostSpec] = []
    for item in entries:
        for raw in item.split(","):
            if raw.strip():
                hosts.append(_parse_one(raw.strip(), python, ssh_config))
    labels = [h.label for h in hosts]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise SettingsError(f"host {dupes[0]!r} is given twice; use N*{dupes[0]} for N workers")
    return tuple(hosts)

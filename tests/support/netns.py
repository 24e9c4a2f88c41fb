"""Hosts made of network namespaces, for the fault-injection tests and bench/hosts.py.

Each host is a network namespace joined to this one by a veth pair: this side
is the server's host, and a process started inside the namespace reaches it
only over the pair, so taking the pair's inner end down cuts that host off.
Needs Linux, root (CAP_NET_ADMIN) and iproute2 (``ip``); :func:`make_host`
says which is missing instead of failing half-way.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass


class Unavailable(Exception):
    """This machine cannot make network namespaces; the message says why."""


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@dataclass
class Host:
    """A network namespace and the veth pair joining it to this host."""

    namespace: str
    host_side: str
    inner_side: str
    host_address: str  # this side's end: where the namespace reaches us
    inner_address: str

    def down(self) -> None:
        result = ip("-n", self.namespace, "link", "set", self.inner_side, "down")
        assert result.returncode == 0, result.stderr

    def up(self) -> None:
        result = ip("-n", self.namespace, "link", "set", self.inner_side, "up")
        assert result.returncode == 0, result.stderr

    def inside(self, command: list[str]) -> list[str]:
        """``command`` run in this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *command]

    def remove(self) -> None:
        ip("netns", "del", self.namespace)  # takes the veth pair with it
        ip("link", "del", self.host_side)


def check_support() -> None:
    if not sys.platform.startswith("linux"):
        raise Unavailable("network namespaces are a Linux feature")
    if shutil.which("ip") is None:
        raise Unavailable("iproute2 ('ip') is not installed: apt-get install iproute2")
    if os.geteuid() != 0:
        raise Unavailable("creating a network namespace needs root (CAP_NET_ADMIN)")


def _free_block() -> str:
    taken = ip("-o", "-4", "addr", "show").stdout
    return next(
        b for b in (f"10.213.{random.randrange(256)}" for _ in range(100)) if f" {b}." not in taken
    )


def make_host(prefix: str = "qwchaos") -> Host:
    """A new namespace with its veth pair up; :class:`Unavailable` if it cannot be made."""
    check_support()
    tag = uuid.uuid4().hex[:8]
    block = _free_block()
    host = Host(f"{prefix}-{tag}", f"qwh{tag}", f"qwn{tag}", f"{block}.1", f"{block}.2")
    created = ip("netns", "add", host.namespace)
    if created.returncode != 0:
        raise Unavailable(f"cannot create a network namespace: {created.stderr.strip()}")
    pair = ["type", "veth", "peer", "name", host.inner_side, "netns", host.namespace]
    steps = [
        ["link", "add", host.host_side, *pair],
        ["addr", "add", f"{host.host_address}/30", "dev", host.host_side],
        ["link", "set", host.host_side, "up"],
        ["-n", host.namespace, "addr", "add", f"{host.inner_address}/30", "dev", host.inner_side],
        ["-n", host.namespace, "link", "set", host.inner_side, "up"],
        ["-n", host.namespace, "link", "set", "lo", "up"],
    ]
    for step in steps:
        result = ip(*step)
        if result.returncode != 0:
            host.remove()
            raise Unavailable(f"cannot set up a veth pair (ip {' '.join(step)}): {result.stderr}")
    entered = ip("netns", "exec", host.namespace, sys.executable, "-c", "pass")
    if entered.returncode != 0:
        host.remove()
        raise Unavailable(f"cannot run a process in a network namespace: {entered.stderr.strip()}")
    return host

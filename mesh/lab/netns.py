"""Hosts on one machine: a network namespace each, veths on one bridge, private addresses inside.

Only addresses in one private /24 (10.77.0.0/24 by default) are used, inside these namespaces and
on the bridge; nothing is routed off the machine.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip()}")
    return result


@dataclass
class Host:
    name: str
    netns: str
    address: str
    veth: str

    def nsenter(self) -> list[str]:
        return ["nsenter", f"--net=/var/run/netns/{self.netns}"]


class Network:
    """A bridge in the root namespace (<subnet>.1) and hosts at <subnet>.10, .11, ..."""

    def __init__(self, tag: str | None = None, subnet: str = "10.77.0") -> None:
        self.tag = tag or f"{os.getpid() % 10000:04d}"
        self.subnet = subnet
        self.bridge = f"cmbr{self.tag}"
        self.hosts: list[Host] = []
        self._clear_leftovers()
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{subnet}.1/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        # A dockerd with iptables on elsewhere may have set FORWARD to DROP; let the bridge pass.
        subprocess.run(["iptables", "-I", "FORWARD", "-i", self.bridge, "-j", "ACCEPT"], capture_output=True)

    def _clear_leftovers(self) -> None:
        """A run that was killed hard leaves its bridge and namespaces behind; same names, same run."""
        prefix = f"cm{self.tag}"
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for line in listed.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(prefix):
                ip("netns", "del", name, check=False)
        ip("link", "del", self.bridge, check=False)

    def add_host(self, name: str) -> Host:
        index = len(self.hosts)
        netns = f"cm{self.tag}{name}"
        veth = f"cmv{self.tag}{index}"
        address = f"{self.subnet}.{10 + index}"
        ip("netns", "add", netns)
        ip("link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
        ip("link", "set", f"{veth}p", "netns", netns)
        ip("link", "set", f"{veth}p", "name", "eth0", netns=netns)
        ip("addr", "add", f"{address}/24", "dev", "eth0", netns=netns)
        ip("link", "set", "eth0", "up", netns=netns)
        ip("link", "set", "lo", "up", netns=netns)
        ip("link", "set", veth, "master", self.bridge)
        ip("link", "set", veth, "up")
        ip("route", "add", "224.0.0.0/4", "dev", "eth0", netns=netns)  # mDNS across the bridge
        host = Host(name, netns, address, veth)
        self.hosts.append(host)
        return host

    def destroy(self) -> None:
        for host in self.hosts:
            ip("link", "del", host.veth, check=False)
            ip("netns", "del", host.netns, check=False)
        ip("link", "del", self.bridge, check=False)
        subprocess.run(["iptables", "-D", "FORWARD", "-i", self.bridge, "-j", "ACCEPT"], capture_output=True)

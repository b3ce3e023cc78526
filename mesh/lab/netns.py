"""Hosts on one machine: a network namespace each, veths on one bridge, private addresses inside.

Only addresses in one private /24 are used, inside these namespaces and on the bridge; nothing is
routed off the machine. Several networks may exist at once (other test runs, the demo, other
users of the machine): a network made without an explicit tag and subnet takes a tag whose bridge
does not exist and a /24 in 10.77.0.0/16 that no interface on the machine uses, chosen under a
machine-wide lock so two runs starting together cannot pick the same one.
"""

from __future__ import annotations

import fcntl
import ipaddress
import random
import subprocess
from dataclasses import dataclass

LOCK = "/run/cachemesh-netns.lock"


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

    def __init__(self, tag: str | None = None, subnet: str | None = None) -> None:
        """`tag` names the bridge and namespaces; an explicit one (the demo's) clears what a killed
        run with the same tag left behind. Without one, and without a subnet, both are chosen free."""
        self.hosts: list[Host] = []
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # held until the bridge holds its subnet
            if tag is None:
                tag = _free_tag()
            else:
                self.tag = tag
                self._clear_leftovers()
            self.tag = tag
            self.subnet = subnet or _free_subnet()
            self.bridge = f"cmbr{self.tag}"
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
        # A dockerd with iptables on elsewhere may have set FORWARD to DROP; let the bridge pass.
        subprocess.run(["iptables", "-I", "FORWARD", "-i", self.bridge, "-j", "ACCEPT"], capture_output=True)

    def _clear_leftovers(self) -> None:
        """A run that was killed hard leaves its bridge and namespaces behind; same names, same run."""
        prefix = f"cm{self.tag}"
        self.bridge = f"cmbr{self.tag}"
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

    def limit(self, host: Host, mbit: int) -> None:
        """Shape the host's link to `mbit` Mbit/s each way, like a NIC of that speed: a token
        bucket on the bridge side of its veth (what the host receives) and on its eth0 (what it
        sends). The bucket holds a few milliseconds of traffic, as a real link's queue would."""
        burst = max(32 << 10, mbit * 1_000_000 // 8 // 200)  # 5 ms at line rate
        for dev, netns in ((host.veth, None), ("eth0", host.netns)):
            cmd = ["tc", *(["-n", netns] if netns else []), "qdisc", "replace", "dev", dev, "root"]
            cmd += ["tbf", "rate", f"{mbit}mbit", "burst", str(burst), "latency", "50ms"]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip()}")

    def destroy(self) -> None:
        for host in self.hosts:
            ip("link", "del", host.veth, check=False)
            ip("netns", "del", host.netns, check=False)
        ip("link", "del", self.bridge, check=False)
        subprocess.run(["iptables", "-D", "FORWARD", "-i", self.bridge, "-j", "ACCEPT"], capture_output=True)


def _free_tag() -> str:
    """Four hex characters no bridge or namespace on this machine uses yet."""
    links = ip("-o", "link", "show").stdout
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    while True:
        tag = f"{random.getrandbits(16):04x}"
        if f"cmbr{tag}" not in links and f"cm{tag}" not in spaces:
            return tag


def _free_subnet() -> str:
    """A /24 in 10.77.0.0/16 that no interface on this machine is addressed in."""
    used = set()
    for line in ip("-o", "-4", "addr", "show").stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            net = ipaddress.ip_interface(fields[fields.index("inet") + 1]).network
            used.add(net)
    candidates = [f"10.77.{i}" for i in range(256)]
    random.shuffle(candidates)
    for prefix in candidates:
        subnet = ipaddress.ip_network(f"{prefix}.0/24")
        if not any(subnet.overlaps(u) for u in used):
            return prefix
    raise RuntimeError("no free /24 left in 10.77.0.0/16 on this machine")

"""Two namespaced hosts with real engines move an image whose layer holds a known marker, while
tcpdump captures the peer port (TCP and UDP) on the link. With TLS (the default) the capture holds
neither the marker nor any msgpack key or HTTP header of the protocol, nor the node IDs every
gossip envelope names (small gossip crosses in sealed datagrams). The same run with `--tls off
--insecure` is the control: there the capture does show them, so the check can fail."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from mesh.lab.dockerd import import_base
from mesh.lab.poll import wait_until
from tests.test_integration_docker import build, start_host

pytestmark = [pytest.mark.docker, pytest.mark.netns, pytest.mark.slow]

# What the protocol puts on the wire in the clear if nothing encrypts it: the msgpack map keys
# (`{"image": ...}` asks for a save, `{"error": ...}` refuses), its paths and headers.
PROTOCOL_BYTES = [b"\xa5image", b"\xa5error", b"/v1/gossip", b"/v1/save", b"X-Cachemesh", b"x-tar"]


class Capture:
    def __init__(self, interface: str, path: Path) -> None:
        if not shutil.which("tcpdump"):
            pytest.skip("tcpdump not installed (scripts/test installs it)")
        self.path = path
        self.log = path.with_suffix(".log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    "tcpdump",
                    "-i",
                    interface,
                    "-B",
                    "65536",
                    "-s",
                    "0",
                    "-U",
                    "-n",
                    "-w",
                    str(path),
                    "port 7611",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(lambda: b"listening on" in self.log.read_bytes(), 10, 0.05, what="tcpdump listening")

    def stop(self, address: str) -> bytes:
        # tcpdump may lag behind the link on a loaded machine: send a sentinel over the captured
        # port after everything else, and stop only once it is in the file (so is all before it).
        sentinel = f"cachemesh-capture-sentinel-{uuid.uuid4().hex}".encode()
        with socket.create_connection((address, 7611), timeout=5) as sock:
            sock.sendall(sentinel)
        wait_until(lambda: sentinel in self.path.read_bytes(), 30, 0.1, what="capture caught up")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=10)
        # A capture that lost packets proves nothing about what crossed the link.
        log = self.log.read_text()
        dropped = re.search(r"(\d+) packets? dropped by kernel", log)
        assert dropped is not None and dropped.group(1) == "0", log
        return self.path.read_bytes()


def link_payloads(pcap: bytes) -> tuple[bytes, bytes]:
    """(TCP, UDP) payloads of a capture (Ethernet, IPv4). TCP is reassembled per connection and
    direction in capture order, so a marker that straddles two segments is still found; streams
    and datagrams are joined by NUL."""
    assert pcap[:4] == b"\xd4\xc3\xb2\xa1", "expected a little-endian microsecond pcap"
    flows: dict[bytes, list[bytes]] = {}
    datagrams: list[bytes] = []
    offset = 24
    while offset + 16 <= len(pcap):
        length = int.from_bytes(pcap[offset + 8 : offset + 12], "little")
        frame = pcap[offset + 16 : offset + 16 + length]
        offset += 16 + length
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] not in (6, 17):  # IPv4 TCP/UDP
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        total = int.from_bytes(ip[2:4], "big")
        if ip[9] == 17:
            datagrams.append(ip[ihl + 8 : total])
            continue
        tcp = ip[ihl:total]
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if payload:
            flows.setdefault(ip[12:20] + tcp[:4], []).append(payload)
    return b"\0".join(b"".join(parts) for parts in flows.values()), b"\0".join(datagrams)


@pytest.mark.parametrize("tls", ["on", "off"])
def test_the_link_carries_no_image_content_or_protocol_in_the_clear(network, engines, workdir, tls):
    marker = f"cachemesh-marker-{uuid.uuid4().hex}"
    env = {} if tls == "on" else {"CACHEMESH_TLS": "off", "CACHEMESH_INSECURE": "true"}
    os.environ.update(env)  # NodeProcess passes the environment on; restored below
    a = b = None
    try:
        a = start_host(network, engines, workdir, "a")
        capture = Capture(a.host.veth, workdir / "link.pcap")
        b = start_host(network, engines, workdir, "b", seeds=f"{a.host.address}:7611")
        wait_until(lambda: [p["state"] for p in b.node.api()["peers"]] == ["alive"], 20, what="b sees a")
        import_base(a.engine)
        build(a.engine, f'FROM base:1\nRUN echo "{marker}" > /marker\n', "secret:1")
        image = a.engine.image_id("secret:1")
        wait_until(lambda: b.engine.image_id("secret:1") == image, 30, 0.1, what="secret:1 on B")
        peer = b.node.api()["peers"][0]
        data, datagrams = link_payloads(capture.stop(a.host.address))
        node_ids = [a.node.api()["node"]["id"].encode(), b.node.api()["node"]["id"].encode()]
    finally:
        for key in env:
            os.environ.pop(key, None)
        for h in (b, a):
            if h is not None:
                h.node.stop()
    size = int(a.engine.cli("image", "inspect", "--format", "{{.Size}}", "secret:1").stdout)
    # The capture holds the transfer: the stream of the image and its base (the engine's size
    # figure runs a little above the saved tar's) crossed the link.
    assert len(data) > size // 2, (len(data), size)
    leaked = [p for p in [marker.encode(), *PROTOCOL_BYTES] if p in data + datagrams]
    # Gossip crossed in datagrams, and no datagram names a node.
    assert len(datagrams) > 1000 and not [i for i in node_ids if i in datagrams]
    if tls == "on":
        assert peer["tls"]["state"] == "verified" and peer["tls"]["version"] == "TLSv1.3"
        assert peer["gossip"] == {"datagrams": "sealed", "secret": "current"}
        assert not leaked and not [i for i in node_ids if i in data], f"in the clear on the link: {leaked}"
    else:
        assert peer["tls"] == {"state": "off"}
        assert marker.encode() in data and b"\xa5image" in data and b"/v1/save" in data  # the control

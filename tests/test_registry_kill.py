"""A peer killed mid-blob: the client still gets the whole blob, verified.

Three hosts (network namespaces), each a real node process (in-memory engine: no image is
involved). A and C hold a blob; their links are shaped to 40 Mbit/s so a fetch takes seconds. A
client pulls it through B; whichever of A and C is sending is SIGKILLed partway, and B finishes
from the other at the offset it reached.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import urllib.request

import pytest

from mesh.lab.nodes import NodeProcess
from mesh.lab.poll import wait_until

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def http(method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=120) as response:
        location = response.headers.get("Location", "")
        return location.encode() if method in ("POST", "PATCH") else response.read()


def push(registry: str, blob: bytes, config: bytes) -> None:
    descriptors = []
    for data in (config, blob):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        location = http("POST", f"http://{registry}/v2/big/blobs/uploads/").decode()
        http("PUT", f"http://{registry}{location}?digest={digest}", data)
        descriptors.append({"mediaType": "application/octet-stream", "digest": digest, "size": len(data)})
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptors[0],
        "layers": descriptors[1:],
    }
    http(
        "PUT",
        f"http://{registry}/v2/big/manifests/1",
        json.dumps(manifest).encode(),
        {"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )


def test_a_peer_killed_mid_blob(network, workdir) -> None:  # type: ignore[no-untyped-def]
    hosts = {name: network.add_host(name) for name in ("a", "c", "b")}
    nodes: dict[str, NodeProcess] = {}
    try:
        for name, host in hosts.items():
            env = {
                "CACHEMESH_DOCKER_HOST": "memory://",
                "CACHEMESH_LISTEN": f"{host.address}:7611",
                "CACHEMESH_REGISTRY_LISTEN": f"{host.address}:7613",
                "CACHEMESH_SEEDS": "" if name == "a" else f"{hosts['a'].address}:7611",
            }
            nodes[name] = NodeProcess(
                name, workdir, env=env, prefix=host.nsenter(), status=f"{host.address}:7612"
            ).wait_up()
        assert "beyond loopback" in nodes["b"].log.read_text()  # the warning for a non-loopback registry
        blob = os.urandom(40 * 1024 * 1024)
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        for name in ("a", "c"):
            push(f"{hosts[name].address}:7613", blob, b"{}")
            shape = ["qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "40mbit", "burst", "64kb"]
            subprocess.run(["tc", "-n", hosts[name].netns, *shape, "latency", "100ms"], check=True)

        def holders() -> list[str]:
            rows = nodes["b"].api()["registry"]["repositories"]
            return sorted(h for r in rows for t in r["tags"] for h in t["holders"])

        wait_until(lambda: holders() == ["a", "c"], 20, what="b sees a and c hold big:1")

        result: dict[str, bytes | BaseException] = {}

        def pull() -> None:
            try:
                result["body"] = http("GET", f"http://{hosts['b'].address}:7613/v2/big/blobs/{digest}")
            except BaseException as exc:
                result["error"] = exc

        client = threading.Thread(target=pull)
        client.start()

        def source_partway() -> str | None:
            for fetch in nodes["b"].api()["registry"]["fetches"]:
                if fetch["digest"] == digest and 0.1 * len(blob) < fetch["bytes"] < 0.6 * len(blob):
                    return str(fetch["source"])
            return None

        source = wait_until(source_partway, 30, 0.05, what="b's fetch partway")
        victim = next(name for name, host in hosts.items() if source.startswith(host.address + ":"))
        os.killpg(nodes[victim].proc.pid, signal.SIGKILL)
        nodes[victim].proc.wait(timeout=10)
        client.join(timeout=120)
        assert "error" not in result, result.get("error")
        body = result["body"]
        assert isinstance(body, bytes) and len(body) == len(blob)
        assert hashlib.sha256(body).hexdigest() == digest[7:]
        assert "trying the next holder" in nodes["b"].log.read_text()
        wait_until(lambda: nodes["b"].api()["registry"]["blobs_held"] == 1, 10, what="b stores the blob")
    finally:
        for node in nodes.values():
            node.stop()

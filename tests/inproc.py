"""In-process nodes on loopback with the in-memory engine, for fast tests of the node's I/O edges."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from mesh.config import Config
from mesh.engine.fake import FakeEngine
from mesh.lab.poll import async_wait_until
from mesh.net.tls_contexts import NodeTLS
from mesh.node.node import Node
from mesh.node.transfer import Transfer

SECRET = b"inproc-test-secret-0123456789"


async def start_node(
    workdir: Path,
    name: str,
    *,
    engine: FakeEngine | None = None,
    seeds: tuple[str, ...] = (),
    engine_off: bool = False,
    **overrides: Any,
) -> Node:
    """`engine_off`: the node runs with --engine off (and so makes its own engine, NoEngine)."""
    overrides.setdefault("secret", SECRET)
    if engine_off:
        overrides["engine"] = "off"
    config = Config.local(
        listen="127.0.0.1:0",
        status_listen="127.0.0.1:0",
        registry_listen="127.0.0.1:0",
        data_dir=str(workdir / name),
        node_name=name,
        mdns=False,
        seeds=seeds,
        **overrides,
    )
    node = Node(config, None if engine_off else engine or FakeEngine())
    await node.start()
    return node


def has_image(node: Node, image: str, tag: str | None = None) -> bool:
    local = node.local.images.get(image)
    return local is not None and (tag is None or tag in local.tags)


async def wait_pulled(node: Node, image: str, tag: str, timeout: float, what: str) -> Transfer:
    """Until `node` holds `image` as `tag` and its puller has recorded the pull that brought it
    (the engine shows the image a moment before the record lands); that record."""

    def pulled() -> Transfer | None:
        done = [t for t in node.puller.recent if t.image == image and t.outcome == "ok"]
        return done[-1] if done and has_image(node, image, tag) else None

    found: Transfer = await async_wait_until(pulled, timeout, what=what)
    return found


def client_ssl(node_id: str = "attacker", *secrets: bytes, cluster: str = "default") -> ssl.SSLContext:
    """A client TLS context with a certificate for `node_id` from the cluster secret(s), as a node
    holding them would make: for tests that talk to a node's peer API directly."""
    tls = NodeTLS.derived(secrets or (SECRET,), cluster, node_id, ed25519.Ed25519PrivateKey.generate())
    return tls.client

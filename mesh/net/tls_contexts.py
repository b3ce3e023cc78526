"""This node's TLS identity and the SSL contexts built on it, and serving over them.

TLS 1.3 only, mutual: the server demands a client certificate too. The certificates come from
pki.py (derived from the cluster secret, or the operator's files). Hostnames are not checked
(peers dial addresses, and identity is the node ID, checked after the handshake: tls_peers.py).
Session tickets are off: aiohttp cannot resume sessions, and tickets would only add bytes to every
handshake.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mesh.net.pki import (
    CERT_RENEW_AFTER,
    TLSConfigError,
    ca_certificate,
    cross_certificate,
    derive_ca_key,
    fingerprint,
    issue_node_certificate,
    load_or_create_node_key,
    pem,
)


def _base_context(purpose: ssl.Purpose) -> ssl.SSLContext:
    protocol = ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # peers are dialled by address; identity is the node ID, checked after
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual: the server demands a client certificate too
    if purpose is ssl.Purpose.CLIENT_AUTH:
        ctx.num_tickets = 0
    return ctx


@dataclass
class NodeTLS:
    """This node's certificate and the server and client contexts built on it."""

    mode: str
    """"derived" (from the cluster secret) or "operator" (--tls-cert/--tls-key/--tls-ca)."""
    server: ssl.SSLContext
    client: ssl.SSLContext
    holds: tuple[str, ...] = ()
    """Fingerprints of the derived CAs this node trusts, current secret first (derived mode)."""
    not_after: float = 0.0
    issued: float = 0.0
    _renew: Any = field(default=None, repr=False)

    @classmethod
    def derived(
        cls,
        secrets: Sequence[bytes],
        cluster: str,
        node_id: str,
        node_key: ed25519.Ed25519PrivateKey,
        *,
        now: datetime.datetime | None = None,
    ) -> NodeTLS:
        if not secrets:
            raise TLSConfigError("TLS from the cluster secret needs a secret")
        ca_keys = [derive_ca_key(s, cluster) for s in secrets]
        cas = [ca_certificate(k, cluster) for k in ca_keys]
        holds = tuple(fingerprint(k.public_key()) for k in ca_keys)
        # The new CA certified by every older one: peers that know only an older secret follow it.
        crosses = [cross_certificate(ca_keys[0], old, cluster) for old in ca_keys[1:]]
        server = _base_context(ssl.Purpose.CLIENT_AUTH)
        client = _base_context(ssl.Purpose.SERVER_AUTH)
        trust = pem(*cas).decode()
        for ctx in (server, client):
            ctx.load_verify_locations(cadata=trust)
        tls = cls("derived", server, client, holds)

        def renew(at: datetime.datetime) -> None:
            cert = issue_node_certificate(
                ca_keys[0], cluster, node_id, node_key.public_key(), now=at, holds=holds
            )
            load_chain(
                (server, client),
                pem(cert, *crosses),
                node_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
            tls.not_after = cert.not_valid_after_utc.timestamp()
            tls.issued = at.timestamp()

        tls._renew = renew
        renew(now or datetime.datetime.now(datetime.UTC))
        return tls

    @classmethod
    def operator(cls, cert_file: str, key_file: str, ca_file: str) -> NodeTLS:
        server = _base_context(ssl.Purpose.CLIENT_AUTH)
        client = _base_context(ssl.Purpose.SERVER_AUTH)
        try:
            for ctx in (server, client):
                ctx.load_cert_chain(cert_file, key_file)
                ctx.load_verify_locations(cafile=ca_file)
            cert = x509.load_pem_x509_certificates(Path(cert_file).read_bytes())[0]
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise TLSConfigError(f"cannot use --tls-cert/--tls-key/--tls-ca: {exc}") from None
        return cls("operator", server, client, (), cert.not_valid_after_utc.timestamp())

    def renew_due(self, now: float) -> bool:
        return self._renew is not None and now - self.issued >= CERT_RENEW_AFTER.total_seconds()

    def renew(self, now: float) -> None:
        """Issue a fresh node certificate; new connections use it, open ones keep theirs."""
        if self._renew is not None:
            self._renew(datetime.datetime.fromtimestamp(now, datetime.UTC))

    def label(self, holds: Sequence[str]) -> str:
        """Which of this node's secrets a peer holds, from its certificate: 'current',
        'previous', 'current+previous', or 'other' for secrets this node does not know."""
        names = []
        for fp in holds:
            if fp in self.holds:
                index = self.holds.index(fp)
                names.append("current" if index == 0 else "previous")
            else:
                names.append("other")
        return "+".join(dict.fromkeys(names)) or "?"

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "version": "TLSv1.3",
            "secrets": list(self.holds),
            "cert_not_after": round(self.not_after),
        }


def load_chain(contexts: Sequence[ssl.SSLContext], chain_pem: bytes, key_pem: bytes) -> None:
    # The ssl module loads certificates and keys from files only; these live for one call.
    with tempfile.TemporaryDirectory(prefix="cachemesh-tls-") as tmp:
        cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_pem)
        cert_path.write_bytes(chain_pem)
        for ctx in contexts:
            ctx.load_cert_chain(str(cert_path), str(key_path))


def node_tls(
    *,
    mode: str,
    secrets: Sequence[bytes],
    cluster: str,
    node_id: str,
    data_dir: str,
    cert_file: str = "",
    key_file: str = "",
    ca_file: str = "",
) -> NodeTLS | None:
    """The node's TLS setup from its settings (None when TLS is off)."""
    if mode == "off":
        return None
    if cert_file or key_file or ca_file:
        return NodeTLS.operator(cert_file, key_file, ca_file)
    key = load_or_create_node_key(Path(data_dir) / "tls" / "node.key")
    return NodeTLS.derived(secrets, cluster, node_id, key)


# --- memory per connection ----------------------------------------------------------------------

TLS_READ_BUFFER = 64 * 1024
"""asyncio's SSL transport gives each connection a zero-filled 256 KiB read buffer (3.11: every
page resident), so a node with a few hundred open peer connections would spend most of its memory
there. 64 KiB holds four full TLS records: measured, ~116 KiB per open TLS connection instead of
~300 KiB, and a loopback stream still moves over 400 MB/s (the engine's load is ~80 MB/s).
`cachemesh run` uses uvloop, whose TLS transport allocates its buffers without touching them
(measured: 45 KiB per open TLS connection); this applies where a node runs on asyncio's loop."""


def limit_tls_read_buffers(size: int = TLS_READ_BUFFER) -> None:
    """Shrink asyncio's per-connection TLS read buffer for this process (a class attribute of the
    standard library's SSL protocol; left alone where a Python lacks it)."""
    from asyncio import sslproto

    protocol = getattr(sslproto, "SSLProtocol", None)
    if protocol is not None and getattr(protocol, "max_size", 0) > size:
        protocol.max_size = size


# --- serving ------------------------------------------------------------------------------------


class TLSSockSite(web.SockSite):
    """aiohttp's SockSite with a handshake timeout: a client that connects and never finishes its
    handshake is closed after `handshake_timeout`, like a half-open plain connection."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: Any,
        *,
        ssl_context: ssl.SSLContext,
        handshake_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context, **kwargs)
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)  # SockSite.start, but with the handshake timeout below
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server,
            sock=self._sock,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=self._handshake_timeout,
        )

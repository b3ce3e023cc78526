"""What this node knows and checks of each peer's TLS: the facts of a connection, the client-side
node-ID check on every request of a peer session, why a handshake failed, and, per peer, the last
verified connection or failure for the status page.
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from mesh.hostport import format_hostport
from mesh.net.pki import PeerCert, parse_peer_certificate
from mesh.net.tls_contexts import NodeTLS

log = logging.getLogger("cachemesh.tls")


# --- one connection: what it is, and why it failed ------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionTLS:
    """The TLS state of one connection, as the status page shows it per peer."""

    version: str
    cipher: str
    cert: PeerCert | None


def connection_tls(transport: Any) -> ConnectionTLS | None:
    """TLS facts of an asyncio transport (None on a plain connection)."""
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    return None if ssl_object is None else ssl_facts(ssl_object)


def ssl_facts(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> ConnectionTLS:
    """TLS facts of a connection's SSL object (an event loop's) or SSL socket (a thread's)."""
    der = ssl_object.getpeercert(binary_form=True)
    cipher = ssl_object.cipher()
    return ConnectionTLS(
        ssl_object.version() or "?",
        cipher[0] if cipher else "?",
        parse_peer_certificate(der) if der else None,
    )


def describe_tls_failure(exc: BaseException) -> str | None:
    """A clear reason for a failed TLS connection to a peer, or None if it was not TLS's doing."""
    text = str(exc)
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text or "record layer failure" in text:
        return (
            "the peer answered in plain HTTP: it runs cachemesh without TLS (an older version, or "
            "--tls off). TLS nodes refuse plain peers; upgrade it (README: Security, rolling upgrade)"
        )
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return (
            "the peer's certificate does not verify against this node's CA: a different cluster "
            f"secret or cluster name, another CA, or an expired certificate ({_reason(text)})"
        )
    if any(
        s in text.lower()
        for s in ("tlsv13 alert certificate required", "alert unknown ca", "alert bad certificate")
    ):
        return (
            "the peer refused this node's certificate: a different cluster secret or cluster "
            f"name, or another CA ({_reason(text)})"
        )
    if isinstance(exc, ssl.SSLError) or "[SSL" in text:
        return f"TLS handshake failed: {_reason(text)}"
    return None


def _reason(text: str) -> str:
    """The OpenSSL reason out of an exception's text ('certificate verify failed: ...')."""
    found = re.search(r"\[SSL: [A-Z0-9_]+\] ([^(\]]+)", text)
    return found.group(1).strip() if found else text[-200:]


def failure_kind(reason: str) -> str:
    """The kind of a reason describe_tls_failure gave, for a metric's label."""
    if "plain HTTP" in reason:
        return "plain"
    if "does not verify" in reason:
        return "verify"
    if "refused this node's certificate" in reason:
        return "refused"
    return "other"


# --- what this node has seen of each peer's TLS, for the status page ----------------------------


class TLSObserver:
    """Per peer: the last verified connection's TLS facts (by node ID), or the last failure (by
    address). The status page and /api/status show them."""

    def __init__(self, tls: NodeTLS | None, *, on_failure: Callable[[str], None]) -> None:
        """`on_failure(kind)`: a handshake to a peer failed (kind: plain, verify, refused, other)."""
        self.tls = tls
        self._on_failure = on_failure
        self._seen: dict[str, tuple[ConnectionTLS, float]] = {}
        self._failed: dict[str, tuple[str, float]] = {}
        self._warned: set[str] = set()

    def seen(self, node_id: str, addr: str | None, conn: ConnectionTLS | None, now: float) -> None:
        if conn is not None:
            self._seen[node_id] = (conn, now)
        if addr is not None:
            self._failed.pop(addr, None)

    def failed(self, addr: str, reason: str, now: float) -> None:
        self._failed[addr] = (reason, now)
        self._on_failure(failure_kind(reason))
        if addr not in self._warned:  # once per address: a refused peer is retried every few seconds
            self._warned.add(addr)
            log.warning("peer at %s: %s", addr, reason)

    def refused(self) -> dict[str, str]:
        """Addresses whose last handshake failed, with why (seeds that are no member show here)."""
        return {addr: reason for addr, (reason, _) in sorted(self._failed.items())}

    def state(self, node_id: str, addr: str) -> dict[str, Any]:
        if self.tls is None:
            return {"state": "off"}
        failure = self._failed.get(addr)
        seen = self._seen.get(node_id)
        if failure is not None and (seen is None or failure[1] >= seen[1]):
            return {"state": "refused", "error": failure[0]}
        if seen is None:
            return {"state": "unknown"}
        conn, _ = seen
        cert = conn.cert
        result: dict[str, Any] = {"state": "verified", "version": conn.version, "cipher": conn.cipher}
        if cert is not None:
            result["secret"] = self.tls.label(cert.holds) if self.tls.mode == "derived" else "operator CA"
            result["identity"] = "node ID in certificate" if cert.node_id else "certificate without node ID"
            result["cert_not_after"] = round(cert.not_after)
        return result


# --- the client side: every request of a peer session over TLS, checked --------------------------


def peer_addr(url: URL) -> str:
    """The peer a request went to, as members' addresses are written (an IPv6 host in brackets),
    so the certificate check finds the members at it."""
    return format_hostport(url.raw_host or "?", url.port or 0)


class PeerIdentityError(aiohttp.ClientError):
    """A peer's certificate names another node than the one this node meant to reach."""


class TLSClient:
    """What a peer client's aiohttp session needs for TLS: the context, and session options that
    send every request over TLS (an `http://` peer URL becomes `https://`), check the node ID in
    the server's certificate against the members known at the address dialled, and record each
    peer's TLS state and each failed handshake (with a clear reason) for the status page."""

    def __init__(
        self,
        context: ssl.SSLContext,
        observer: TLSObserver,
        expected_ids: Callable[[str], Collection[str]] | None = None,
    ) -> None:
        self.context = context
        self.observer = observer
        self.expected_ids = expected_ids

    def check(self, addr: str, conn: ConnectionTLS | None) -> None:
        if conn is None:
            raise PeerIdentityError(f"{addr}: the connection is not TLS")
        cert_id = conn.cert.node_id if conn.cert is not None else None
        expected = self.expected_ids(addr) if self.expected_ids is not None else ()
        if cert_id is not None and expected and cert_id not in expected:
            raise PeerIdentityError(
                f"{addr}: certificate is for node {cert_id[:64]!r}, this node expected "
                f"{', '.join(sorted(expected))[:200]}"
            )
        if cert_id is not None or len(expected) == 1:
            self.observer.seen(cert_id or next(iter(expected)), addr, conn, time.time())

    def check_sender(self, response: aiohttp.ClientResponse, sender: str) -> None:
        """A reply envelope must come from the node the certificate names."""
        conn = getattr(response, "peer_tls", None)
        cert_id = conn.cert.node_id if conn is not None and conn.cert is not None else None
        if cert_id is not None and sender != cert_id:
            raise PeerIdentityError(f"reply from {sender[:64]!r} over a certificate for {cert_id!r}")

    def session_options(self) -> dict[str, Any]:
        guard = self

        class Request(aiohttp.ClientRequest):
            def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
                if url.scheme == "http":
                    url = url.with_scheme("https")
                super().__init__(method, url, **kwargs)

        class Response(aiohttp.ClientResponse):
            peer_tls: ConnectionTLS | None = None

            async def start(self, connection: Any) -> aiohttp.ClientResponse:
                self.peer_tls = connection_tls(connection.transport)
                guard.check(peer_addr(self.url), self.peer_tls)
                return await super().start(connection)

        async def on_exception(
            session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceRequestExceptionParams
        ) -> None:
            reason = describe_tls_failure(params.exception)
            if reason is not None:
                self.observer.failed(peer_addr(params.url), reason, time.time())

        trace = aiohttp.TraceConfig()
        trace.on_request_exception.append(on_exception)
        return {"request_class": Request, "response_class": Response, "trace_configs": [trace]}

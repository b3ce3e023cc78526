"""TLS 1.3 with mutual authentication on the peer API, from the cluster secret alone.

- The **cluster CA** key is derived from the secret and the cluster name (HKDF-SHA256 to an
  Ed25519 seed). Ed25519 signatures are deterministic, so every node that holds the secret builds
  the same CA certificate, byte for byte: there is nothing to distribute.
- Each node keeps its own Ed25519 key in its data dir (`tls/node.key`, made at first start) and
  issues itself a short-lived certificate signed by the derived CA at every start (and again
  before it expires). The certificate names the node ID in a SAN URI `cachemesh://node/<id>` and
  the CAs of every secret the node holds in `cachemesh://secret/<fingerprint>` URIs.
- Peers verify the chain against the CA(s) of the secrets they hold and then check the node ID in
  the certificate against the sender of each request and the member they meant to reach.
- **Secret rotation**: a node that holds two secrets (new first) signs its certificate with the
  new CA and also presents a cross-certificate of the new CA signed by the old one, so nodes that
  only know the old secret verify it too, and it trusts both CAs.
- **Operator PKI**: --tls-cert/--tls-key/--tls-ca replace the derived CA. The node-ID check then
  applies when the operator's certificate carries a `cachemesh://node/` URI; otherwise the signed
  `X-Cachemesh-Node` header (the cluster secret) is what names the sender.

Hostnames are not checked (peers dial addresses, and identity is the node ID, checked after the
handshake). Session tickets are off: aiohttp cannot resume sessions, and tickets would only add
bytes to every handshake.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import os
import re
import ssl
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID
from yarl import URL

log = logging.getLogger("cachemesh.tls")

NODE_URI = "cachemesh://node/"
SECRET_URI = "cachemesh://secret/"
CA_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
CA_END = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
CERT_LIFETIME = datetime.timedelta(days=30)
"""Node certificates are minted locally at every start, so they can be short-lived."""
CERT_RENEW_AFTER = datetime.timedelta(days=1)
"""A running node issues itself a fresh certificate this often (well before CERT_LIFETIME)."""
CERT_BACKDATE = datetime.timedelta(hours=1)
"""A new certificate is valid from this long ago, so peers whose clocks lag still accept it."""


class TLSConfigError(ValueError):
    """TLS cannot be set up as configured; the message says what to fix."""


# --- the derived cluster CA ---------------------------------------------------------------------


def derive_ca_key(secret: bytes, cluster: str) -> ed25519.Ed25519PrivateKey:
    seed = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"cachemesh/tls-ca/v1", info=cluster.encode()
    ).derive(secret)
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


def _raw_public(key: ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: ed25519.Ed25519PublicKey) -> str:
    """A short public name for a CA (and so for the secret behind it); reveals nothing of the secret."""
    return hashlib.sha256(b"cachemesh-ca" + _raw_public(key)).hexdigest()[:16]


def _ca_name(key: ed25519.Ed25519PublicKey, cluster: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cachemesh"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, cluster[:64]),
            x509.NameAttribute(NameOID.COMMON_NAME, f"cachemesh cluster CA {fingerprint(key)}"),
        ]
    )


def _ca_builder(
    subject_key: ed25519.Ed25519PublicKey, issuer_key: ed25519.Ed25519PublicKey, cluster: str
) -> x509.CertificateBuilder:
    serial = int.from_bytes(hashlib.sha256(_raw_public(subject_key) + _raw_public(issuer_key)).digest()[:16])
    return (
        x509.CertificateBuilder()
        .subject_name(_ca_name(subject_key, cluster))
        .issuer_name(_ca_name(issuer_key, cluster))
        .public_key(subject_key)
        .serial_number(serial >> 1 or 1)
        .not_valid_before(CA_EPOCH)
        .not_valid_after(CA_END)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
    )


def ca_certificate(key: ed25519.Ed25519PrivateKey, cluster: str) -> x509.Certificate:
    """The self-signed cluster CA: the same bytes on every node (fixed fields, Ed25519)."""
    return _ca_builder(key.public_key(), key.public_key(), cluster).sign(key, None)


def cross_certificate(
    new: ed25519.Ed25519PrivateKey, old: ed25519.Ed25519PrivateKey, cluster: str
) -> x509.Certificate:
    """The new CA, certified by the old one: nodes that know only the old secret accept the new
    secret's certificates through it during a rotation."""
    builder = _ca_builder(new.public_key(), old.public_key(), cluster).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(old.public_key()), critical=False
    )
    return builder.sign(old, None)


# --- node certificates --------------------------------------------------------------------------


def issue_node_certificate(
    ca_key: ed25519.Ed25519PrivateKey,
    cluster: str,
    node_id: str,
    node_key: ed25519.Ed25519PublicKey,
    *,
    now: datetime.datetime,
    holds: Sequence[str] = (),
    lifetime: datetime.timedelta = CERT_LIFETIME,
    backdate: datetime.timedelta = CERT_BACKDATE,
) -> x509.Certificate:
    """A certificate for `node_id`, signed by the cluster CA, valid from now - backdate. Kept small
    (every new peer connection carries one each way): no extended key usage (any purpose), no
    subject key identifier."""
    uris = [x509.UniformResourceIdentifier(NODE_URI + node_id)]
    uris += [x509.UniformResourceIdentifier(SECRET_URI + fp) for fp in holds]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id[:64])]))
        .issuer_name(_ca_name(ca_key.public_key(), cluster))
        .public_key(node_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - backdate)
        .not_valid_after(now - backdate + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectAlternativeName(uris), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    return builder.sign(ca_key, None)


def load_or_create_node_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """The node's own TLS key, made at first start and kept (mode 0600)."""
    if path.exists():
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, ed25519.Ed25519PrivateKey):
            raise TLSConfigError(f"{path} is not an Ed25519 key; remove it to make a new one")
        return loaded
    key = ed25519.Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return key


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


# --- what a peer's certificate says -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerCert:
    node_id: str | None
    """The node ID in the certificate (None: an operator certificate without one)."""
    holds: tuple[str, ...]
    """Fingerprints of the CAs (secrets) the peer says it holds, its current one first."""
    issuer: str
    subject: str
    not_after: float


_PEER_CERTS: dict[bytes, PeerCert] = {}


def parse_peer_certificate(der: bytes) -> PeerCert:
    """Read a verified peer certificate (parsed once per distinct certificate)."""
    known = _PEER_CERTS.get(der)
    if known is not None:
        return known
    cert = x509.load_der_x509_certificate(der)
    node_id: str | None = None
    holds: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith(NODE_URI) and node_id is None:
                node_id = uri[len(NODE_URI) :]
            elif uri.startswith(SECRET_URI):
                holds.append(uri[len(SECRET_URI) :])
    except x509.ExtensionNotFound:
        pass
    parsed = PeerCert(
        node_id,
        tuple(holds),
        cert.issuer.rfc4514_string(),
        cert.subject.rfc4514_string(),
        cert.not_valid_after_utc.timestamp(),
    )
    if len(_PEER_CERTS) > 4096:
        _PEER_CERTS.clear()
    _PEER_CERTS[der] = parsed
    return parsed


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
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    cipher = ssl_object.cipher()
    return ConnectionTLS(
        ssl_object.version() or "?",
        cipher[0] if cipher else "?",
        parse_peer_certificate(der) if der else None,
    )


# --- the node's TLS identity and contexts -------------------------------------------------------


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


# --- what this node has seen of each peer's TLS, for the status page ----------------------------


class TLSObserver:
    """Per peer: the last verified connection's TLS facts (by node ID), or the last failure (by
    address). The status page and /api/status show them."""

    def __init__(self, tls: NodeTLS | None) -> None:
        self.tls = tls
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
                guard.check(f"{self.url.raw_host}:{self.url.port}", self.peer_tls)
                return await super().start(connection)

        async def on_exception(
            session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceRequestExceptionParams
        ) -> None:
            reason = describe_tls_failure(params.exception)
            if reason is not None:
                host = params.url.raw_host or "?"
                addr = f"[{host}]:{params.url.port}" if ":" in host else f"{host}:{params.url.port}"
                self.observer.failed(addr, reason, time.time())

        trace = aiohttp.TraceConfig()
        trace.on_request_exception.append(on_exception)
        return {"request_class": Request, "response_class": Response, "trace_configs": [trace]}

"""The peer API's PKI, from the cluster secret alone: the derived cluster CA, node certificates
and keys, and what a peer's certificate says. Contexts built on it are in tls_contexts.py.

- The **cluster CA** key is derived from the secret and the cluster name (HKDF-SHA256 to an
  Ed25519 seed). Ed25519 signatures are deterministic, so every node that holds the secret builds
  the same CA certificate, byte for byte: there is nothing to distribute.
- Each node keeps its own Ed25519 key in its data dir (`tls/node.key`, made at first start) and
  issues itself a short-lived certificate signed by the derived CA at every start (and again
  before it expires). The certificate names the node ID in a SAN URI `cachemesh://node/<id>` and
  the CAs of every secret the node holds in `cachemesh://secret/<fingerprint>` URIs.
- Peers verify the chain against the CA(s) of the secrets they hold and then check the node ID in
  the certificate against the sender of each request and the member they meant to reach
  (tls_peers.py).
- **Secret rotation**: a node that holds two secrets (new first) signs its certificate with the
  new CA and also presents a cross-certificate of the new CA signed by the old one, so nodes that
  only know the old secret verify it too, and it trusts both CAs.
- **Operator PKI**: --tls-cert/--tls-key/--tls-ca replace the derived CA. The node-ID check then
  applies when the operator's certificate carries a `cachemesh://node/` URI; otherwise the signed
  `X-Cachemesh-Node` header (the cluster secret) is what names the sender.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

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

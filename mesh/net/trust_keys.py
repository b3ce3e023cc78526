"""The trust key pair: Ed25519 signatures over tag claims (mesh.protocol.trust).

Trusted publishers hold the private key (`--trust-key FILE`) and sign every entry of the manifest
they announce; every host holds the public key (`--trust-pub FILE`) and verifies. Keys are PEM
files, so they can be Docker or Kubernetes secrets mounted as files, never environment values
that `docker inspect` shows. A public key file may hold two keys during a rotation (the new one
first), as the cluster secret file may hold two secrets: claims signed with either verify.

The signed bytes (`claim_bytes`) bind everything that makes a claim mean something, so a valid
signature cannot be reused for another one: the cluster, the publisher's node ID (not moved to
another node), the entry's ID (an image's mesh key, or a registry manifest's entry key), its tags
in order (registry tags carry their push time), and the stamp: the publisher's manifest version
when the entry changed. The stamp is what lets a receiver tell a replayed old claim from the
current one (mesh.protocol.trust.Newest).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mesh.protocol.wire import SIGNATURE_BYTES, Tags

DOMAIN = b"cachemesh/tag-claim/v1\0"
"""Prefixes the signed bytes, so a trust signature can never pass for anything else's."""
MAX_KEY_FILE = 64 * 1024


class TrustKeyError(ValueError):
    """A key file that cannot be used; the message names the file and says why."""


def claim_bytes(cluster: str, publisher: str, image: str, tags: Tags, stamp: int) -> bytes:
    """The canonical bytes of one manifest entry's claims, as signed and verified."""
    packed: bytes = msgpack.packb([cluster, publisher, image, list(tags), stamp], use_bin_type=True)
    return DOMAIN + packed


def fingerprint(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise TrustKeyError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE:
        raise TrustKeyError(f"{what} {path} is over {MAX_KEY_FILE} bytes: not a key file")
    return data


def load_private(path: str) -> Ed25519PrivateKey:
    """The private key of --trust-key (PEM, PKCS#8, unencrypted: `cachemesh keygen` writes one)."""
    data = _read(path, "--trust-key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise TrustKeyError(
            f"--trust-key file {path} is not an unencrypted PEM private key ({exc}); "
            "make a key pair with `cachemesh keygen`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise TrustKeyError(f"--trust-key file {path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public(path: str) -> tuple[Ed25519PublicKey, ...]:
    """The public key(s) of --trust-pub: one PEM block, or two during a rotation (new first)."""
    data = _read(path, "--trust-pub file")
    marker = b"-----BEGIN PUBLIC KEY-----"
    blocks = [marker + part for part in data.split(marker)[1:]]
    if not blocks:
        raise TrustKeyError(
            f"--trust-pub file {path} holds no PEM public key (-----BEGIN PUBLIC KEY-----); "
            "`cachemesh keygen` writes one"
        )
    if len(blocks) > 2:
        raise TrustKeyError(
            f"--trust-pub file {path} holds {len(blocks)} keys: one, or two during a rotation (new first)"
        )
    keys = []
    for n, block in enumerate(blocks, 1):
        try:
            key = serialization.load_pem_public_key(block)
        except (ValueError, TypeError) as exc:
            raise TrustKeyError(f"--trust-pub file {path}: key {n} does not parse ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise TrustKeyError(f"--trust-pub file {path}: key {n} is a {type(key).__name__}, not Ed25519")
        keys.append(key)
    return tuple(keys)


class TrustKeys:
    """This node's trust keys: the private key when it is a trusted publisher, and the public
    keys it verifies with (the private key's own public half among them)."""

    def __init__(
        self,
        cluster: str,
        private: Ed25519PrivateKey | None,
        public: Sequence[Ed25519PublicKey],
    ) -> None:
        self.cluster = cluster
        self._private = private
        keys = list(public)
        if private is not None:
            own = private.public_key()
            if fingerprint(own) not in {fingerprint(k) for k in keys}:
                keys.insert(0, own)
        self._public = tuple(keys)
        self.fingerprints = tuple(fingerprint(k) for k in self._public)

    @classmethod
    def load(cls, cluster: str, key_file: str, pub_file: str) -> TrustKeys | None:
        """From --trust-key and --trust-pub; None when neither is given (trust classes off)."""
        if not key_file and not pub_file:
            return None
        private = load_private(key_file) if key_file else None
        public = load_public(pub_file) if pub_file else ()
        return cls(cluster, private, public)

    @property
    def trusted(self) -> bool:
        """This host signs: it is a trusted publisher."""
        return self._private is not None

    def sign(self, publisher: str, image: str, tags: Tags, stamp: int) -> bytes:
        if self._private is None:
            raise RuntimeError("an untrusted host has no trust key to sign with")
        return self._private.sign(claim_bytes(self.cluster, publisher, image, tags, stamp))

    def verify(self, publisher: str, image: str, tags: Tags, stamp: int, sig: bytes) -> bool:
        """Whether `sig` is a trust signature over exactly this claim, by any of the keys."""
        if len(sig) != SIGNATURE_BYTES:
            return False
        data = claim_bytes(self.cluster, publisher, image, tags, stamp)
        for key in self._public:
            try:
                key.verify(sig, data)
                return True
            except InvalidSignature:
                continue
        return False


def generate() -> tuple[bytes, bytes]:
    """A new key pair as (private PEM, public PEM)."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def write_pair(private_path: Path, public_path: Path) -> str:
    """Write a new key pair (the private key readable by its owner only); its fingerprint."""
    private_pem, public_pem = generate()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    public_path.write_bytes(public_pem)
    public = serialization.load_pem_public_key(public_pem)
    assert isinstance(public, Ed25519PublicKey)
    return fingerprint(public)

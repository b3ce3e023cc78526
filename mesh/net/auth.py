"""Request and response signing with the cluster secret. Pure: time comes in as `now`.

A request carries its sender, a timestamp, a random nonce and an HMAC-SHA256 over
method, path, timestamp, nonce, sender and the SHA-256 of its body. The receiver checks the
MAC in constant time, the timestamp against a window (clock skew), and the nonce against the
nonces it has seen in that window (a captured request cannot be replayed). The signing key is
derived from the secret and the cluster name, so two clusters sharing a secret stay apart.

Gossip responses are signed too, bound to the request's nonce. Transfer streams are not MACed
as a whole (their length is not known up front); the engine verifies them by content: the image
ID is the digest of its config and each layer is checked against the config's diff IDs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

HEADER_CLUSTER = "X-Cachemesh-Cluster"
HEADER_NODE = "X-Cachemesh-Node"
HEADER_TIME = "X-Cachemesh-Time"
HEADER_NONCE = "X-Cachemesh-Nonce"
HEADER_SIGNATURE = "X-Cachemesh-Signature"


class AuthError(Exception):
    """A request or response failed authentication. The message is safe to send back."""


def derive_key(secret: bytes, cluster: str) -> bytes:
    return hmac.new(secret, b"cachemesh/v1/" + cluster.encode(), hashlib.sha256).digest()


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _mac(key: bytes, *parts: str) -> str:
    return hmac.new(key, "\n".join(parts).encode(), hashlib.sha256).hexdigest()


MAX_SIGNATURES = 4


def _matches(header: str, keys: tuple[bytes, ...], *parts: str) -> bool:
    """True if one of the comma-separated signatures in `header` is a MAC under one of `keys`.
    During a secret rotation a sender signs with each secret it holds (new first)."""
    given = header.split(",", MAX_SIGNATURES)[:MAX_SIGNATURES]
    found = False
    for key in keys:
        expected = _mac(key, *parts)
        for signature in given:
            found |= hmac.compare_digest(signature, expected)
    return found


@dataclass(frozen=True, slots=True)
class Signer:
    key: bytes
    cluster: str
    node: str
    previous: tuple[bytes, ...] = ()
    """Keys of older secrets still accepted during a rotation; requests are signed with them too."""

    @property
    def keys(self) -> tuple[bytes, ...]:
        return (self.key, *self.previous)

    def _sign(self, *parts: str) -> str:
        return ",".join(_mac(key, *parts) for key in self.keys)

    def sign_request(self, method: str, path: str, body: bytes, now: float) -> dict[str, str]:
        timestamp = f"{now:.3f}"
        nonce = secrets.token_hex(12)
        signature = self._sign(method.upper(), path, timestamp, nonce, self.node, body_digest(body))
        return {
            HEADER_CLUSTER: self.cluster,
            HEADER_NODE: self.node,
            HEADER_TIME: timestamp,
            HEADER_NONCE: nonce,
            HEADER_SIGNATURE: signature,
        }

    def sign_response(self, request_nonce: str, status: int, body: bytes) -> dict[str, str]:
        return {HEADER_SIGNATURE: self._sign("response", request_nonce, str(status), body_digest(body))}

    def verify_response(
        self, request_nonce: str, status: int, headers: Mapping[str, str], body: bytes
    ) -> None:
        parts = ("response", request_nonce, str(status), body_digest(body))
        if not _matches(headers.get(HEADER_SIGNATURE, ""), self.keys, *parts):
            raise AuthError(
                "response signature does not match: peer has a different secret or the reply was altered"
            )


class ReplayGuard:
    """Remembers nonces seen within the auth window. Bounded: the oldest are forgotten first,
    and anything older than the window is refused by its timestamp anyway."""

    def __init__(self, window: float, capacity: int = 200_000) -> None:
        self._window = window
        self._capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check_and_remember(self, nonce: str, now: float) -> bool:
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if at >= now - 2 * self._window and len(self._seen) < self._capacity:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True


def verify_request(
    key: bytes | tuple[bytes, ...],
    cluster: str,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    window: float,
    replay: ReplayGuard,
) -> str:
    """Check a request's signature; return the sender's node ID or raise AuthError."""
    their_cluster = headers.get(HEADER_CLUSTER)
    if their_cluster is None or HEADER_SIGNATURE not in headers:
        raise AuthError("unauthenticated: request is not signed with the cluster secret")
    if their_cluster != cluster:
        raise AuthError(
            f"cluster mismatch: request is for {their_cluster[:64]!r}, this node is in {cluster!r}"
        )
    node = headers.get(HEADER_NODE, "")
    timestamp = headers.get(HEADER_TIME, "")
    nonce = headers.get(HEADER_NONCE, "")
    if not node or not nonce or len(nonce) > 64 or len(node) > 256:
        raise AuthError("malformed authentication headers")
    try:
        sent_at = float(timestamp)
    except ValueError:
        raise AuthError("malformed authentication timestamp") from None
    keys = (key,) if isinstance(key, bytes) else key
    parts = (method.upper(), path, timestamp, nonce, node, body_digest(body))
    if not _matches(headers[HEADER_SIGNATURE], keys, *parts):
        raise AuthError("bad signature: the peer has a different cluster secret, or the request was altered")
    if abs(now - sent_at) > window:
        raise AuthError(
            f"request timestamp is {now - sent_at:+.0f}s off this node's clock (window {window:.0f}s)"
        )
    if not replay.check_and_remember(nonce, now):
        raise AuthError("replayed request")
    return node

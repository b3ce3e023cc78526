"""Gossip in sealed UDP datagrams: the small messages of SWIM and gossip, encrypted and
authenticated with a key derived from the cluster secret, as memberlist's keyring does.

Why not TLS for these: gossip picks peers at random, so at 1,000 nodes a node rarely talks to the
same peer twice within a keep-alive, and nearly every probe would pay a full mutual handshake
(about 2.6 kB) plus HTTP framing (about 650 bytes) for a 60-byte message. A sealed datagram costs
its message plus 44 bytes. What does not fit in one datagram (anti-entropy state, big rumour
batches) still travels over the TLS peer API, as do transfers and registry content.

Packet (mesh.protocol.datagram: the layout and sizes, shared with the simulator): MAGIC (3) |
VERSION (1) | key ID (4) | nonce (12) | AES-256-GCM(timestamp (8) | envelope), with the header and
the cluster name as associated data. The key ID names which secret sealed it,
so a receiver holding two secrets during a rotation opens it with the right one and can say which
secret each peer uses. The timestamp (wall clock, checked against the auth window) and the nonce
(remembered within the window) refuse replays, as for signed HTTP requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mesh.hostport import parse_hostport
from mesh.net.auth import ReplayGuard
from mesh.protocol import wire
from mesh.protocol.datagram import HEADER, MAGIC, MAX_DATAGRAM, OVERHEAD, TIME, VERSION
from mesh.protocol.datagram import fits as _fits

log = logging.getLogger("cachemesh.peer")


class DatagramError(Exception):
    """A datagram that is not a sealed gossip message of this cluster. Safe to log."""


class ClockOffDatagram(DatagramError):
    """Sealed by this cluster, but stamped outside the auth window: the clocks disagree."""

    def __init__(self, message: str, offset: float) -> None:
        super().__init__(message)
        self.offset = offset  # this node's clock minus the sender's


def derive_gossip_key(secret: bytes, cluster: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"cachemesh/gossip/v1", info=cluster.encode()
    ).derive(secret)


def key_id(key: bytes) -> bytes:
    return hmac.new(key, b"key id", hashlib.sha256).digest()[:4]


@dataclass(frozen=True, slots=True)
class Opened:
    envelope: bytes
    secret: int
    """Index of the secret that sealed it in the receiver's list: 0 current, 1 previous."""
    clock_offset: float = 0.0
    """This node's clock minus the sender's when it sealed it (plus the trip, milliseconds)."""


class Sealer:
    """Seals with the current secret's key; opens with any held secret's key. Pure but for the
    random nonce: time comes in as `now` (wall clock, as peers' clocks are compared)."""

    def __init__(self, secrets_: tuple[bytes, ...], cluster: str, window: float) -> None:
        keys = [derive_gossip_key(s, cluster) for s in secrets_]
        self._aad = cluster.encode()
        self._ciphers = {key_id(k): (index, AESGCM(k)) for index, k in enumerate(keys)}
        self._ids = [key_id(k) for k in keys]
        self._window = window
        self._replay = ReplayGuard(window)

    @staticmethod
    def fits(envelope_bytes: int) -> bool:
        return _fits(envelope_bytes)

    @property
    def rotating(self) -> bool:
        return len(self._ids) > 1

    def seal(self, envelope: bytes, now: float, secret: int = 0) -> bytes:
        """Seal with the held secret at index `secret` (0: current). During a rotation a peer is
        sent datagrams sealed with the secret it sealed its own with, which it surely holds."""
        kid = self._ids[secret]
        header = HEADER.pack(MAGIC, VERSION, kid, secrets.token_bytes(12))
        _, cipher = self._ciphers[kid]
        sealed = cipher.encrypt(header[-12:], TIME.pack(now) + envelope, header + self._aad)
        return header + sealed

    def open(self, packet: bytes, now: float) -> Opened:
        if len(packet) > MAX_DATAGRAM:
            raise DatagramError(f"datagram of {len(packet)} bytes, over {MAX_DATAGRAM}")
        if len(packet) < OVERHEAD:
            raise DatagramError("datagram too short to be sealed gossip")
        header = packet[: HEADER.size]
        magic, version, kid, nonce = HEADER.unpack(header)
        if magic != MAGIC:
            raise DatagramError("not a cachemesh gossip datagram")
        if version != VERSION:
            raise DatagramError(f"gossip datagram version {version} (this node speaks {VERSION})")
        found = self._ciphers.get(kid)
        if found is None:
            raise DatagramError("sealed with a secret this node does not hold (another cluster or secret)")
        index, cipher = found
        try:
            plain = cipher.decrypt(nonce, packet[HEADER.size :], header + self._aad)
        except InvalidTag:
            raise DatagramError("does not open: altered, or sealed for another cluster name") from None
        (sent_at,) = TIME.unpack(plain[: TIME.size])
        if not abs(now - sent_at) <= self._window:  # `not <=` also refuses NaN
            raise ClockOffDatagram(
                f"timestamp is {now - sent_at:+.0f}s off this node's clock (window {self._window:.0f}s)",
                now - sent_at,
            )
        if not self._replay.check_and_remember(nonce.hex(), now):
            raise DatagramError("replayed datagram")
        return Opened(plain[TIME.size :], index, now - sent_at)


class GossipSocket(asyncio.DatagramProtocol):
    """The UDP side of the peer port. Datagrams that do not open are counted and dropped (a
    warning once per source address, as a refused TLS peer is), never answered."""

    def __init__(
        self,
        sealer: Sealer,
        deliver: Callable[[wire.Envelope, Opened], None],
        *,
        max_bytes: int,
        on_refused: Callable[[str], None],
    ) -> None:
        self._sealer = sealer
        self._deliver = deliver
        self._max = max_bytes
        self._on_refused = on_refused
        self._transport: asyncio.DatagramTransport | None = None
        self._family = socket.AF_INET
        self._warned: set[str] = set()
        self._peer_secret: dict[str, int] = {}  # peer address -> the held secret its datagrams use
        self.clock_off: dict[str, float] = {}
        """Source address -> its clock offset, for datagrams refused for it (`cachemesh doctor`)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._family = transport.get_extra_info("socket").family

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            opened = self._sealer.open(data, time.time())
            envelope = wire.decode(opened.envelope, max_bytes=self._max)
        except (DatagramError, wire.WireError) as exc:
            source = str(addr[0])
            if isinstance(exc, ClockOffDatagram) and (source in self.clock_off or len(self.clock_off) < 1000):
                self.clock_off[source] = exc.offset
            self._on_refused(type(exc).__name__)
            if source not in self._warned:
                self._warned.add(source)
                log.warning("gossip datagram from %s refused: %s", source, exc)
            return
        if len(self._peer_secret) >= 100_000 and envelope.addr not in self._peer_secret:
            self._peer_secret.clear()  # bounded: forgetting only costs a few requests over HTTP
        self._peer_secret[envelope.addr] = opened.secret
        self._deliver(envelope, opened)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for an earlier send (a peer that is gone): to SWIM, a lost message.
        log.debug("gossip datagram error: %s", exc)

    def send(self, addr: str, envelope: bytes) -> bool:
        """Seal and send; False when this socket cannot reach `addr` (a name rather than an
        address, or the other IP family), or, during a secret rotation, when `addr` has not yet
        sent a datagram showing which secret it holds: the caller sends over the peer API, whose
        requests are signed with every held secret."""
        if self._transport is None or self._transport.is_closing():
            return False
        secret = self._peer_secret.get(addr, None if self._sealer.rotating else 0)
        if secret is None:
            return False
        host, port = parse_hostport(addr)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if (ip.version == 6) != (self._family == socket.AF_INET6):
            return False
        self._transport.sendto(self._sealer.seal(envelope, time.time(), secret), (host, port))
        return True

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def bind_datagram_socket(host: str, port: int) -> socket.socket:
    """A UDP socket on the peer API's host and port number (TCP and UDP ports are separate)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock

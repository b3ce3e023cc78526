"""What TLS adds to the bytes each node sends, for the simulator's byte accounting (the HTTP and
datagram costs are in wirecost.py; docs/protocol.md describes both).

The handshake constants were measured from real handshakes between nodes' contexts
(mesh.net.tls_contexts); tests/test_tls.py checks they still bound them.
"""

from __future__ import annotations

TLS_RECORD_OVERHEAD = 22
"""Bytes TLS 1.3 adds per record with an AEAD cipher: 5 header + 1 inner content type + 16 tag."""
TLS_MAX_RECORD = 16384
"""Plaintext bytes per record at most; a gossip message (<= 8 KiB rumours) is one record."""
TLS_HANDSHAKE_CLIENT_BYTES = 1500
"""Bytes the dialling node sends for one mutual handshake with Ed25519 certificates (ClientHello,
Certificate, CertificateVerify, Finished): 1,307 measured, 1,377 with a rotation's
cross-certificate; tests/test_tls.py checks the bound."""
TLS_HANDSHAKE_SERVER_BYTES = 1500
"""Bytes the answering node sends for one handshake (ServerHello, EncryptedExtensions,
CertificateRequest, Certificate with the cross-certificate during a rotation, CertificateVerify,
Finished): 1,304 measured, 1,374 during a rotation; checked the same way."""


def tls_overhead(payload_bytes: int) -> int:
    """Bytes on the wire beyond `payload_bytes` of HTTP when they travel in one TLS write."""
    records = max(1, -(-payload_bytes // TLS_MAX_RECORD))
    return records * TLS_RECORD_OVERHEAD


class TLSWireCost:
    """What TLS adds to the bytes each node sends, for the simulator's per-message accounting
    (which counts encoded envelopes; HTTP framing is accounted separately).

    A message from B to A within `reply_window` seconds of one from A to B is taken as the reply
    that rides A's request (the node answers in the HTTP response): one record's overhead, on the
    same connection. Any other message is a request: one record's overhead for the sender, one
    for the receiver's HTTP response, and, when the sender has not dialled that peer within
    `keepalive` seconds (the idle keep-alive of client and server, 30 s), a full mutual handshake:
    TLS_HANDSHAKE_CLIENT_BYTES from the sender and TLS_HANDSHAKE_SERVER_BYTES from the receiver.
    There is no session resumption. Pure: time comes in as `now`.
    """

    def __init__(self, keepalive: float = 30.0, reply_window: float = 0.05) -> None:
        self.keepalive = keepalive
        self.reply_window = reply_window
        self._dialled: dict[tuple[str, str], float] = {}
        self.handshakes = 0
        self.requests = 0
        self.replies = 0

    def message(self, src: str, dst: str, payload_bytes: int, now: float) -> tuple[int, int]:
        """(bytes added to what src sends, bytes added to what dst sends) for one message, a reply
        when dst sent src a request within the reply window."""
        asked = self._dialled.get((dst, src))
        if asked is not None and now - asked <= self.reply_window:
            self.replies += 1
            return tls_overhead(payload_bytes), 0
        return self.request(src, dst, payload_bytes, now)

    def request(self, src: str, dst: str, payload_bytes: int, now: float) -> tuple[int, int]:
        """The same for a message known to be a request (the simulator knows which envelopes
        travel as HTTP responses; those cost `tls_overhead(bytes)` to their sender, nothing else)."""
        self.requests += 1
        to_src = tls_overhead(payload_bytes)
        to_dst = TLS_RECORD_OVERHEAD
        last = self._dialled.get((src, dst))
        if last is None or now - last > self.keepalive:
            self.handshakes += 1
            to_src += TLS_HANDSHAKE_CLIENT_BYTES
            to_dst += TLS_HANDSHAKE_SERVER_BYTES
        self._dialled[(src, dst)] = now
        return to_src, to_dst

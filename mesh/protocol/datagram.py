"""The sealed gossip datagram's layout and size: pure, so that the node, which seals and opens
datagrams (mesh.net.datagram), and the simulator, which counts the bytes a node sends
(mesh.sim.wirecost), share one definition.

Packet: MAGIC (3) | VERSION (1) | key ID (4) | nonce (12) | AES-256-GCM(timestamp (8) | envelope)
"""

from __future__ import annotations

import struct

MAGIC = b"CMg"
VERSION = 1
HEADER = struct.Struct("!3sB4s12s")  # magic, version, key ID, nonce
TIME = struct.Struct("!d")  # the sender's wall clock, sealed with the envelope
TAG_BYTES = 16  # AES-GCM's authentication tag
OVERHEAD = HEADER.size + TIME.size + TAG_BYTES
"""What sealing adds to an envelope: 44 bytes."""
MAX_DATAGRAM = 1232
"""The largest datagram sent: the IPv6 minimum MTU (1,280) less IPv6 and UDP headers, so a datagram
is never fragmented on any path."""


def fits(envelope_bytes: int) -> bool:
    """Whether an envelope of this many bytes, sealed, fits in one datagram."""
    return envelope_bytes + OVERHEAD <= MAX_DATAGRAM

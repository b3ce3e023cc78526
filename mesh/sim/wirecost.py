"""What a gossip envelope costs on the wire, so simulated bytes count what a real node sends.

An envelope that fits in one datagram travels sealed over UDP (mesh/net/datagram.py): its bytes
plus the sealing's overhead (mesh.protocol.datagram, which the node uses too), and any answer is
a datagram of its own. A larger one is one signed
HTTP/1.1 POST to /v1/gossip on a kept-alive
connection, and each is answered by a signed response: 200 with the first reply envelope as its
body, or 204 when there is no reply. The constants below were measured from the real aiohttp
client and server (aiohttp 3.14, `python -m mesh.lab.http_overhead`; tests/test_wirecost.py
checks they still hold): the bytes of the TCP stream, request line and headers included, beyond
the msgpack body. TCP/IP headers, ACKs and connection set-up are not counted.

A request carries the five `X-Cachemesh-*` headers (cluster "default", 16-character node ID),
Host (the peer's address), Content-Type, Content-Length, Accept, Accept-Encoding and User-Agent.
A response carries the signature, Content-Type, Date, Server, and Content-Length when it has a body.
"""

from __future__ import annotations

from mesh.protocol.datagram import OVERHEAD

REQUEST_FIXED = 408  # beyond the body, the Host value and the Content-Length digits
RESPONSE_FIXED = 234  # a 200 reply beyond its body and its Content-Length digits
RESPONSE_EMPTY = 224  # a whole 204 answer


def request_bytes(body: int, addr: str) -> int:
    """A POST of a `body`-byte envelope to the peer at `addr`."""
    return REQUEST_FIXED + len(addr) + len(str(body)) + body


def reply_bytes(body: int) -> int:
    """A 200 answer carrying a `body`-byte reply envelope."""
    return RESPONSE_FIXED + len(str(body)) + body


def datagram_bytes(body: int) -> int:
    """A sealed datagram carrying a `body`-byte envelope (UDP payload; IP and UDP headers, like
    TCP/IP headers for requests, are not counted)."""
    return body + OVERHEAD

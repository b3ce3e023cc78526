"""The node's listening sockets, bound before anything else is built: the advertised address
needs the port the kernel picked when the configured one is 0."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from mesh.config import Config
from mesh.hostport import parse_hostport
from mesh.net.datagram import bind_datagram_socket


class ListenError(OSError):
    """A socket could not be bound: names the option and the address, so the fix is plain."""


@dataclass(frozen=True)
class Sockets:
    peer: socket.socket  # the peer API (TCP)
    datagrams: socket.socket | None  # sealed gossip (UDP, same port number); None: gossip over TLS
    status: socket.socket
    registry: socket.socket | None  # None: --registry-listen off

    def close(self) -> None:
        for sock in (self.peer, self.datagrams, self.status, self.registry):
            if sock is not None:
                sock.close()


def gossips_over_datagrams(config: Config) -> bool:
    """With an operator's PKI a certificate admits a node, which a datagram cannot show: gossip
    stays on TLS there (docs/protocol.md)."""
    return config.tls == "off" or not (config.tls_cert or config.tls_key or config.tls_ca)


def bind_sockets(config: Config) -> Sockets:
    """Every socket the node listens on; on a failure the ones bound so far are closed again."""
    bound: list[socket.socket] = []
    try:
        datagrams = gossips_over_datagrams(config)
        peer, udp = _bind(
            "--listen", config.listen, lambda: bind_peer_sockets(config.listen, datagrams=datagrams)
        )
        bound += [s for s in (peer, udp) if s is not None]
        status = _bind("--status-listen", config.status_listen, lambda: bind_socket(config.status_listen))
        bound.append(status)
        registry = None
        if config.registry_listen != "off":
            registry = _bind(
                "--registry-listen", config.registry_listen, lambda: bind_socket(config.registry_listen)
            )
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return Sockets(peer, udp, status, registry)


T = TypeVar("T")


def _bind(option: str, listen: str, bind: Callable[[], T]) -> T:
    try:
        return bind()
    except OSError as exc:
        raise ListenError(exc.errno, f"{option} {listen}: {exc.strerror or exc}") from exc


def is_loopback(listen: str) -> bool:
    host, _ = parse_hostport(listen)
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def bind_peer_sockets(listen: str, *, datagrams: bool) -> tuple[socket.socket, socket.socket | None]:
    """The peer API's TCP socket and, with `datagrams`, a UDP socket on the same port number. With
    port 0 the kernel picks a free TCP port whose UDP twin may be taken: then try another."""
    attempts = 10 if parse_hostport(listen)[1] == 0 else 1
    for attempt in range(attempts):
        tcp = bind_socket(listen)
        if not datagrams:
            return tcp, None
        try:
            return tcp, bind_datagram_socket(parse_hostport(listen)[0], tcp.getsockname()[1])
        except OSError:
            tcp.close()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def bind_socket(listen: str) -> socket.socket:
    """A listening TCP socket for host:port (port 0 picks a free one)."""
    host, port = parse_hostport(listen)
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.listen(512)
    sock.setblocking(False)
    return sock

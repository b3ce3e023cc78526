"""Which address peers should dial, when the operator did not say (--advertise)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket

from mesh.hostport import DEFAULT_PORT, format_hostport, parse_hostport

# TEST-NET-1 (RFC 5737): routing a UDP socket towards it picks the default-route interface
# without sending a packet.
_PROBE_ADDRESS = "192.0.2.1"


def _source_address_towards(host: str) -> str | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((host, 7))  # connect() on UDP only chooses a route; nothing is sent
            address: str = sock.getsockname()[0]
            return address
    except OSError:
        return None


def _usable(address: str | None) -> bool:
    if not address:
        return False
    ip = ipaddress.ip_address(address)
    return not (ip.is_loopback or ip.is_unspecified or ip.is_link_local)


def interface_addresses() -> list[str]:
    """IPv4 addresses of this host's interfaces, in interface order (Linux: SIOCGIFADDR)."""
    import fcntl
    import struct

    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
            except OSError:
                continue  # no IPv4 address on this interface
            found.append(socket.inet_ntoa(packed[20:24]))
    return found


def derive_advertise(listen: str, seeds: tuple[str, ...]) -> str:
    """Pick host:port for peers: the listen host if it is specific; else the address this host
    uses to reach its first seed; else the default-route address; else the first interface
    address that is not loopback; else the hostname's address."""
    host, port = parse_hostport(listen)
    if host not in ("", "0.0.0.0", "::"):
        return listen
    candidates: list[str | None] = []
    for seed in seeds:
        seed_host, _ = parse_hostport(seed, default_port=DEFAULT_PORT)
        try:
            resolved = socket.getaddrinfo(seed_host, None, type=socket.SOCK_DGRAM)[0][4][0]
        except (OSError, IndexError):
            continue
        candidates.append(_source_address_towards(str(resolved)))
    candidates.append(_source_address_towards(_PROBE_ADDRESS))
    with contextlib.suppress(OSError):
        candidates.extend(interface_addresses())
    with contextlib.suppress(OSError):
        candidates.append(socket.gethostbyname(socket.gethostname()))
    for address in candidates:
        if _usable(address):
            return format_hostport(str(address), port)
    raise ValueError(
        "cannot tell which address peers should dial: pass --advertise HOST:PORT (CACHEMESH_ADVERTISE)"
    )

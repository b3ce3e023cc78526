"""host:port text, the one place it is read and written (IPv6 hosts in brackets). Pure."""

from __future__ import annotations

DEFAULT_PORT = 7611
"""The peer port a seed without one means."""


def parse_hostport(raw: str, *, default_port: int | None = None) -> tuple[str, int]:
    """'host:port', '[v6]:port' or, with a default port, 'host' → (host, port)."""
    raw = raw.strip()
    if raw.startswith("["):
        host, _, rest = raw[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
    elif ":" not in raw:
        host, port_text = raw, ""
    else:
        raise ValueError(f"{raw!r}: IPv6 addresses need brackets, as in [::1]:7611")
    if not port_text:
        if default_port is None:
            raise ValueError(f"{raw!r}: expected host:port")
        return host, default_port
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{raw!r}: port out of range")
    return host, port


def format_hostport(host: str, port: int) -> str:
    """(host, port) -> 'host:port', bracketing an IPv6 address: the inverse of parse_hostport."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

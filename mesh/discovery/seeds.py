"""Candidate peer addresses for the core to join: the seed list, re-resolved, and mDNS."""

from __future__ import annotations

import asyncio
import logging
import socket

from mesh.hostport import DEFAULT_PORT, format_hostport, parse_hostport

log = logging.getLogger("cachemesh.discovery")


async def resolve_seeds(seeds: tuple[str, ...]) -> list[str]:
    """host:port for every address each seed resolves to. A DNS name is looked up again on every
    call, so a seed can be a DNS round robin or a name whose addresses change."""
    loop = asyncio.get_running_loop()
    out: list[str] = []
    for seed in seeds:
        host, port = parse_hostport(seed, default_port=DEFAULT_PORT)
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("seed %s does not resolve: %s", seed, exc)
            continue
        for _, _, _, _, sockaddr in infos:
            text = format_hostport(str(sockaddr[0]), port)
            if text not in out:
                out.append(text)
    return out

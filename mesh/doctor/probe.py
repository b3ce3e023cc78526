"""What `cachemesh doctor` looks at: the engine, the local node's status, the peers' TCP ports and
the registry endpoint. Each look is bounded by a timeout and turns a failure into its message, so
one dead part never hides what the others say."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from typing import Any

from mesh.doctor.checks import ENGINE_OFF, EngineFacts, Facts
from mesh.engine.base import EngineError
from mesh.engine.docker_api import DockerEngine
from mesh.hostport import format_hostport, parse_hostport

TIMEOUT = 3.0


def probe(status_addr: str, docker_host: str) -> Facts:
    status, status_error = _status(status_addr)
    peers = [] if status is None else [p for p in status.get("peers") or [] if p.get("state") != "left"]
    registry_listen = "off" if status is None else (status.get("registry") or {}).get("listen", "off")
    engine_off = status is not None and (status.get("node") or {}).get("engine") == ENGINE_OFF
    return Facts(
        # A node without an engine (--engine off) is not asked about one: there is none to ask.
        engine=EngineFacts(ENGINE_OFF, False) if engine_off else asyncio.run(_engine(docker_host)),
        status=status,
        status_error=status_error,
        status_addr=status_addr,
        tcp={str(p["address"]): _connect(str(p["address"])) for p in peers if p.get("address")},
        registry=(0, "") if registry_listen == "off" else _registry(registry_listen),
    )


async def _engine(docker_host: str) -> EngineFacts:
    engine = DockerEngine(docker_host)
    try:
        async with asyncio.timeout(TIMEOUT * 2):
            info = await engine.info()
        return EngineFacts(info.version, info.containerd_store)
    except (EngineError, OSError, TimeoutError) as exc:
        return EngineFacts("", False, error=str(exc) or type(exc).__name__)
    finally:
        await engine.close()


def _local(addr: str) -> str:
    """A wildcard listen address is reached on loopback."""
    host, port = parse_hostport(addr)
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return format_hostport(host, port)


def _status(addr: str) -> tuple[dict[str, Any] | None, str]:
    try:
        with urllib.request.urlopen(f"http://{_local(addr)}/api/status", timeout=TIMEOUT) as response:
            data = json.loads(response.read())
    except (OSError, ValueError) as exc:
        return None, str(getattr(exc, "reason", exc))
    if not isinstance(data, dict) or "node" not in data:
        return None, "it answered something other than a cachemesh status"
    return data, ""


def _connect(addr: str) -> str:
    try:
        host, port = parse_hostport(addr)
        with socket.create_connection((host, port), timeout=TIMEOUT):
            return ""
    except (OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__


def _registry(listen: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{_local(listen)}/v2/", timeout=TIMEOUT) as response:
            return response.status, ""
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError as exc:
        return 0, str(getattr(exc, "reason", exc))

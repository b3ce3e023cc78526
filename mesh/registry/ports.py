"""What the registry needs from the node, and nothing more: its few settings, the mesh as it sees
it, a way to read content from a peer, and counters to bump.

The node hands over its config, the peer client, mesh.node.registry_view and its metrics; tests
hand over fakes of the same shape. The registry imports none of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mesh.config import Config
from mesh.net.contract import ContentStream
from mesh.protocol.wire import ImageMeta, Tags


@dataclass(frozen=True)
class RegistrySettings:
    root: Path
    """Where the store keeps blobs, manifests, tags and uploads."""
    idle_timeout: float
    """A fetch from a peer that sends nothing for this long moves on to the next holder."""
    warm: tuple[str, ...] = ()
    """repo:tag globs whose manifests and blobs are fetched ahead of any client (--registry-warm)."""
    push_token: bytes = field(default=b"", repr=False)
    """What a push must present (--registry-push-token-file); b"": pushes need no credentials."""

    @classmethod
    def from_config(cls, config: Config) -> RegistrySettings:
        return cls(
            root=Path(config.data_dir) / "registry",
            idle_timeout=config.transfer_idle_timeout,
            warm=config.registry_warm,
            push_token=read_push_token(config.registry_push_token_file),
        )


def read_push_token(path: str) -> bytes:
    """The token in --registry-push-token-file (surrounding whitespace dropped); b"" for none."""
    if not path:
        return b""
    try:
        with open(path, "rb") as fh:
            token = fh.read(4097).strip()
    except OSError as exc:
        raise ValueError(f"cannot read --registry-push-token-file {path}: {exc.strerror}") from None
    if len(token) < 16 or len(token) > 4096:
        raise ValueError(
            f"--registry-push-token-file {path}: the token must be 16 to 4096 bytes "
            "(e.g. `openssl rand -hex 32`)"
        )
    return token


class MeshView(Protocol):
    """The mesh as the registry sees it (mesh.node.registry_view.RegistryView)."""

    def live_manifests(self) -> Mapping[str, Mapping[str, Tags]]:
        """Live peers' manifest entries, by node ID."""
        ...

    def metas(self) -> Mapping[str, ImageMeta]: ...

    def sources(self, key: str, holders: list[str], relays: list[str]) -> list[str]:
        """Addresses of holders and relays of `key`, best first (mesh.protocol.sources.rank:
        load, RTT, zone; a relay after an idle holder)."""
        ...

    def fetching(self, digest: str) -> list[str]:
        """Live peers that announce they are fetching `digest` now and relay it as it arrives."""
        ...

    def name(self, node: str) -> str:
        """A node's name, for people."""
        ...

    def addr(self, node: str) -> str | None:
        """The address of a live peer (one a hand-off names), or None if it is not one."""
        ...

    def publish(self) -> None:
        """The registry's announcement changed: put it into the local manifest."""
        ...

    def may_push(self, ref: str) -> bool:
        """Whether a push to `repo:tag` here may be taken: not a protected name on an untrusted
        host (mesh.protocol.trust), since no host would believe it."""
        ...


class PeerContent(Protocol):
    """Content by digest from a peer (mesh.net.client.PeerClient)."""

    def content(
        self,
        addr: str,
        digest: str,
        *,
        offset: int,
        chunk_bytes: int,
        idle_timeout: float,
        limit: int | None = None,
        handoff: bool = False,
        hops: int = 0,
    ) -> AbstractAsyncContextManager[ContentStream]:
        """The peer at `addr`'s copy of `digest` from `offset` on, at most `limit` bytes of it
        (0: only its size and media type); raises mesh.net.client.PeerError if it will not serve,
        HandedOff (a PeerError naming a relay's node ID) if `handoff` and it sends this node on."""
        ...


class Counters(Protocol):
    """What the registry counts (mesh.node.registry_view.RegistryCounters, for /metrics)."""

    def request(self, method: str, outcome: str) -> None: ...

    def served(self, n: int) -> None: ...

    def fetched(self, n: int) -> None: ...


class NoCounters:
    def request(self, method: str, outcome: str) -> None:
        pass

    def served(self, n: int) -> None:
        pass

    def fetched(self, n: int) -> None:
        pass

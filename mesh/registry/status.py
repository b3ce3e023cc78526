"""The `registry` section of /api/status and the status page.

It reads the registry through `RegistryFacts`, not the service module: the service builds its
status with this one, so importing it back would make the two a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from mesh.protocol import oci
from mesh.protocol.oci import TagState
from mesh.registry.fetch import Fetcher
from mesh.registry.ports import MeshView, RegistrySettings
from mesh.registry.store import Store
from mesh.ui.status_doc import RegistryDoc, RegistryTagDoc


class RegistryFacts(Protocol):
    """What the status section reads of the registry (mesh.registry.service.Registry)."""

    @property
    def settings(self) -> RegistrySettings: ...

    @property
    def view(self) -> MeshView: ...

    @property
    def store(self) -> Store: ...

    @property
    def fetcher(self) -> Fetcher: ...

    @property
    def warm_errors(self) -> Mapping[str, str]: ...

    def resolve(self) -> Mapping[str, TagState]: ...

    def complete(self, digest: str) -> tuple[list[str], int] | None: ...

    def warm_progress(self) -> tuple[int, int]: ...


def registry_status(registry: RegistryFacts, listen: str) -> RegistryDoc:
    resolved = registry.resolve()
    live = registry.view.live_manifests()
    metas = registry.view.metas()
    repos: dict[str, list[RegistryTagDoc]] = {}
    for ref, state in sorted(resolved.items()):
        name, _, tag = ref.rpartition(":")
        holders = [registry.view.name(n) for n in oci.holders(state.digest, live, metas)]
        here = registry.complete(state.digest) is not None
        repos.setdefault(name, []).append(
            {
                "tag": tag,
                "digest": state.digest,
                "pushed_ms": state.pushed_ms,
                "here": here,
                "holders": sorted(holders) + (["(this node)"] if here else []),
            }
        )
    held, wanted = registry.warm_progress()
    return {
        "listen": listen,
        "repositories": [{"name": n, "tags": t} for n, t in repos.items()],
        "bytes_held": registry.store.bytes_held(),
        "blobs_held": len(registry.store.digests()),
        "fetches": [
            {"digest": f.digest, "source": f.source, "bytes": f.written, "total": f.size or 0}
            for f in registry.fetcher.active.values()
        ],
        "warm": {
            "globs": list(registry.settings.warm),
            "held": held,
            "wanted": wanted,
            "errors": dict(registry.warm_errors),
        },
    }

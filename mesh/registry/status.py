"""The `registry` section of /api/status and the status page."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mesh.protocol import oci

if TYPE_CHECKING:
    from mesh.registry.service import Registry


def registry_status(registry: Registry, listen: str) -> dict[str, object]:
    resolved = registry.resolve()
    live = registry.view.live_manifests()
    metas = registry.view.metas()
    repos: dict[str, list[dict[str, object]]] = {}
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

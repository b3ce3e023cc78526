"""Chain IDs of every layer a live peer holds: the share rule's "already in the mesh"."""

from __future__ import annotations

from mesh.engine.base import chain_ids
from mesh.protocol.oci import is_registry_entry
from mesh.protocol.view import MeshView


class MeshLayers:
    def __init__(self, view: MeshView) -> None:
        self._view = view
        self._chains: dict[str, tuple[str, ...]] = {}

    def __call__(self) -> set[str]:
        view = self._view
        metas = view.metas()
        held = {
            image
            for peer in view.live_peers()
            for image, tags in view.holdings(peer.id).items()
            if not is_registry_entry(tags)
        }
        out: set[str] = set()
        for image in held:
            meta = metas.get(image)
            if meta is not None:
                chains = self._chains.get(image)
                if chains is None:
                    chains = self._chains[image] = tuple(chain_ids(meta.layers))
                out.update(chains)
        if len(self._chains) > 4 * len(held) + 1000:  # forget images the mesh let go of
            self._chains = {i: c for i, c in self._chains.items() if i in held}
        return out

"""What mesh-brought content a node keeps under its disk budget, what it evicts, and what it does
not pull. Pure: it takes sizes, the budget and last-use times, and returns decisions.

Content is a set of items: images the mesh brought here (pulled), registry manifests held here,
and images the mesh wants here that have not arrived yet. Each item is made of parts with sizes
(an image: the bytes it adds over the image it is built on; a registry manifest: its blobs), and
may need other items (an image the one it is built on), which are kept with it. Parts shared
between items count once.

The rule: pinned items are kept whatever they cost (an image a container uses, an image a local
build or a transfer in progress needs). Then, most recently used first, every item that still fits
is kept, with what it needs. Held items that were not kept are evicted; wanted items that were not
kept are not pulled. An evicted image is remembered by the node and not wanted again (until a
newer image takes its tag), so the mesh does not churn content in and out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mesh.protocol.wire import ImageMeta


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    kind: str
    """"image" or "manifest" (registry)."""
    parts: Mapping[str, int]
    """part -> bytes: what keeping it costs on disk."""
    used: float
    """When it was last used (wall clock seconds): the most recent first are kept."""
    held: bool
    """Here already (else wanted: kept means pull it)."""
    needs: tuple[str, ...] = ()
    """Items that must stay while this one stays (the image it is built on)."""
    pinned: str = ""
    """Why it can never be evicted now ("" if it can)."""
    only_as_need: bool = False
    """Kept only because another item needs it (an untagged parent): never ranked on its own."""


@dataclass(frozen=True, slots=True)
class Eviction:
    id: str
    kind: str
    bytes: int
    """Bytes of parts no kept item shares (what evicting it frees)."""


@dataclass(slots=True)
class Fit:
    keep: set[str] = field(default_factory=set)
    evict: list[Eviction] = field(default_factory=list)
    """Held items to evict, least recently used first."""
    skip: set[str] = field(default_factory=set)
    """Wanted items not to pull: they do not fit."""
    kept_bytes: int = 0
    held_bytes: int = 0
    """Bytes of every held item's parts (counted once), before evictions."""
    pinned_bytes: int = 0


def fit(items: Iterable[Item], budget: int) -> Fit:
    """Keep what fits in `budget` bytes, most recently used first (see the module's rule)."""
    by_id = {item.id: item for item in items}
    out = Fit()
    kept_parts: dict[str, int] = {}

    def closure(item: Item) -> list[Item]:
        """The item and everything it needs, that is not kept yet."""
        found: list[Item] = []
        stack, seen = [item], {item.id}
        while stack:
            current = stack.pop()
            if current.id not in out.keep:
                found.append(current)
            for need in current.needs:
                if need in by_id and need not in seen:
                    seen.add(need)
                    stack.append(by_id[need])
        return found

    def cost(group: list[Item]) -> int:
        parts: dict[str, int] = {}
        for item in group:
            parts.update(item.parts)
        return sum(size for part, size in parts.items() if part not in kept_parts)

    def take(group: list[Item]) -> None:
        for item in group:
            out.keep.add(item.id)
            kept_parts.update(item.parts)

    held_parts: dict[str, int] = {}
    for item in by_id.values():
        if item.held:
            held_parts.update(item.parts)
    out.held_bytes = sum(held_parts.values())

    for item in sorted(by_id.values(), key=lambda i: i.id):
        if item.pinned and item.held:
            take(closure(item))
    out.pinned_bytes = sum(kept_parts.values())
    ranked = sorted(
        (i for i in by_id.values() if not i.only_as_need and i.id not in out.keep),
        key=lambda i: (-i.used, not i.held, i.id),
    )
    for item in ranked:
        if item.id in out.keep:
            continue
        group = closure(item)
        if sum(kept_parts.values()) + cost(group) <= budget:
            take(group)
    out.kept_bytes = sum(kept_parts.values())

    leaving = [i for i in by_id.values() if i.held and i.id not in out.keep]
    for item in sorted(leaving, key=lambda i: (i.used, i.id)):
        freed = sum(size for part, size in item.parts.items() if part not in kept_parts)
        out.evict.append(Eviction(item.id, item.kind, freed))
    out.skip = {i.id for i in by_id.values() if not i.held and i.id not in out.keep}
    return out


def built_on(metas: Sequence[ImageMeta]) -> dict[str, str]:
    """image -> the image it is built on among these: the longest one whose layers are a strict
    prefix of its own ("" if none). Works on both stores (the containerd store keeps no parents)."""
    by_layers: dict[tuple[str, ...], str] = {}
    for meta in sorted(metas, key=lambda m: (m.created, m.id)):
        by_layers.setdefault(meta.layers, meta.id)
    out: dict[str, str] = {}
    for meta in metas:
        out[meta.id] = ""
        for n in range(len(meta.layers) - 1, 0, -1):
            base = by_layers.get(meta.layers[:n])
            if base is not None and base != meta.id:
                out[meta.id] = base
                break
    return out


def image_items(
    *,
    brought: Mapping[str, float],
    wanted: Iterable[str],
    metas: Mapping[str, ImageMeta],
    local: Mapping[str, ImageMeta],
    tagged: set[str],
    pinned: Mapping[str, str],
    wanted_scale: float = 1.0,
) -> list[Item]:
    """Items for the images the mesh brought (held) or wants here (not held yet).

    brought: image -> when it arrived. local: every image here (built here or brought). tagged:
    images here with a tag. pinned: image -> why it cannot go (a container uses it, a transfer
    serves it). An image's cost is its size minus the size of the image it is built on, a part of
    its own; images built here are not the mesh's and cost nothing, but the mesh-brought images
    they are built on are pinned. Last use: the newest of its creation and of the local builds on
    it. A wanted image's size is the mesh's, which another store may count smaller than this
    one does: `wanted_scale` (size_scale) puts it in this engine's terms."""
    wanted = [w for w in wanted if w in metas and w not in local]
    known = {**{i: metas[i] for i in wanted}, **local}
    # A held image stands on held ones only (its layers are here); a wanted one on either.
    base_of = {**built_on(list(known.values())), **built_on(list(local.values()))}
    used = {i: float(m.created) for i, m in known.items()}
    size = {**{i: int(metas[i].size * wanted_scale) for i in wanted}, **{i: m.size for i, m in local.items()}}
    own_builds = [i for i in local if i not in brought]
    pins = dict(pinned)
    for image in own_builds:  # everything a local build stands on stays, and counts as used then
        current = base_of.get(image, "")
        while current:
            used[current] = max(used[current], float(local[image].created))
            if current in brought:
                pins.setdefault(current, "a local build is built on it")
            current = base_of.get(current, "")
    items: list[Item] = []
    for image in [*brought, *wanted]:
        if image not in known:
            continue
        base = base_of.get(image, "")
        own = max(0, size[image] - (size[base] if base else 0))
        items.append(
            Item(
                id=image,
                kind="image",
                parts={image: own},
                used=used[image],
                held=image in local,
                needs=(base,) if base and (base in brought or base in wanted) else (),
                pinned=pins.get(image, ""),
                only_as_need=image in local and image not in tagged,
            )
        )
    return items


def over_watermark(used: int, total: int, high: float) -> bool:
    return total > 0 and high > 0 and used > high * total


def watermark_budget(used: int, total: int, low: float, mesh_bytes: int) -> int:
    """The budget that brings a filesystem at `used` of `total` bytes down to `low`, by evicting
    mesh-brought content of `mesh_bytes` (at best to 0)."""
    excess = used - int(low * total)
    return max(0, mesh_bytes - max(0, excess))


def size_scale(
    local: Mapping[str, ImageMeta], mesh: Mapping[str, ImageMeta], brought: Iterable[str]
) -> float:
    """How much larger this engine counts an image than the mesh announced it: the median over
    the images brought here, at least 1. The containerd store counts an image's compressed content
    and its unpacked snapshot, about twice what a graph driver counts; taken at the mesh's word, a
    wanted image seemed to fit, arrived, and was evicted at once (the soak: 59 of 62 pulls on one
    small-budget host)."""
    ratios = sorted(
        local[i].size / mesh[i].size
        for i in brought
        if i in local and i in mesh and local[i].size > 0 and mesh[i].size > 0
    )
    if not ratios:
        return 1.0
    return max(1.0, ratios[len(ratios) // 2])

"""The mesh's tag claims as this node believes them: mesh.protocol.trust applied to what gossip
brought, for the puller (engine tags and tag sets) and the registry (registry tags).

Every entry stays in the core's manifest copies and is relayed as it came, so untrusted hosts
still hear each other's claims through trusted ones; this view only takes the refused claims out
of what the node resolves tags from. Images and registry manifests stay in every holdings view
(with fewer tags, or none), so their content is still fetched from whoever holds it, by digest.

Verifying an Ed25519 signature costs tens of microseconds, and the puller looks at every peer's
manifest on every plan, so each entry's result is cached by everything it covers (publisher,
entry, stamp, tags, signature) and the cache is bounded: the least recently used go first.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from mesh.net.trust_keys import TrustKeys
from mesh.protocol import nodestatus, oci
from mesh.protocol.tagsets import TagSet
from mesh.protocol.trust import (
    IMAGE,
    OFF,
    REGISTRY,
    TAGSET,
    Claim,
    Newest,
    Policy,
    Signature,
    Verdict,
    judge,
    judge_all,
)
from mesh.protocol.view import MeshView
from mesh.protocol.wire import Tags

MAX_CACHED = 50_000
"""Entries whose verification is remembered (about 200 bytes each)."""
MAX_ROWS = 500
"""Claims listed on the status page: enough to find a name, bounded for a large fleet."""


@dataclass(slots=True)
class _Checked:
    signature: Signature
    counted: set[tuple[str, str]]  # (name, reason) refusals already counted


@dataclass(frozen=True, slots=True)
class ClaimRow:
    """One claim as the status page lists it."""

    kind: str
    name: str
    target: str  # the image (mesh key) or registry manifest digest it names
    publisher: str  # node ID
    klass: str
    believed: bool
    reason: str


class TrustView:
    def __init__(
        self,
        view: MeshView,
        keys: TrustKeys | None,
        protected: tuple[str, ...] = (),
        on_refused: Callable[[str], None] = lambda reason: None,
    ) -> None:
        """`keys`: this node's trust keys (None: trust classes off, every claim believed);
        `on_refused(reason)`: a claim was refused, once per claim."""
        self._view = view
        self._keys = keys
        self.policy = (
            Policy(enabled=True, trusted=keys.trusted, protected=protected) if keys is not None else OFF
        )
        self._on_refused = on_refused
        self.refused: Counter[str] = Counter()
        """Claims refused since start, by reason (each counted once, as the metric counts them)."""
        self._checked: OrderedDict[tuple[str, str, int, Tags, bytes], _Checked] = OrderedDict()
        self._newest = Newest()

    @property
    def enabled(self) -> bool:
        return self.policy.enabled

    # --- what the puller and the registry read ---------------------------------------------

    def holdings(self, node: str) -> dict[str, Tags]:
        """`node`'s holdings (as MeshView.holdings) with only the claims this node believes."""
        if not self.enabled:
            return self._view.holdings(node)
        believed = self._believed(node)
        out: dict[str, Tags] = {}
        for image, (tags, _, _) in self._view.entries(node).items():
            if nodestatus.is_status_entry(tags):
                continue
            names = believed.get(image, set())
            if oci.is_registry_entry(tags):
                out[image] = (tags[0], *(t for t in tags[1:] if _ref(t) in names))
            else:
                out[image] = tuple(t for t in tags if t in names)
        return out

    def tagsets(self, node: str) -> dict[str, TagSet]:
        """`node`'s gossiped tag sets this node believes."""
        sets = dict(self._view.status(node).tagsets)
        if not self.enabled:
            return sets
        names = self._believed(node).get(nodestatus.status_key(node), set())
        return {tag: s for tag, s in sets.items() if tag in names}

    def local_claims(self, tags: Mapping[str, Tags]) -> dict[str, Tags]:
        """This host's own engine tags as claims it believes: its own class, so on an untrusted
        host a protected name built here counts for nothing (the mesh's signed claim wins)."""
        if not self.enabled or self.policy.trusted:
            return dict(tags)
        return {image: tuple(t for t in held if not self.policy.protects(t)) for image, held in tags.items()}

    def local_sets(self, sets: Mapping[str, TagSet]) -> dict[str, TagSet]:
        if not self.enabled or self.policy.trusted:
            return dict(sets)
        return {tag: s for tag, s in sets.items() if not self.policy.protects(tag)}

    def may_push(self, ref: str) -> bool:
        """Whether a push to registry `repo:tag` here could ever be believed: never a protected
        name on an untrusted host."""
        return not (self.enabled and not self.policy.trusted and self.policy.protects(ref))

    # --- for people --------------------------------------------------------------------------

    def rows(self, nodes: list[str]) -> list[ClaimRow]:
        """Claims of `nodes`, believed or not, with class and reason (at most MAX_ROWS)."""
        rows: list[ClaimRow] = []
        for node in nodes:
            for _, claim, target, verdict in self._judge(node):
                rows.append(
                    ClaimRow(
                        claim.kind, claim.name, target, node, verdict.klass, verdict.believed, verdict.reason
                    )
                )
                if len(rows) >= MAX_ROWS:
                    return rows
        return rows

    # --- inside --------------------------------------------------------------------------------

    def _believed(self, node: str) -> dict[str, set[str]]:
        """entry ID -> the names it claims that this node believes."""
        out: dict[str, set[str]] = {}
        for image, claim, _, verdict in self._judge(node):
            if verdict.believed:
                out.setdefault(image, set()).add(claim.name)
        return out

    def _judge(self, node: str) -> list[tuple[str, Claim, str, Verdict]]:
        """(entry ID, claim, target, verdict) for every claim in `node`'s manifest. All of the
        publisher's entries are judged together, so a replayed old entry is refused even in the
        very look that first brings the current one."""
        found: list[tuple[str, Claim, str, _Checked]] = []
        for image, (tags, stamp, sig) in self._view.entries(node).items():
            checked = self._check(node, image, tags, stamp, sig)
            for kind, name, target in _claims(image, tags):
                found.append((image, Claim(name, kind, node, stamp, checked.signature), target, checked))
        if self.enabled:
            judged = judge_all((c for _, c, _, _ in found), self.policy, self._newest)
        else:
            judged = [(c, judge(c, self.policy)) for _, c, _, _ in found]
        out = []
        for (image, claim, target, checked), (_, verdict) in zip(found, judged, strict=True):
            if not verdict.believed and (claim.name, verdict.reason) not in checked.counted:
                checked.counted.add((claim.name, verdict.reason))
                self.refused[verdict.reason] += 1
                self._on_refused(verdict.reason)
            out.append((image, claim, target, verdict))
        return out

    def _check(self, node: str, image: str, tags: Tags, stamp: int, sig: bytes) -> _Checked:
        key = (node, image, stamp, tags, sig)
        checked = self._checked.get(key)
        if checked is not None:
            self._checked.move_to_end(key)
            return checked
        if not sig:
            signature = Signature.UNSIGNED
        elif self._keys is not None and self._keys.verify(node, image, tags, stamp, sig):
            signature = Signature.VALID
        else:
            signature = Signature.INVALID
        checked = self._checked[key] = _Checked(signature, set())
        if len(self._checked) > MAX_CACHED:
            self._prune()
        return checked

    def _prune(self) -> None:
        while len(self._checked) > MAX_CACHED * 3 // 4:
            self._checked.popitem(last=False)
        # Publishers the mesh reaped: their claims count nowhere now, nor do their newest stamps.
        known = {self._view.node_id, *self._view.peers()}
        self._newest.forget(known)


def _ref(text: str) -> str:
    """The `repo:tag` of a registry entry's tag item ("oci <repo:tag> <ms>")."""
    return text.removeprefix(oci.PREFIX).rpartition(" ")[0]


def _claims(image: str, tags: Tags) -> Iterator[tuple[str, str, str]]:
    """(kind, name, target) for every name an entry claims."""
    if nodestatus.is_status_entry(tags):
        status = nodestatus.parse(tags)
        for tag, tagset in (status.tagsets if status is not None else {}).items():
            yield TAGSET, tag, tagset.image
        return
    if oci.is_registry_entry(tags):
        parsed = oci.parse(tags)
        if parsed is not None:
            digest, refs = parsed
            for ref in refs:
                yield REGISTRY, ref, digest
        return
    for tag in tags:
        yield IMAGE, tag, image

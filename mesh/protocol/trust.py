"""Trust classes: which tag claims this node believes. Pure.

A tag claim is one node saying "this name points at that content": a tag on an image in its
manifest, a `repo:tag` on a registry manifest it announces (mesh.protocol.oci), or a tag set it
gossips (mesh.protocol.tagsets). Content travels by digest and is verified on arrival, so who
holds it never matters; who *names* it does, since a name is what the next build trusts.

A fleet that configures a trust key pair (mesh.net.trust_keys) has two classes of host:
- **trusted** hosts hold the private key and sign every manifest entry they announce, so their
  claims are *signed*;
- **untrusted** hosts (CI runners for fork pull requests, say) hold only the public key: their
  claims are unsigned.

What each host believes (`judge`):
- a trusted host believes only signed claims: nothing an untrusted host says moves its tags;
- an untrusted host believes signed claims and its own class's (unsigned) ones, so a pull
  request still builds on main's cache and on its own branch's;
- a name matching a protected pattern (`--protect`, fnmatch globs such as `*:main`,
  `cache/*:main`, `debian:*`) is believed only from a signed claim, on every host;
- a signature that does not verify (forged with the cluster secret, garbled, moved to another
  tag, image or publisher) refuses the whole entry on every host;
- a signed claim older than one the same publisher has signed for the same name since
  (`Newest`) is a replay (an attacker feeding back an old claim after hiding the new one to roll
  the name back) and is refused.

With no public key configured the node believes every claim, exactly as before trust classes.
Refusals only hide claims from tag resolution: every entry is still held and relayed, so other
hosts (of either class) still get it, and the content stays fetchable by digest.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

TRUSTED = "trusted"
UNTRUSTED = "untrusted"


class Signature(Enum):
    """What checking an entry's signature found."""

    UNSIGNED = "unsigned"
    VALID = "valid"
    INVALID = "invalid"


# Why a claim was refused: the `reason` label of cachemesh_trust_claims_refused_total.
REFUSED_UNSIGNED = "unsigned"  # a trusted host, an unsigned claim
REFUSED_PROTECTED = "protected"  # a protected name, an unsigned claim
REFUSED_BAD_SIGNATURE = "bad-signature"  # the signature does not verify (forged, garbled, moved)
REFUSED_REPLAYED = "replayed"  # older than a claim the publisher signed since for the name
REFUSALS = (REFUSED_UNSIGNED, REFUSED_PROTECTED, REFUSED_BAD_SIGNATURE, REFUSED_REPLAYED)

# What kind of name a claim sets: separate namespaces for replay detection, since one publisher
# may claim `app:main` as an image tag and as a tag set at once, at different stamps.
IMAGE = "image"
REGISTRY = "registry"
TAGSET = "tagset"


@dataclass(frozen=True, slots=True)
class Policy:
    """This node's side of trust: whether trust classes are on, its own class, protected names."""

    enabled: bool = False
    """A public trust key is configured here: trust classes apply. Off: every claim is believed."""
    trusted: bool = False
    """This host holds the private key (it is a trusted publisher)."""
    protected: tuple[str, ...] = ()
    """fnmatch globs of names only signed claims may set, on every host."""

    @property
    def own_class(self) -> str:
        return TRUSTED if self.trusted else UNTRUSTED

    def protects(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.protected)


OFF = Policy()


@dataclass(frozen=True, slots=True)
class Claim:
    name: str
    """The tag or `repo:tag` claimed."""
    kind: str
    """IMAGE, REGISTRY or TAGSET."""
    publisher: str
    """The node whose manifest entry carries the claim."""
    stamp: int
    """The publisher's manifest version when the entry last changed (signed with it)."""
    signature: Signature


@dataclass(frozen=True, slots=True)
class Verdict:
    believed: bool
    klass: str
    """The claim's trust class: TRUSTED for a valid signature, else UNTRUSTED."""
    reason: str
    """Why refused (one of REFUSALS), or "" when believed."""


def judge(claim: Claim, policy: Policy, newest_signed: int | None = None) -> Verdict:
    """Believe `claim` or not. `newest_signed`: the highest stamp at which the claim's publisher
    has signed a claim of the same kind and name, as far as this node has seen (None: none)."""
    if not policy.enabled:
        klass = TRUSTED if claim.signature is Signature.VALID else UNTRUSTED
        return Verdict(True, klass, "")
    if claim.signature is Signature.INVALID:
        return Verdict(False, UNTRUSTED, REFUSED_BAD_SIGNATURE)
    if claim.signature is Signature.VALID:
        if newest_signed is not None and claim.stamp < newest_signed:
            return Verdict(False, TRUSTED, REFUSED_REPLAYED)
        return Verdict(True, TRUSTED, "")
    if policy.protects(claim.name):
        return Verdict(False, UNTRUSTED, REFUSED_PROTECTED)
    if policy.trusted:
        return Verdict(False, UNTRUSTED, REFUSED_UNSIGNED)
    return Verdict(True, UNTRUSTED, "")


class Newest:
    """The highest stamp each publisher has signed each name at, as seen here: what tells a
    replayed old claim from a current one. Grows with publishers x names; `forget` drops a
    publisher the mesh reaped (none of its claims count any more)."""

    def __init__(self) -> None:
        self._stamps: dict[tuple[str, str, str], int] = {}

    def get(self, claim: Claim) -> int | None:
        return self._stamps.get((claim.publisher, claim.kind, claim.name))

    def saw(self, claim: Claim) -> None:
        """A claim with a valid signature was seen (believed or not)."""
        key = (claim.publisher, claim.kind, claim.name)
        if claim.stamp > self._stamps.get(key, -1):
            self._stamps[key] = claim.stamp

    def forget(self, keep: Iterable[str]) -> None:
        """Keep only the publishers in `keep`."""
        publishers = set(keep)
        self._stamps = {k: v for k, v in self._stamps.items() if k[0] in publishers}

    def __len__(self) -> int:
        return len(self._stamps)


def judge_all(claims: Iterable[Claim], policy: Policy, newest: Newest) -> list[tuple[Claim, Verdict]]:
    """Judge claims seen together (one look at the mesh): every valid signature counts towards
    the newest stamps first, so a replayed claim is refused even when it arrives with the current
    one, whichever comes first."""
    claims = list(claims)
    if policy.enabled:
        for claim in claims:
            if claim.signature is Signature.VALID:
                newest.saw(claim)
    return [(claim, judge(claim, policy, newest.get(claim))) for claim in claims]

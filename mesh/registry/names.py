"""Paths of the OCI distribution API, parsed once into (name, kind, reference), by the spec's grammar.

A name that passes `NAME` cannot hold `..`, a leading `/` or any character outside `[a-z0-9._/-]`,
so nothing built from it escapes the store (tags are kept under a quoted name besides).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from mesh.protocol.wire import is_sha256

# distribution-spec, "Pulling manifests": <name> and <reference> grammars.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
MAX_NAME = 255  # Docker's limit on a repository name


class Kind(Enum):
    BASE = "base"  # GET /v2/
    BLOB = "blob"
    UPLOAD = "upload"  # /blobs/uploads/<id?>
    MANIFEST = "manifest"
    TAGS = "tags"
    REFERRERS = "referrers"
    CATALOG = "catalog"


@dataclass(frozen=True, slots=True)
class Route:
    kind: Kind
    name: str = ""
    reference: str = ""


_ROUTES = (
    (re.compile(r"(.+)/blobs/uploads/([^/]*)"), Kind.UPLOAD),
    (re.compile(r"(.+)/blobs/([^/]+)"), Kind.BLOB),
    (re.compile(r"(.+)/manifests/([^/]+)"), Kind.MANIFEST),
    (re.compile(r"(.+)/referrers/([^/]+)"), Kind.REFERRERS),
    (re.compile(r"(.+)/tags/(list)"), Kind.TAGS),
)


class BadName(ValueError):
    pass


def parse_path(tail: str) -> Route | None:
    """The part after `/v2/` -> a Route; None for no such endpoint. Raises BadName for a name
    outside the grammar (the caller answers NAME_INVALID)."""
    if tail == "":
        return Route(Kind.BASE)
    if tail == "_catalog":
        return Route(Kind.CATALOG)
    for pattern, kind in _ROUTES:
        match = pattern.fullmatch(tail)
        if match:
            name, reference = match.groups()
            if len(name) > MAX_NAME or not NAME.fullmatch(name):
                raise BadName(name)
            return Route(kind, name, reference)
    return None


def is_digest(reference: str) -> bool:
    return ":" in reference


def valid_digest(digest: str) -> bool:
    """Only sha256 is stored: other algorithms are well-formed but unsupported."""
    return is_sha256(digest)


def valid_tag(tag: str) -> bool:
    return bool(TAG.fullmatch(tag))

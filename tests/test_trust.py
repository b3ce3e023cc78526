"""The trust classes' belief rule (mesh.protocol.trust): a table of who believes what."""

from __future__ import annotations

import pytest

from mesh.protocol.trust import (
    IMAGE,
    OFF,
    REFUSED_BAD_SIGNATURE,
    REFUSED_PROTECTED,
    REFUSED_REPLAYED,
    REFUSED_UNSIGNED,
    REGISTRY,
    TAGSET,
    TRUSTED,
    UNTRUSTED,
    Claim,
    Newest,
    Policy,
    Signature,
    judge,
    judge_all,
)

PROTECTED = ("*:main", "cache/*:main", "debian:*")
TRUSTED_HOST = Policy(enabled=True, trusted=True, protected=PROTECTED)
UNTRUSTED_HOST = Policy(enabled=True, trusted=False, protected=PROTECTED)

VALID, UNSIGNED, INVALID = Signature.VALID, Signature.UNSIGNED, Signature.INVALID


def claim(name: str, signature: Signature, stamp: int = 10, kind: str = IMAGE, publisher: str = "p") -> Claim:
    return Claim(name, kind, publisher, stamp, signature)


CASES = [
    # (host policy, claim name, signature, believed, reason, class)
    (TRUSTED_HOST, "app:main", VALID, True, "", TRUSTED),
    (TRUSTED_HOST, "app:pr-7", VALID, True, "", TRUSTED),
    (TRUSTED_HOST, "app:pr-7", UNSIGNED, False, REFUSED_UNSIGNED, UNTRUSTED),  # untrusted never moves it
    (TRUSTED_HOST, "app:main", UNSIGNED, False, REFUSED_PROTECTED, UNTRUSTED),
    (TRUSTED_HOST, "app:main", INVALID, False, REFUSED_BAD_SIGNATURE, UNTRUSTED),
    (TRUSTED_HOST, "app:pr-7", INVALID, False, REFUSED_BAD_SIGNATURE, UNTRUSTED),
    (UNTRUSTED_HOST, "app:main", VALID, True, "", TRUSTED),  # a PR build gets main's cache
    (UNTRUSTED_HOST, "app:pr-7", UNSIGNED, True, "", UNTRUSTED),  # and its own class's
    (UNTRUSTED_HOST, "app:main", UNSIGNED, False, REFUSED_PROTECTED, UNTRUSTED),
    (UNTRUSTED_HOST, "cache/app:main", UNSIGNED, False, REFUSED_PROTECTED, UNTRUSTED),
    (UNTRUSTED_HOST, "debian:12", UNSIGNED, False, REFUSED_PROTECTED, UNTRUSTED),
    (UNTRUSTED_HOST, "debian:12", VALID, True, "", TRUSTED),
    (UNTRUSTED_HOST, "app:pr-7", INVALID, False, REFUSED_BAD_SIGNATURE, UNTRUSTED),  # forged: never
    (UNTRUSTED_HOST, "cache/app:pr-7", UNSIGNED, True, "", UNTRUSTED),
    # No key configured: everything, as before trust classes.
    (OFF, "app:main", UNSIGNED, True, "", UNTRUSTED),
    (OFF, "app:main", INVALID, True, "", UNTRUSTED),
    (OFF, "app:main", VALID, True, "", TRUSTED),
]


@pytest.mark.parametrize(("policy", "name", "signature", "believed", "reason", "klass"), CASES)
def test_who_believes_what(
    policy: Policy, name: str, signature: Signature, believed: bool, reason: str, klass: str
) -> None:
    verdict = judge(claim(name, signature), policy)
    assert (verdict.believed, verdict.reason, verdict.klass) == (believed, reason, klass)


def test_protected_patterns_are_globs_over_the_whole_name() -> None:
    assert UNTRUSTED_HOST.protects("app:main")
    assert UNTRUSTED_HOST.protects("cache/app:main")
    assert not UNTRUSTED_HOST.protects("app:maintenance")
    assert not UNTRUSTED_HOST.protects("app:main-old")
    assert not OFF.protects("app:main")


def test_a_signed_claim_older_than_one_signed_since_is_a_replay() -> None:
    newest = Newest()
    current = claim("app:main", VALID, stamp=20)
    old = claim("app:main", VALID, stamp=10)
    # Both in one look at the mesh, the old one first: the old one is still refused.
    verdicts = judge_all([old, current], TRUSTED_HOST, newest)
    assert [(v.believed, v.reason) for _, v in verdicts] == [(False, REFUSED_REPLAYED), (True, "")]
    # The current one hidden later (a forged removal): the old one stays refused.
    [(_, verdict)] = judge_all([old], TRUSTED_HOST, newest)
    assert (verdict.believed, verdict.reason) == (False, REFUSED_REPLAYED)
    # Untrusted hosts refuse it alike: a replay rolls back nobody.
    [(_, verdict)] = judge_all([old], UNTRUSTED_HOST, newest)
    assert verdict.reason == REFUSED_REPLAYED


def test_replays_are_told_apart_per_publisher_kind_and_name() -> None:
    newest = Newest()
    judge_all([claim("app:main", VALID, stamp=20)], TRUSTED_HOST, newest)
    others = [
        claim("app:main", VALID, stamp=10, publisher="q"),  # another publisher's
        claim("app:main", VALID, stamp=10, kind=TAGSET),  # a tag set, not an image tag
        claim("app:main", VALID, stamp=10, kind=REGISTRY),
        claim("app:v1", VALID, stamp=10),  # another name
    ]
    assert all(v.believed for _, v in judge_all(others, TRUSTED_HOST, newest))


def test_unsigned_and_forged_claims_never_raise_the_newest_stamp() -> None:
    newest = Newest()
    judge_all(
        [claim("app:main", INVALID, stamp=99), claim("app:main", UNSIGNED, stamp=98)], TRUSTED_HOST, newest
    )
    assert newest.get(claim("app:main", VALID)) is None
    [(_, verdict)] = judge_all([claim("app:main", VALID, stamp=5)], TRUSTED_HOST, newest)
    assert verdict.believed


def test_newest_forgets_reaped_publishers() -> None:
    newest = Newest()
    judge_all([claim("a", VALID, publisher="p"), claim("a", VALID, publisher="q")], TRUSTED_HOST, newest)
    newest.forget(["q"])
    assert len(newest) == 1 and newest.get(claim("a", VALID, publisher="q")) == 10

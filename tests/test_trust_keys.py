"""Trust keys (mesh.net.trust_keys): key files, signatures that bind the whole claim, rotation,
and the signature's field on the wire (mesh.protocol.wire.Entry)."""

from __future__ import annotations

import time
from pathlib import Path

import msgpack
import pytest

from mesh.cli import main
from mesh.net.trust_keys import TrustKeyError, TrustKeys, generate, load_private, load_public, write_pair
from mesh.protocol.wire import BAD_SIGNATURE, Entry, ManifestUpdate, message_from_wire, message_to_wire
from tests.test_wire import D1

TAGS = ("app:main", "app:41")


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    write_pair(tmp_path / "trust.key", tmp_path / "trust.pub")
    return tmp_path / "trust.key", tmp_path / "trust.pub"


def test_a_signature_covers_publisher_entry_tags_stamp_and_cluster(pair: tuple[Path, Path]) -> None:
    key, pub = pair
    signer = TrustKeys("ci", load_private(str(key)), ())
    verifier = TrustKeys("ci", None, load_public(str(pub)))
    sig = signer.sign("node-a", D1, TAGS, 7)
    assert len(sig) == 64
    assert verifier.verify("node-a", D1, TAGS, 7, sig)
    assert not verifier.verify("node-b", D1, TAGS, 7, sig)  # moved to another publisher
    assert not verifier.verify("node-a", "sha256:" + "1" * 64, TAGS, 7, sig)  # to another image
    assert not verifier.verify("node-a", D1, ("app:evil",), 7, sig)  # to another tag
    assert not verifier.verify("node-a", D1, TAGS[::-1], 7, sig)
    assert not verifier.verify("node-a", D1, TAGS, 8, sig)  # to another stamp
    assert not TrustKeys("other", None, load_public(str(pub))).verify("node-a", D1, TAGS, 7, sig)
    assert not verifier.verify("node-a", D1, TAGS, 7, sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not verifier.verify("node-a", D1, TAGS, 7, b"")
    assert not verifier.verify("node-a", D1, TAGS, 7, BAD_SIGNATURE)
    assert not verifier.verify("node-a", D1, TAGS, 7, b"x" * 200)


def test_a_signature_from_another_key_pair_does_not_verify(pair: tuple[Path, Path], tmp_path: Path) -> None:
    _, pub = pair
    other, _ = generate()
    (tmp_path / "other.key").write_bytes(other)
    sig = TrustKeys("ci", load_private(str(tmp_path / "other.key")), ()).sign("n", D1, TAGS, 1)
    assert not TrustKeys("ci", None, load_public(str(pub))).verify("n", D1, TAGS, 1, sig)


def test_rotation_a_pub_file_with_two_keys_verifies_both(tmp_path: Path) -> None:
    write_pair(tmp_path / "old.key", tmp_path / "old.pub")
    write_pair(tmp_path / "new.key", tmp_path / "new.pub")
    both = tmp_path / "both.pub"
    both.write_bytes((tmp_path / "new.pub").read_bytes() + (tmp_path / "old.pub").read_bytes())
    verifier = TrustKeys("ci", None, load_public(str(both)))
    assert len(verifier.fingerprints) == 2
    for name in ("old", "new"):
        signer = TrustKeys("ci", load_private(str(tmp_path / f"{name}.key")), ())
        assert verifier.verify("n", D1, TAGS, 3, signer.sign("n", D1, TAGS, 3))
    # After the rotation, the old key's claims no longer verify.
    new_only = TrustKeys("ci", None, load_public(str(tmp_path / "new.pub")))
    old_signer = TrustKeys("ci", load_private(str(tmp_path / "old.key")), ())
    assert not new_only.verify("n", D1, TAGS, 3, old_signer.sign("n", D1, TAGS, 3))


def test_a_trusted_host_verifies_its_own_signatures_without_a_pub_file(pair: tuple[Path, Path]) -> None:
    keys = TrustKeys.load("ci", str(pair[0]), "")
    assert keys is not None and keys.trusted
    assert keys.verify("n", D1, TAGS, 1, keys.sign("n", D1, TAGS, 1))
    assert TrustKeys.load("ci", "", "") is None
    untrusted = TrustKeys.load("ci", "", str(pair[1]))
    assert untrusted is not None and not untrusted.trusted
    with pytest.raises(RuntimeError):
        untrusted.sign("n", D1, TAGS, 1)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not an unencrypted PEM private key"),
        (b"hello", "not an unencrypted PEM private key"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not an unencrypted PEM"),
    ],
)
def test_a_bad_private_key_file_is_refused_with_why(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(TrustKeyError, match=message):
        load_private(str(path))


def test_a_public_key_is_no_private_key_and_the_reverse(pair: tuple[Path, Path], tmp_path: Path) -> None:
    key, pub = pair
    with pytest.raises(TrustKeyError, match="--trust-key file"):
        load_private(str(pub))
    with pytest.raises(TrustKeyError, match="no PEM public key"):
        load_public(str(key))
    with pytest.raises(TrustKeyError, match="cannot read --trust-pub file"):
        load_public(str(tmp_path / "missing.pub"))
    three = tmp_path / "three.pub"
    three.write_bytes(pub.read_bytes() * 3)
    with pytest.raises(TrustKeyError, match="holds 3 keys"):
        load_public(str(three))
    garbled = tmp_path / "garbled.pub"
    garbled.write_bytes(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(TrustKeyError, match="key 1 does not parse"):
        load_public(str(garbled))


def test_keygen_writes_a_private_key_only_its_owner_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "trust.key").stat().st_mode & 0o777 == 0o600
    assert "fingerprint" in capsys.readouterr().out
    keys = TrustKeys.load("ci", str(tmp_path / "trust.key"), str(tmp_path / "trust.pub"))
    assert keys is not None and len(keys.fingerprints) == 1  # the pub file's key is the private's
    assert main(["keygen", "--out", str(tmp_path)]) == 1  # never overwrites a key
    assert "not overwriting" in capsys.readouterr().err


# --- on the wire -----------------------------------------------------------------------------


def _roundtrip(entry: Entry) -> Entry:
    update = ManifestUpdate("n", 0, 1, (entry,))
    wire = msgpack.unpackb(msgpack.packb(message_to_wire(update)), raw=False)
    parsed = message_from_wire(wire)
    assert isinstance(parsed, ManifestUpdate)
    return parsed.changes[0]


def test_an_unsigned_entry_encodes_as_before_and_a_signed_one_carries_its_signature() -> None:
    unsigned = Entry(D1, TAGS, 3)
    assert len(unsigned.to_wire()) == 3  # the bytes of a fleet without a trust key do not change
    assert _roundtrip(unsigned) == unsigned
    signed = Entry(D1, TAGS, 3, b"s" * 64)
    assert _roundtrip(signed) == signed


def test_an_older_node_reads_a_signed_entry_by_its_first_three_fields() -> None:
    # An older node's decoder takes fields [0:3] and ignores what follows: the same three values.
    wire = Entry(D1, TAGS, 3, b"s" * 64).to_wire()
    assert Entry.from_wire(wire[:3]) == Entry(D1, TAGS, 3)


def test_a_signature_field_that_is_no_bytes_becomes_one_that_never_verifies() -> None:
    wire = [*Entry(D1, TAGS, 3).to_wire(), 12345]
    assert Entry.from_wire(wire).sig == BAD_SIGNATURE


def test_sign_and_verify_cost(pair: tuple[Path, Path]) -> None:
    """Not a benchmark: a bound that fails if signing were accidentally made slow (a key reload
    per claim, say). The figures for the docs come from scripts/bench_trust.py."""
    keys = TrustKeys.load("ci", str(pair[0]), str(pair[1]))
    assert keys is not None
    start = time.perf_counter()
    for stamp in range(200):
        assert keys.verify("n", D1, TAGS, stamp, keys.sign("n", D1, TAGS, stamp))
    assert (time.perf_counter() - start) / 200 < 0.005

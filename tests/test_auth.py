import pytest

from mesh.net.auth import (
    HEADER_SIGNATURE,
    HEADER_TIME,
    AuthError,
    ReplayGuard,
    Signer,
    derive_key,
    verify_request,
)

KEY = derive_key(b"s" * 32, "prod")
SIGNER = Signer(KEY, "prod", "node-a")


def verify(headers, body=b"body", now=1000.0, key=KEY, cluster="prod", path="/v1/gossip", replay=None):
    return verify_request(key, cluster, "POST", path, headers, body, now, 120.0, replay or ReplayGuard(120.0))


def test_a_signed_request_verifies_and_names_its_sender():
    headers = SIGNER.sign_request("POST", "/v1/gossip", b"body", 1000.0)
    assert verify(headers) == "node-a"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda h: h.pop(HEADER_SIGNATURE), "unauthenticated"),
        (lambda h: h.clear(), "unauthenticated"),
        (lambda h: h.update({HEADER_SIGNATURE: "0" * 64}), "bad signature"),
        (lambda h: h.update({"X-Cachemesh-Cluster": "other"}), "cluster mismatch"),
        (lambda h: h.update({HEADER_TIME: "abc"}), "malformed authentication timestamp"),
    ],
)
def test_forged_or_unsigned_requests_are_refused(change, message):
    headers = SIGNER.sign_request("POST", "/v1/gossip", b"body", 1000.0)
    change(headers)
    with pytest.raises(AuthError, match=message):
        verify(headers)


def test_body_path_and_key_are_all_covered():
    headers = SIGNER.sign_request("POST", "/v1/gossip", b"body", 1000.0)
    with pytest.raises(AuthError, match="bad signature"):
        verify(headers, body=b"tampered")
    with pytest.raises(AuthError, match="bad signature"):
        verify(headers, path="/v1/save")
    with pytest.raises(AuthError, match="bad signature"):
        verify(headers, key=derive_key(b"other secret here", "prod"))


def test_same_secret_different_cluster_does_not_verify():
    other = Signer(derive_key(b"s" * 32, "staging"), "prod", "node-a")
    with pytest.raises(AuthError, match="bad signature"):
        verify(other.sign_request("POST", "/v1/gossip", b"body", 1000.0))


def test_stale_and_replayed_requests_are_refused():
    headers = SIGNER.sign_request("POST", "/v1/gossip", b"body", 1000.0)
    with pytest.raises(AuthError, match="off this node's clock"):
        verify(headers, now=1200.0)
    replay = ReplayGuard(120.0)
    verify(headers, replay=replay)
    with pytest.raises(AuthError, match="replayed"):
        verify(headers, replay=replay)


def test_responses_are_bound_to_the_request_nonce():
    headers = SIGNER.sign_response("nonce-1", 200, b"reply")
    SIGNER.verify_response("nonce-1", 200, headers, b"reply")
    with pytest.raises(AuthError):
        SIGNER.verify_response("nonce-2", 200, headers, b"reply")
    with pytest.raises(AuthError):
        SIGNER.verify_response("nonce-1", 200, headers, b"altered")


def test_replay_guard_forgets_old_nonces_but_stays_bounded():
    guard = ReplayGuard(10.0, capacity=3)
    assert all(guard.check_and_remember(f"n{i}", 0.0) for i in range(5))
    assert guard.check_and_remember(
        "n0", 100.0
    )  # long expired: accepted (its timestamp is checked elsewhere)
    assert len(guard._seen) <= 3

"""TLS on the peer API: the derived CA, node certificates, contexts, and nodes over loopback."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from mesh.config import ConfigError
from mesh.engine.fake import FakeEngine
from mesh.lab.poll import async_wait_until
from mesh.net.pki import (
    ca_certificate,
    derive_ca_key,
    fingerprint,
    issue_node_certificate,
    load_or_create_node_key,
    parse_peer_certificate,
    pem,
)
from mesh.net.tls_contexts import NodeTLS, load_chain
from mesh.options import resolve
from mesh.protocol import wire
from mesh.sim.tls_wirecost import TLS_HANDSHAKE_CLIENT_BYTES, TLS_HANDSHAKE_SERVER_BYTES, tls_overhead
from tests.inproc import SECRET, client_ssl, has_image, start_node

OLD = b"old-cluster-secret-0123456789"
NEW = b"new-cluster-secret-0123456789"
NOW = datetime.datetime.now(datetime.UTC)
STDLIB_TLS_READ_BUFFER = 256 * 1024  # asyncio.sslproto.SSLProtocol.max_size, untouched


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def key_pem(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# --- derivation and certificates ---------------------------------------------------------------


def test_the_ca_is_the_same_on_every_node_and_differs_per_secret_and_cluster():
    one = ca_certificate(derive_ca_key(SECRET, "default"), "default")
    again = ca_certificate(derive_ca_key(SECRET, "default"), "default")
    assert der(one) == der(again)  # byte for byte: nothing to distribute
    other_cluster = ca_certificate(derive_ca_key(SECRET, "ci"), "ci")
    other_secret = ca_certificate(derive_ca_key(OLD, "default"), "default")
    assert len({der(one), der(other_cluster), der(other_secret)}) == 3
    assert one.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_node_certificate_names_the_node_and_the_secrets_it_holds():
    ca = derive_ca_key(NEW, "default")
    node_key = ed25519.Ed25519PrivateKey.generate()
    cert = issue_node_certificate(ca, "default", "abc123", node_key.public_key(), now=NOW, holds=("f1", "f2"))
    parsed = parse_peer_certificate(der(cert))
    assert parsed.node_id == "abc123" and parsed.holds == ("f1", "f2")
    assert cert.not_valid_before_utc < NOW < cert.not_valid_after_utc
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes)  # signed by the derived CA


def test_the_node_key_is_made_once_and_kept_private(tmp_path: Path):
    path = tmp_path / "tls" / "node.key"
    first = load_or_create_node_key(path)
    assert path.stat().st_mode & 0o077 == 0
    assert key_pem(load_or_create_node_key(path)) == key_pem(first)


def handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> tuple[int, int]:
    """A full handshake in memory, then one byte of data (the server verifies the client's
    certificate only then in TLS 1.3). Returns the bytes each side sent for the handshake."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_side=False)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    sent_c = sent_s = 0
    done_c = done_s = False
    for _ in range(10):
        if not done_c:
            done_c = _step(c)
        data = c_out.read()
        sent_c += len(data)
        s_in.write(data)
        if not done_s:
            done_s = _step(s)
        data = s_out.read()
        sent_s += len(data)
        c_in.write(data)
        if done_c and done_s:
            break
    c.write(b"x")
    s_in.write(c_out.read())
    assert s.read(1) == b"x"
    return sent_c, sent_s


def _step(side: ssl.SSLObject) -> bool:
    try:
        side.do_handshake()
    except ssl.SSLWantReadError:
        return False
    return True


def node_tls(*secrets: bytes, node_id: str = "n") -> NodeTLS:
    return NodeTLS.derived(secrets, "default", node_id, ed25519.Ed25519PrivateKey.generate())


def test_rotation_old_new_and_both_at_the_context_level():
    old, both, new = node_tls(OLD), node_tls(NEW, OLD), node_tls(NEW)
    for a, b in [(old, old), (old, both), (both, old), (both, both), (both, new), (new, both), (new, new)]:
        handshake(a.client, b.server)
    for a, b in [(old, new), (new, old)]:
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
            handshake(a.client, b.server)
    fp_old = fingerprint(derive_ca_key(OLD, "default").public_key())
    assert both.holds[1] == old.holds[0] == fp_old
    assert both.label(new.holds) == "current" and both.label(old.holds) == "previous"
    assert old.label(both.holds) == "other+current"


def test_handshake_bytes_stay_within_the_documented_constants():
    a, b = node_tls(NEW, node_id="a" * 16), node_tls(NEW, OLD, node_id="b" * 16)
    for client, server in [(a, a), (a, b), (b, a), (b, b)]:
        sent_client, sent_server = handshake(client.client, server.server)
        assert sent_client <= TLS_HANDSHAKE_CLIENT_BYTES, sent_client
        assert sent_server <= TLS_HANDSHAKE_SERVER_BYTES, sent_server
    assert tls_overhead(300) == 22 and tls_overhead(40_000) == 66


def test_a_running_node_renews_its_certificate_and_handshakes_go_on():
    tls = node_tls(NEW)
    assert not tls.renew_due(time.time())
    tls.issued -= 2 * 86400  # as if it had been running for two days
    first = tls.not_after = tls.not_after - 2 * 86400
    assert tls.renew_due(time.time())
    tls.renew(time.time())
    assert tls.not_after - first > 86400 and not tls.renew_due(time.time())
    handshake(tls.client, node_tls(NEW).server)  # the fresh certificate is the one in use


def test_expired_and_not_yet_valid_certificates_are_refused_at_the_handshake():
    server = node_tls(SECRET)
    ca = derive_ca_key(SECRET, "default")
    for label, now, backdate in [
        ("expired", NOW - datetime.timedelta(days=60), datetime.timedelta(hours=1)),
        ("not yet valid", NOW + datetime.timedelta(days=2), datetime.timedelta(0)),
    ]:
        key = ed25519.Ed25519PrivateKey.generate()
        cert = issue_node_certificate(ca, "default", "late", key.public_key(), now=now, backdate=backdate)
        bad = NodeTLS.derived([SECRET], "default", "late", key)
        load_chain([bad.client, bad.server], pem(cert), key_pem(key))
        with pytest.raises(ssl.SSLError, match="certificate"):  # the server refuses the client's
            handshake(bad.client, server.server)
        with pytest.raises(ssl.SSLError, match="certificate"):  # the client refuses the server's
            handshake(server.client, bad.server)
        assert label


# --- configuration -----------------------------------------------------------------------------


def test_tls_settings(tmp_path: Path):
    env = {"CACHEMESH_SECRET": SECRET.decode()}
    assert resolve({}, env).tls == "on"
    with pytest.raises(ConfigError, match="only allowed together with --insecure"):
        resolve({}, {**env, "CACHEMESH_TLS": "off"})
    assert resolve({"insecure": True}, {"CACHEMESH_TLS": "off"}).tls == "off"
    with pytest.raises(ConfigError, match="all three"):
        resolve({}, {**env, "CACHEMESH_TLS_CERT": "/c.pem"})
    two = tmp_path / "secrets"
    two.write_bytes(NEW + b"\n" + OLD + b"\n")
    config = resolve({}, {}, secret_file=str(two))
    assert config.secret == NEW and config.previous_secret == OLD
    assert config.signing_secrets == (NEW, OLD)
    three = tmp_path / "three"
    three.write_bytes(b"\n".join([NEW, OLD, SECRET]))
    with pytest.raises(ConfigError, match="3 lines"):
        resolve({}, {}, secret_file=str(three))


# --- nodes over loopback -----------------------------------------------------------------------


async def test_a_node_with_the_wrong_secret_cannot_complete_a_handshake(workdir):
    a = await start_node(workdir, "a")
    wrong = await start_node(workdir, "wrong", secret=b"another-secret-0123456789", seeds=(a.peer_addr,))
    try:
        # The intruder's client refuses a's certificate and says why...
        await async_wait_until(
            lambda: wrong.parts.tls_peers._failed.get(a.peer_addr), 10, what="handshake failure recorded"
        )
        assert "does not verify" in wrong.parts.tls_peers._failed[a.peer_addr][0]
        failures = wrong.metrics.registry.get_sample_value(
            "cachemesh_tls_handshake_failures_total", {"kind": "verify"}
        )
        assert failures is not None and failures >= 1  # what the TLS alert rule watches
        # ...and a refuses the intruder's certificate, even with requests signed correctly.
        intruder = client_ssl("attacker", b"another-secret-0123456789")
        body = wire.encode(wire.Envelope("attacker", "127.0.0.1:1", (wire.Ping(1, "x"),), 1))
        with pytest.raises(aiohttp.ClientError):
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"https://{a.peer_addr}/v1/gossip", data=body, ssl=intruder) as r,
            ):
                await r.read()
        assert wrong.node_id not in a.core.membership.members
        assert a.node_id not in wrong.core.membership.members
    finally:
        await wrong.stop()
        await a.stop()


def foreign_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """An unrelated CA, as an organisation's PKI might be (P-256, as most are)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example Corp Build CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def host_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, host: str
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A host certificate as an operator's PKI issues it: names a host, not a cachemesh node ID."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def operator_files(tmp: Path, ca_key, ca, host: str) -> dict[str, str]:
    key, cert = host_cert(ca_key, ca, host)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / f"{host}.pem").write_bytes(pem(cert))
    (tmp / f"{host}.key").write_bytes(key_pem(key))
    (tmp / "ca.pem").write_bytes(pem(ca))
    return {
        "tls_cert": str(tmp / f"{host}.pem"),
        "tls_key": str(tmp / f"{host}.key"),
        "tls_ca": str(tmp / "ca.pem"),
    }


async def test_a_certificate_from_another_ca_is_refused(workdir):
    a = await start_node(workdir, "a")
    ca_key, ca = foreign_ca()
    key, cert = host_cert(ca_key, ca, "intruder")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    load_chain([ctx], pem(cert), key_pem(key))
    body = wire.encode(wire.Envelope("attacker", "127.0.0.1:1", (wire.Ping(1, "x"),), 1))
    try:
        # As a client: a refuses the foreign certificate (the client here trusts anything).
        with pytest.raises(aiohttp.ClientError):
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"https://{a.peer_addr}/v1/gossip", data=body, ssl=ctx) as r,
            ):
                await r.read()
        # As a server: a's client refuses a peer whose certificate chains to another CA.
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        load_chain([server_ctx], pem(cert), key_pem(key))
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        envelope = wire.Envelope(a.node_id, a.advertise, (wire.Ping(1, "x"),), 1)
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await a.parts.client.exchange(f"127.0.0.1:{port}", envelope)
        assert "does not verify" in a.parts.tls_peers.refused()[f"127.0.0.1:{port}"]
        server.close()
        await server.wait_closed()
    finally:
        await a.stop()


async def test_plain_http_to_the_tls_port_is_closed_without_harm(workdir):
    ea, eb = FakeEngine(), FakeEngine()
    a = await start_node(workdir, "a", engine=ea)
    host, port = a.peer_addr.rsplit(":", 1)
    try:
        for _ in range(5):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /v1/gossip HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
            answer = await asyncio.wait_for(reader.read(), 5)  # closed, not left hanging
            assert not answer.startswith(b"HTTP/")  # nothing served in the clear
            writer.close()
        # The node is unharmed: a peer joins and an image moves.
        b = await start_node(workdir, "b", engine=eb, seeds=(a.peer_addr,))
        try:
            image = ea.build("after-plain:1", [b"layer"])
            await async_wait_until(lambda: has_image(b, image, "after-plain:1"), 10, what="transfer")
        finally:
            await b.stop()
    finally:
        await a.stop()


async def test_rotation_across_three_nodes_old_both_new(workdir):
    eo, eb, en = FakeEngine(), FakeEngine(), FakeEngine()
    both = await start_node(workdir, "both", engine=eb, secret=NEW, previous_secret=OLD)
    old = await start_node(workdir, "old", engine=eo, secret=OLD, seeds=(both.peer_addr,))
    new = await start_node(workdir, "new", engine=en, secret=NEW, seeds=(both.peer_addr,))
    try:
        await async_wait_until(
            lambda: {old.node_id, new.node_id} <= set(both.core.membership.live_ids()),
            10,
            what="both sees all",
        )
        # An image built on the old-secret node reaches the new-secret node (through "both").
        image = eo.build("rotated:1", [b"layer"])
        await async_wait_until(lambda: has_image(new, image, "rotated:1"), 20, what="old -> new")

        def tls_of(node, peer):
            return node.parts.tls_peers.state(peer.node_id, peer.advertise)

        await async_wait_until(
            lambda: tls_of(both, old).get("secret") and tls_of(both, new).get("secret"), 10, what="seen"
        )
        assert tls_of(both, old)["secret"] == "previous" and tls_of(both, new)["secret"] == "current"
        assert tls_of(both, old)["version"] == "TLSv1.3"
        await async_wait_until(lambda: tls_of(old, both).get("secret"), 10, what="old sees both")
        assert tls_of(old, both)["secret"] == "other+current"
        # Old and new cannot talk directly: a handshake between them fails.
        envelope = wire.Envelope(old.node_id, old.advertise, (wire.Ping(1, "x"),), 1)
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await old.parts.client.exchange(new.advertise, envelope)
        assert "does not verify" in old.parts.tls_peers.refused()[new.advertise]
        async with aiohttp.ClientSession() as http, http.get(f"http://{both.status_addr}/api/status") as r:
            status = await r.json()
        secrets = {p["name"]: p["tls"].get("secret") for p in status["peers"]}
        assert secrets == {"old": "previous", "new": "current"}
        assert status["node"]["tls"]["mode"] == "derived" and len(status["node"]["tls"]["secrets"]) == 2
        async with aiohttp.ClientSession() as http, http.get(f"http://{both.status_addr}/") as r:
            html = await r.text()
        assert "TLSv1.3</span> · secret: previous" in html and "secret: current" in html
        assert "rotation: current + previous" in html
    finally:
        for node in (new, old, both):
            await node.stop()


async def test_operator_pki_end_to_end(workdir):
    ca_key, ca = foreign_ca()
    pki = workdir / "pki"
    ea, eb = FakeEngine(), FakeEngine()
    a = await start_node(workdir, "a", engine=ea, **operator_files(pki, ca_key, ca, "host-a"))
    b = await start_node(
        workdir, "b", engine=eb, seeds=(a.peer_addr,), **operator_files(pki, ca_key, ca, "host-b")
    )
    derived = await start_node(workdir, "derived", seeds=(a.peer_addr,))
    try:
        assert a.parts.tls is not None and a.parts.tls.mode == "operator"
        image = ea.build("org:1", [b"layer"])
        await async_wait_until(lambda: has_image(b, image, "org:1"), 10, what="transfer over operator PKI")
        async with aiohttp.ClientSession() as http, http.get(f"http://{b.status_addr}/api/status") as r:
            status = await r.json()
        peer = next(p for p in status["peers"] if p["name"] == "a")
        assert peer["tls"]["state"] == "verified" and peer["tls"]["secret"] == "operator CA"
        assert peer["tls"]["identity"] == "certificate without node ID"
        assert status["node"]["tls"]["mode"] == "operator"
        # A node with the cluster secret but the derived CA is not admitted by the operator's CA.
        await async_wait_until(
            lambda: derived.parts.tls_peers._failed.get(a.peer_addr), 10, what="derived node refused"
        )
        assert derived.node_id not in a.core.membership.members
    finally:
        for node in (derived, b, a):
            await node.stop()


async def test_a_tls_node_and_a_plain_node_refuse_each_other_and_say_why(workdir):
    plain = await start_node(workdir, "plain", tls="off", insecure=True)
    tls = await start_node(workdir, "tls", seeds=(plain.peer_addr,))
    try:
        await async_wait_until(lambda: tls.parts.tls_peers._failed.get(plain.peer_addr), 10, what="refusal")
        assert "plain HTTP" in tls.parts.tls_peers._failed[plain.peer_addr][0]
        assert "upgrade it" in tls.parts.tls_peers._failed[plain.peer_addr][0]
        assert plain.node_id not in tls.core.membership.members
        assert tls.node_id not in plain.core.membership.members
        assert plain.parts.tls_peers.state("x", "y") == {"state": "off"}
        async with aiohttp.ClientSession() as http, http.get(f"http://{tls.status_addr}/api/status") as r:
            refused = (await r.json())["node"]["tls"]["refused"]
        assert "plain HTTP" in refused[plain.peer_addr]
    finally:
        await tls.stop()
        await plain.stop()


async def test_a_tls_node_shrinks_asyncios_per_connection_read_buffer(workdir, monkeypatch):
    import asyncio.sslproto

    from mesh.net.tls_contexts import TLS_READ_BUFFER

    # The limit is a class attribute, for the whole process: any TLS node an earlier test started
    # has set it already. Put back the standard library's size first (and whatever was there after
    # the test), so that only the node started here can make this pass.
    monkeypatch.setattr(asyncio.sslproto.SSLProtocol, "max_size", STDLIB_TLS_READ_BUFFER)
    a = await start_node(workdir, "a")
    try:
        assert asyncio.sslproto.SSLProtocol.max_size == TLS_READ_BUFFER < STDLIB_TLS_READ_BUFFER
    finally:
        await a.stop()


async def test_the_certificate_names_who_speaks(workdir):
    """A request signed as one node over another node's certificate is refused, and so is an
    envelope whose sender is not the signer."""
    from mesh.net.auth import Signer, derive_key

    a = await start_node(workdir, "a")
    signer = Signer(derive_key(SECRET, "default"), "default", "attacker")

    async def post(ctx: ssl.SSLContext, sender: str) -> tuple[int, bytes]:
        body = wire.encode(wire.Envelope(sender, "127.0.0.1:1", (wire.Ping(1, "x"),), 1))
        headers = signer.sign_request("POST", "/v1/gossip", body, time.time())
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"https://{a.peer_addr}/v1/gossip", data=body, headers=headers, ssl=ctx) as r,
        ):
            return r.status, await r.read()

    try:
        status, body = await post(client_ssl("mallory"), "attacker")
        assert status == 403 and b"certificate is for node 'mallory'" in body
        status, body = await post(client_ssl("attacker"), "someone-else")
        assert status == 403 and b"not the signed sender" in body
        status, _ = await post(client_ssl("attacker"), "attacker")
        assert status in (200, 204)
    finally:
        await a.stop()


def test_the_client_checks_the_servers_node_id_against_the_member_it_dialled():
    from mesh.net.pki import PeerCert
    from mesh.net.tls_peers import ConnectionTLS, PeerIdentityError, TLSClient, TLSObserver

    tls = node_tls(SECRET)
    observer = TLSObserver(tls, on_failure=lambda kind: None)
    members = {"10.0.0.2:7611": {"b"}}
    client = TLSClient(tls.client, observer, lambda addr: members.get(addr, set()))

    def conn(node_id: str | None) -> ConnectionTLS:
        return ConnectionTLS("TLSv1.3", "TLS_AES_256_GCM_SHA384", PeerCert(node_id, tls.holds, "", "", 0.0))

    client.check("10.0.0.2:7611", conn("b"))
    assert observer.state("b", "10.0.0.2:7611")["secret"] == "current"
    with pytest.raises(PeerIdentityError, match="certificate is for node 'c'"):
        client.check("10.0.0.2:7611", conn("c"))
    client.check("10.0.0.9:7611", conn("c"))  # a seed: anyone with a valid certificate may answer
    with pytest.raises(PeerIdentityError, match="not TLS"):
        client.check("10.0.0.2:7611", None)


@pytest.mark.parametrize(
    ("url", "addr"),
    [
        ("https://10.0.0.2:7611/v1/gossip", "10.0.0.2:7611"),
        ("https://[fd00::2]:7611/v1/gossip", "[fd00::2]:7611"),
    ],
)
def test_the_client_names_the_peer_it_dialled_as_members_are_named(url, addr):
    """An IPv6 peer's members are at "[v6]:port": the certificate check must look them up so."""
    from yarl import URL

    from mesh.net.tls_peers import peer_addr

    assert peer_addr(URL(url)) == addr

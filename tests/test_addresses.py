import pytest

from mesh.discovery import addresses
from mesh.discovery.addresses import derive_advertise


def test_a_specific_listen_host_is_advertised_as_is():
    assert derive_advertise("10.1.2.3:7611", ()) == "10.1.2.3:7611"


def test_the_route_towards_the_first_seed_wins(monkeypatch):
    monkeypatch.setattr(
        addresses, "_source_address_towards", lambda host: "10.0.0.7" if host == "127.0.0.1" else None
    )
    monkeypatch.setattr(addresses, "interface_addresses", lambda: ["127.0.0.1", "192.168.9.9"])
    assert derive_advertise("0.0.0.0:7611", ("localhost:7611",)) == "10.0.0.7:7611"


def test_falls_back_to_an_interface_address_and_never_loopback(monkeypatch):
    monkeypatch.setattr(addresses, "_source_address_towards", lambda host: None)
    monkeypatch.setattr(addresses, "interface_addresses", lambda: ["127.0.0.1", "172.16.0.4"])
    assert derive_advertise("0.0.0.0:9000", ()) == "172.16.0.4:9000"
    monkeypatch.setattr(addresses, "interface_addresses", lambda: ["127.0.0.1"])
    monkeypatch.setattr(addresses.socket, "gethostbyname", lambda name: "127.0.1.1")
    with pytest.raises(ValueError, match="--advertise"):
        derive_advertise("0.0.0.0:9000", ())


def test_interface_addresses_include_loopback_on_linux():
    assert "127.0.0.1" in addresses.interface_addresses()

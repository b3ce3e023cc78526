"""The tiers are enforced, not just named: a test without the `docker` mark cannot start a real
engine, nor one without `netns` make namespaces (tests/conftest.py). These run in the fast tier
and start nothing: the guard refuses before anything is made."""

from __future__ import annotations

import pytest

from mesh.lab.dockerd import Dockerd
from mesh.lab.netns import Network
from tests.conftest import TIER_GUARDS, tier_refusal


def test_an_unmarked_test_cannot_start_an_engine(tmp_path) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"is not marked docker: add pytest\.mark\.docker"):
        Dockerd(tmp_path / "engine").start()
    assert not (tmp_path / "engine").exists()  # refused before it made anything


def test_an_unmarked_test_cannot_make_namespaces() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"is not marked netns: add pytest\.mark\.netns"):
        Network()


def test_every_guarded_tier_is_a_declared_marker(pytestconfig: pytest.Config) -> None:
    declared = {line.split(":")[0].strip() for line in pytestconfig.getini("markers")}
    assert set(TIER_GUARDS) <= declared
    assert "tests/x.py::t" in tier_refusal("tests/x.py::t", "docker", "starts a real dockerd")

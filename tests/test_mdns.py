"""Real multicast DNS between network namespaces: nodes with no seeds find each other."""

from __future__ import annotations

import pytest

from mesh.lab.nodes import NodeProcess
from mesh.lab.poll import wait_until

pytestmark = [pytest.mark.netns, pytest.mark.mdns, pytest.mark.slow]


def alive_names(node: NodeProcess) -> set[str]:
    return {p["name"] for p in node.api()["peers"] if p["state"] == "alive"}


def test_nodes_without_seeds_find_each_other_by_mdns_and_ignore_other_clusters(network, workdir):
    nodes = []
    try:
        for name, cluster in (("m1", "blue"), ("m2", "blue"), ("m3", "blue"), ("other", "green")):
            host = network.add_host(name)
            env = {
                "CACHEMESH_MDNS": "true",
                "CACHEMESH_CLUSTER": cluster,
                "CACHEMESH_PRESET": "lan",
            }
            status = f"{host.address}:7612"
            lab = f"{host.address}:7613"  # the namespace is this test's own: a fixed port is free there
            nodes.append(NodeProcess(name, workdir, env=env, prefix=host.nsenter(), status=status, lab=lab))
        for node in nodes:
            node.wait_up()
        m1, m2, m3, other = nodes
        wait_until(
            lambda: (
                alive_names(m1) == {"m2", "m3"}
                and alive_names(m2) == {"m1", "m3"}
                and alive_names(m3) == {"m1", "m2"}
            ),
            30,
            0.25,
            what="the blue nodes find each other by mDNS",
        )
        assert alive_names(other) == set()  # another cluster's node is seen on the link but never joined
        assert len(m1.api()["discovery"]["mdns_found"]) == 2

        m2.build("found:1")
        wait_until(
            lambda: any("found:1" in i["tags"] and i["local"] for i in m3.api()["images"]),
            15,
            what="an image shared across nodes found by mDNS",
        )

        m3.stop()
        wait_until(
            lambda: {p["name"]: p["state"] for p in m1.api()["peers"]}.get("m3") == "left",
            10,
            what="m1 sees m3 leave",
        )
    finally:
        for node in nodes:
            node.stop()

"""The container as an operator runs it: built from the Dockerfile on a Python base made here,
run with the Docker socket mounted and the host network, configured by env vars alone."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from mesh.lab.dockerd import Dockerd, import_base
from mesh.lab.nodes import SECRET, NodeProcess, free_ports
from mesh.lab.poll import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.netns, pytest.mark.container, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("CACHEMESH_TEST_CACHE", "/var/cache/cachemesh-test"))
BASE_TAG = "cachemesh-test-python:bookworm"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"


def python_base_tar() -> Path:
    """Debian 12 minbase with python3, pip and venv, carrying this machine's CA bundle so pip can
    reach the package index from inside a build (docs/testing.md). Made once, then cached."""
    target = CACHE / "python-bookworm.tar"
    if target.exists():
        return target
    if not shutil.which("debootstrap"):
        pytest.skip("debootstrap not installed (scripts/test installs it)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run on this machine may be making it right now
        if not target.exists():
            _make_base(target)
    return target


def _make_base(target: Path) -> None:
    root = target.parent / f"rootfs-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-pip,python3-venv,ca-certificates",
            "bookworm",
            str(root),
            "http://deb.debian.org/debian",
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    shutil.copy(HOST_CA, root / "etc/ssl/certs/ca-certificates.crt")
    partial = target.with_suffix(".partial")
    with tarfile.open(partial, "w") as tar:
        tar.add(root, arcname=".")
    partial.rename(target)
    shutil.rmtree(root, ignore_errors=True)


def build_image(builder: Dockerd) -> None:
    with open(python_base_tar(), "rb") as fh:
        builder.cli(
            "import",
            "--change",
            f"ENV PIP_CERT={HOST_CA}",
            "--change",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "-",
            BASE_TAG,
            input=fh.read(),
            timeout=600,
        )
    builder.cli(
        "build",
        "--network",
        "host",
        "--build-arg",
        f"BASE_IMAGE={BASE_TAG}",
        "-t",
        "cachemesh:test",
        str(REPO),
        timeout=900,
        env={"DOCKER_BUILDKIT": "0"},
    )


def test_container_joins_a_mesh_and_shares_cache(network, engines, workdir):
    builder = engines("builder")  # root namespace: the container's host network is this machine's
    build_image(builder)
    b_host = network.add_host("b")
    b_engine = engines("b", netns=b_host.netns)
    # The container shares this machine's network: its ports must be free here, not the defaults
    # (other nodes may run on this machine). b is alone in its namespace, so its ports are its own.
    peer_port, status_port = free_ports(2, "0.0.0.0")
    b = NodeProcess(
        "b",
        workdir,
        prefix=b_host.nsenter(),
        status=f"{b_host.address}:7612",
        env={
            "CACHEMESH_DOCKER_HOST": b_engine.host,
            "CACHEMESH_PRESET": "lan",
            "CACHEMESH_SEEDS": f"{network.subnet}.1:{peer_port}",
        },
    ).wait_up()
    run = [
        "run",
        "-d",
        "--name",
        "cachemesh",
        "--network",
        "host",
        "-v",
        f"{builder.sock}:/var/run/docker.sock",
        "-v",
        "cachemesh-data:/var/lib/cachemesh",
        "-e",
        f"CACHEMESH_SECRET={SECRET}",
        "-e",
        f"CACHEMESH_SEEDS={b_host.address}:7611",
        "-e",
        f"CACHEMESH_LISTEN=0.0.0.0:{peer_port}",
        "-e",
        f"CACHEMESH_STATUS_LISTEN=127.0.0.1:{status_port}",
        "-e",
        "CACHEMESH_NODE_NAME=container",
        "-e",
        "CACHEMESH_EXCLUDE=cachemesh*",
        "-e",
        "CACHEMESH_MDNS=false",
        "cachemesh:test",
    ]
    try:
        builder.cli(*run)
        wait_until(
            lambda: "container" in [p["name"] for p in b.api()["peers"] if p["state"] == "alive"],
            30,
            what="b sees the container",
        )

        import_base(builder, "base:1")
        builder.cli(
            "build",
            "--network",
            "none",
            "-t",
            "from-container-host:1",
            "-",
            input=b"FROM base:1\nRUN echo built on the container host > /x\n",
        )
        image = builder.image_id("from-container-host:1")
        wait_until(lambda: b_engine.image_id("from-container-host:1") == image, 15, what="image reaches b")

        b_engine.cli(
            "build", "--network", "none", "-t", "from-b:1", "-", input=b"FROM base:1\nRUN echo on b > /y\n"
        )
        image_b = b_engine.image_id("from-b:1")
        wait_until(
            lambda: builder.image_id("from-b:1") == image_b, 15, what="image reaches the container's host"
        )
        assert b_engine.image_id("cachemesh:test") is None  # excluded by CACHEMESH_EXCLUDE

        wait_until(
            lambda: (
                builder.cli("inspect", "--format", "{{.State.Health.Status}}", "cachemesh").stdout.strip()
                == "healthy"
            ),
            60,
            1.0,
            what="HEALTHCHECK healthy",
        )
        status = builder.cli("exec", "cachemesh", "cachemesh", "status", "--json").stdout
        assert '"ready": true' in status

        builder.cli("stop", "-t", "20", "cachemesh")
        wait_until(
            lambda: [p["state"] for p in b.api()["peers"] if p["name"] == "container"] == ["left"],
            10,
            what="b sees the container leave",
        )
        assert "stopped" in builder.cli("logs", "cachemesh").stderr
    finally:
        builder.cli("rm", "-f", "cachemesh", check=False)
        b.stop()

    refused = builder.cli("run", "--rm", "--network", "host", "cachemesh:test", check=False)
    assert refused.returncode == 2
    assert "refusing to start without a cluster secret" in refused.stderr

"""skopeo (Debian's package, containers/image) copies an image to one node and back from another.

skopeo uploads each blob as POST, one chunked PATCH and a final PUT ?digest=, and reads back with
HEAD and GET: another registry client than Docker's, against the same endpoint.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from mesh.lab.poll import async_wait_until
from tests.inproc import start_node

pytestmark = pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo not installed (scripts/test)")


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def oci_layout(path: Path, tag: str, payload: bytes) -> str:
    """A one-layer OCI image layout; returns its manifest digest."""
    (path / "blobs" / "sha256").mkdir(parents=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("data.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    layer = gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **_blob(path, config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_blob(path, layer)}],
        }
    ).encode()
    descriptor = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **_blob(path, manifest)}
    descriptor["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))
    return str(descriptor["digest"])


async def skopeo(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "skopeo",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "HOME": os.environ.get("HOME", "/root")},
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, f"skopeo {' '.join(args)}: {out.decode(errors='replace')[-2000:]}"
    return out.decode(errors="replace")


async def test_skopeo_copy_to_a_and_back_from_b(workdir: Path) -> None:
    a = await start_node(workdir, "a")
    b = await start_node(workdir, "b", seeds=(a.advertise,))
    try:
        source = workdir / "source"
        digest = oci_layout(source, "v1", os.urandom(3 * 1024 * 1024))
        await skopeo(
            "copy", "--dest-tls-verify=false", f"oci:{source}:v1", f"docker://{a.registry_addr}/skopeo/img:v1"
        )
        patches = a.metrics.registry_requests.labels("PATCH", "ok")._value.get()
        assert patches >= 2  # config and layer went up as chunked PATCH uploads
        raw = await skopeo(
            "inspect", "--raw", "--tls-verify=false", f"docker://{a.registry_addr}/skopeo/img:v1"
        )
        assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == digest

        async def b_has_tag() -> bool:
            return b.registry.tag("skopeo/img", "v1") is not None

        await async_wait_until(b_has_tag, 5, what="b learns skopeo/img:v1")
        back = workdir / "back"
        await skopeo(
            "copy", "--src-tls-verify=false", f"docker://{b.registry_addr}/skopeo/img:v1", f"oci:{back}:v1"
        )
        index = json.loads((back / "index.json").read_text())
        assert index["manifests"][0]["digest"] == digest
        layers = sorted(p.name for p in (source / "blobs" / "sha256").iterdir())
        assert sorted(p.name for p in (back / "blobs" / "sha256").iterdir()) == layers
        # b now holds the image completely and answers for it from its own store.
        assert all(b.registry.store.has(f"sha256:{name}") for name in layers)
    finally:
        await b.stop()
        await a.stop()

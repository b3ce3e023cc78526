"""oras (Debian 13's package, oras-go; unpacked by scripts/tools.sh) pushes an artifact to one node,
attaches a signature to it there, and finds the signature from another node.

The mesh leaves the referrers API out (docs/registry.md, Conformance): a push with a `subject`
gets no `OCI-Subject` header, so oras keeps the spec's fallback tag `sha256-<subject hex>` (an
index of the referrers), which the mesh gossips like any tag. `oras discover` gets 404 from the
referrers API and reads that tag instead, on any node.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from mesh.lab.poll import async_wait_until
from tests.inproc import start_node

TOOLS = Path(os.environ.get("CACHEMESH_TOOLS", "/var/cache/cachemesh/tools"))
ORAS = shutil.which("oras") or str(TOOLS / "trixie" / "root" / "usr" / "bin" / "oras")

pytestmark = pytest.mark.skipif(not os.access(ORAS, os.X_OK), reason="oras not unpacked (scripts/tools.sh)")


async def oras(workdir: Path, *args: str) -> dict[str, object]:
    """Runs oras in `workdir` (its file arguments are relative to it) and returns its JSON output."""
    proc = await asyncio.create_subprocess_exec(
        ORAS,
        *args,
        "--plain-http",
        "--format",
        "json",
        cwd=workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(workdir)},  # no credentials or config from the machine
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"oras {' '.join(args)}: {err.decode(errors='replace')[-2000:]}"
    result: dict[str, object] = json.loads(out)
    return result


async def test_oras_attach_on_a_is_discovered_on_b(workdir: Path) -> None:
    a = await start_node(workdir, "a")
    b = await start_node(workdir, "b", seeds=(a.advertise,))
    try:
        (workdir / "app.txt").write_text("the artifact\n")
        (workdir / "sig.txt").write_text("a signature\n")
        pushed = await oras(workdir, "push", f"{a.registry_addr}/oras/app:v1", "app.txt:text/plain")
        subject = str(pushed["digest"])
        attached = await oras(
            workdir,
            "attach",
            "--artifact-type",
            "application/vnd.example.signature",
            f"{a.registry_addr}/oras/app:v1",
            "sig.txt:text/plain",
        )
        signature = str(attached["digest"])
        fallback = "sha256-" + subject.removeprefix("sha256:")
        # oras kept the fallback tag because the push was not acknowledged with OCI-Subject.
        assert a.registry.tag("oras/app", fallback) is not None

        async def b_knows_both() -> bool:
            return all(b.registry.tag("oras/app", t) is not None for t in ("v1", fallback))

        await async_wait_until(b_knows_both, 5, what="b learns oras/app:v1 and its referrers tag")
        found = await oras(workdir, "discover", f"{b.registry_addr}/oras/app:v1")
        referrers = found["manifests"]
        assert isinstance(referrers, list)
        assert [(r["digest"], r["artifactType"]) for r in referrers] == [
            (signature, "application/vnd.example.signature")
        ]
        # The signature itself comes through b, fetched from a.
        out = workdir / "pulled"
        await oras(workdir, "pull", "-o", str(out), f"{b.registry_addr}/oras/app@{signature}")
        assert (out / "sig.txt").read_text() == "a signature\n"
    finally:
        await b.stop()
        await a.stop()

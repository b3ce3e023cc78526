"""Trust classes between real hosts: network namespaces, a private dockerd each, nodes started as
an operator would (`python -m mesh run` with CACHEMESH_* variables and key files).

T1 and T2 are trusted (the private key, the push token), U is untrusted (the public key only),
`*:main` and `cache/*:main` are protected everywhere. UR is an untrusted host with no engine (a
registry-only node), and F is a holder of the cluster secret that made itself a key of its own
and runs a node that signs with it: a forger.

- Engine tags: T1 builds app:main; it reaches T2 and U. A fork's job on U builds a newer
  app:main and an app:pr-7: T2 keeps T1's, U's own app:main goes back to T1's, app:pr-7 reaches
  no trusted host.
- Registry tags: T1 pushes cache/app:main with the push token (`docker login`); U's push to it
  is DENIED; U's cache/app:pr-7 reaches UR but no trusted host; F pushes a newer
  cache/app:main, signed with its own key: every host refuses it, counts it, and T2 (and U) still
  resolve T1's. On the containerd store, T2's BuildKit builds from `--cache-from
  type=registry` after all that, and runs no RUN step.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mesh.lab.dockerd import Dockerd, busybox_rootfs
from mesh.lab.engines import KINDS, EngineKind
from mesh.lab.netns import Host, Network
from mesh.lab.nodes import NodeProcess
from mesh.lab.poll import wait_until
from mesh.net.trust_keys import write_pair
from mesh.ui.status_doc import ClaimDoc
from tests.test_registry_buildkit import ran_steps
from tests.test_registry_docker import REGISTRY, registry_tags

pytestmark = [pytest.mark.docker, pytest.mark.netns, pytest.mark.slow]

PROTECT = "*:main,cache/*:main"
TOKEN = "push-token-for-trusted-jobs-0123456789"
BASE = f"{REGISTRY}/base/busybox:1"
CACHE = f"{REGISTRY}/cache/app:main"

APP = """FROM base:1
RUN echo "{who}" > /who && dd if=/dev/urandom of=/payload bs=1k count=64 2>/dev/null
"""
CACHED_BUILD = f"""FROM {BASE}
RUN echo "ran: deps" && dd if=/dev/urandom of=/deps bs=1k count=128 2>/dev/null
RUN echo "ran: app" && echo built > /app
"""


@dataclass
class Site:
    host: Host
    node: NodeProcess
    engine: Dockerd | None = None


@dataclass
class Keys:
    key: Path
    pub: Path
    rogue_key: Path
    token: Path


def _keys(workdir: Path) -> Keys:
    keys = workdir / "keys"
    keys.mkdir()
    write_pair(keys / "trust.key", keys / "trust.pub")
    write_pair(keys / "rogue.key", keys / "rogue.pub")
    (keys / "token").write_text(TOKEN + "\n")
    return Keys(keys / "trust.key", keys / "trust.pub", keys / "rogue.key", keys / "token")


def _site(
    network: Network, engines, workdir: Path, name: str, kind: EngineKind | None, seeds: str, **env: str
) -> Site:  # type: ignore[no-untyped-def]
    host = network.add_host(name)
    engine = engines(name, netns=host.netns, kind=kind) if kind is not None else None
    full = {
        "CACHEMESH_STATUS_LISTEN": f"{host.address}:7612",
        "CACHEMESH_REGISTRY_LISTEN": REGISTRY,
        "CACHEMESH_PRESET": "lan",
        "CACHEMESH_SHARE": "all",
        "CACHEMESH_PROTECT": PROTECT,
        **({"CACHEMESH_DOCKER_HOST": engine.host} if engine else {"CACHEMESH_ENGINE": "off"}),
        **({"CACHEMESH_SEEDS": seeds} if seeds else {}),
        **env,
    }
    node = NodeProcess(
        name, workdir, env=full, prefix=host.nsenter(), status=f"{host.address}:7612"
    ).wait_up()
    return Site(host, node, engine)


def refused(site: Site, reason: str) -> float:
    code, text = site.node.get("/metrics")
    assert code == 200
    body = text.decode() if isinstance(text, bytes) else str(text)
    for line in body.splitlines():
        if line.startswith(f'cachemesh_trust_claims_refused_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no refused-claims counter for {reason}")


def engine_tag_key(site: Site, tag: str) -> str | None:
    """The mesh key of the image `tag` names in this host's engine (the same on every host and
    store, where engine IDs may differ)."""
    assert site.engine is not None
    engine_id = site.engine.image_id(tag)
    if engine_id is None:
        return None
    return next((str(i["id"]) for i in site.node.api()["images"] if i["engine_id"] == engine_id), None)


def build(engine: Dockerd, workdir: Path, tag: str, dockerfile: str) -> None:
    context = workdir / f"ctx-{tag.replace(':', '-').replace('/', '-')}"
    context.mkdir()
    (context / "Dockerfile").write_text(dockerfile)
    engine.cli("build", "--network", "none", "-t", tag, str(context))


def push_manifest(site: Site, ref: str, payload: bytes) -> str:
    """Push a one-blob manifest to `site`'s registry from inside its host (the endpoint listens on
    the host's loopback), as a forger's client would; the manifest's digest."""
    name, _, tag = ref.rpartition(":")
    blob_digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": blob_digest,
                "size": len(payload),
            },
            "layers": [],
        }
    ).encode()
    script = (
        "import sys, urllib.request as u\n"
        f"base = 'http://{REGISTRY}/v2/{name}'\n"
        f"payload = {payload!r}\n"
        f"up = base + '/blobs/uploads/?digest={blob_digest}'\n"
        "r = u.urlopen(u.Request(up, data=payload, method='POST'))\n"
        f"r = u.urlopen(u.Request(base + '/manifests/{tag}', data={manifest!r}, method='PUT',"
        " headers={'Content-Type': 'application/vnd.oci.image.manifest.v1+json'}))\n"
        "print(r.headers['Docker-Content-Digest'])\n"
    )
    out = subprocess.run(
        [*site.host.nsenter(), sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


@pytest.mark.parametrize("kind", ["28.5-containerd", "20.10"])
def test_untrusted_hosts_cannot_move_trusted_tags(network, engines, workdir, kind) -> None:  # type: ignore[no-untyped-def]
    engine_kind = KINDS[kind]
    keys = _keys(workdir)
    trusted = {
        "CACHEMESH_TRUST_KEY": str(keys.key),
        "CACHEMESH_TRUST_PUB": str(keys.pub),
        "CACHEMESH_REGISTRY_PUSH_TOKEN_FILE": str(keys.token),
    }
    untrusted = {"CACHEMESH_TRUST_PUB": str(keys.pub)}
    sites: list[Site] = []
    try:
        t1 = _site(network, engines, workdir, "t1", engine_kind, "", **trusted)
        sites.append(t1)
        seeds = f"{t1.host.address}:7611"
        t2 = _site(network, engines, workdir, "t2", engine_kind, seeds, **trusted)
        u = _site(network, engines, workdir, "u", engine_kind, seeds, **untrusted)
        ur = _site(network, engines, workdir, "ur", None, seeds, **untrusted)
        forger = _site(
            network, engines, workdir, "f", None, seeds, CACHEMESH_TRUST_KEY=str(keys.rogue_key), **untrusted
        )
        sites += [t2, u, ur, forger]
        everyone = [t1, t2, u, ur, forger]
        wait_until(
            lambda: all(
                len([p for p in s.node.api()["peers"] if p["state"] == "alive"]) == 4 for s in everyone
            ),
            30,
            what="every node sees every other",
        )
        assert t1.engine and t2.engine and u.engine

        # --- engine tags -------------------------------------------------------------------------
        t1.engine.cli("import", "-", "base:1", input=busybox_rootfs())
        build(t1.engine, workdir, "app:main", APP.format(who="main"))
        main = wait_until(lambda: engine_tag_key(t1, "app:main"), 20, what="t1's app:main known")
        for site in (t2, u):
            wait_until(
                lambda s=site: engine_tag_key(s, "app:main") == main,
                120,
                what=f"app:main on {site.node.name}",
            )
        # The base travels as an image of its own, which may land after app:main: U builds on it.
        wait_until(lambda: u.engine.image_id("base:1") is not None, 120, what="base:1 on u")  # type: ignore[union-attr]
        # A fork's pull request on U: a newer app:main, and its own branch's tag.
        build(u.engine, workdir, "app:main-poison", APP.format(who="poison"))
        u.engine.cli("tag", "app:main-poison", "app:main")
        build(u.engine, workdir, "app:pr-7", APP.format(who="pr-7"))
        poison_id = u.engine.image_id("app:main-poison")
        # U's own app:main goes back to main's: a protected name counts only from a signed claim.
        wait_until(lambda: u.engine.image_id("app:main") != poison_id, 60, what="u's app:main back to main's")
        assert engine_tag_key(u, "app:main") == main
        wait_until(
            lambda: refused(t2, "protected") >= 1 and refused(t2, "unsigned") >= 1, 30, what="t2 refuses u's"
        )
        for site in (t1, t2):
            assert engine_tag_key(site, "app:main") == main, site.node.name
            assert "app:pr-7" not in site.engine.tags() and "app:main-poison" not in site.engine.tags()  # type: ignore[union-attr]

        def claims() -> dict[tuple[str, str], ClaimDoc]:
            return {(c["name"], c["publisher"]): c for c in t2.node.api()["trust"]["claims"]}

        wait_until(lambda: ("app:pr-7", "u") in claims(), 30, what="t2 hears u's app:pr-7")
        rows = claims()
        assert rows[("app:main", "t1")]["trust_class"] == "trusted" and rows[("app:main", "t1")]["believed"]
        assert rows[("app:main", "u")]["reason"] == "protected" and not rows[("app:main", "u")]["believed"]
        assert rows[("app:pr-7", "u")]["reason"] == "unsigned"

        # --- registry tags -----------------------------------------------------------------------
        t1.engine.cli("import", "-", BASE, input=busybox_rootfs())
        denied = t1.engine.cli("push", BASE, check=False)  # no login yet: the token is needed
        said = (denied.stdout + denied.stderr).lower()
        # 20.10 prints the spec's code ("unauthorized: ..."), 28.5 only the message: both say what to do.
        assert denied.returncode != 0 and "needs its push token" in said, said[-1500:]
        t1.engine.cli("login", REGISTRY, "-u", "ci", "--password-stdin", input=TOKEN.encode())
        t1.engine.cli("push", BASE)
        t1.engine.cli("tag", BASE, CACHE)
        pushed = t1.engine.cli("push", CACHE).stdout
        main_cache = next(w for w in pushed.split() if w.startswith("sha256:"))
        for site in (t2, u, ur):
            wait_until(
                lambda s=site: (
                    (registry_tags(s.node).get("cache/app:main") or {}).get("digest") == main_cache
                ),
                20,
                what=f"main's cache on {site.node.name}",
            )
        # U's job pushes to the protected cache: DENIED, with why.
        u.engine.cli("pull", BASE)
        build(u.engine, workdir, f"{REGISTRY}/cache/app:pr-7", f"FROM {BASE}\nRUN echo pr > /pr\n")
        u.engine.cli("tag", f"{REGISTRY}/cache/app:pr-7", CACHE)
        refused_push = u.engine.cli("push", CACHE, check=False)
        said = (refused_push.stdout + refused_push.stderr).lower()
        # 20.10 prints the spec's code ("denied: ..."), 28.5 only the message.
        assert refused_push.returncode != 0 and "is a protected name" in said, said[-1500:]
        u.engine.cli("push", f"{REGISTRY}/cache/app:pr-7")  # its own branch's cache: taken
        wait_until(lambda: registry_tags(ur.node).get("cache/app:pr-7"), 20, what="the branch's cache on ur")

        # The forger pushes a newer cache/app:main into its own node, which signs it with its key.
        before = {s.node.name: refused(s, "bad-signature") for s in (t1, t2, u, ur)}
        forged = push_manifest(forger, "cache/app:main", os.urandom(512))
        assert forged != main_cache
        wait_until(
            lambda: all(refused(s, "bad-signature") > before[s.node.name] for s in (t1, t2, u, ur)),
            30,
            what="every host refuses the forged claims",
        )
        for site in (t1, t2, u, ur):
            tags = registry_tags(site.node)
            assert tags["cache/app:main"]["digest"] == main_cache, site.node.name
            if site in (t1, t2):
                assert "cache/app:pr-7" not in tags, site.node.name
        code, _ = _head(t2, "cache/app", "pr-7")
        assert code == 404  # a trusted host never names the fork's cache...
        assert _head(t2, "cache/app", "main")[1] == main_cache  # ...and names main's

        if engine_kind.buildx and "containerd" in kind:
            # BuildKit's registry cache: T1 exports it with the token; T2 builds from it after U's
            # refused push and F's forged one, and runs no RUN step.
            t2.engine.cli("pull", BASE)
            context = workdir / "ctx-cached"
            context.mkdir()
            (context / "Dockerfile").write_text(CACHED_BUILD)
            buildkit_cache = f"{REGISTRY}/cache/app:main-bk"
            first = _buildx(t1, context, "--cache-to", f"type=registry,ref={buildkit_cache},mode=max")
            assert len(ran_steps(first)) == 2, first[-3000:]
            wait_until(lambda: registry_tags(t2.node).get("cache/app:main-bk"), 20, what="t2 knows the cache")
            forged_bk = push_manifest(forger, "cache/app:main-bk", os.urandom(256))
            wait_until(
                lambda: any(
                    c["name"] == "cache/app:main-bk"
                    and c["target"] == forged_bk
                    and c["reason"] == "bad-signature"
                    for c in t2.node.api()["trust"]["claims"]
                ),
                30,
                what="t2 refuses the forged BuildKit cache",
            )
            second = _buildx(t2, context, "--cache-from", f"type=registry,ref={buildkit_cache}")
            assert ran_steps(second) == [], second[-3000:]
        # Nothing was disturbed: every node still sees every other.
        assert all(len([p for p in s.node.api()["peers"] if p["state"] == "alive"]) == 4 for s in everyone)
    finally:
        for site in reversed(sites):
            site.node.stop()
            if os.environ.get("CACHEMESH_TEST_LOGS"):
                print(site.node.tail(200))


def _head(site: Site, name: str, tag: str) -> tuple[int, str]:
    """HEAD a manifest on `site`'s registry from inside its host; (status, digest)."""
    script = (
        "import urllib.request as u, urllib.error as e\n"
        f"req = u.Request('http://{REGISTRY}/v2/{name}/manifests/{tag}', method='HEAD')\n"
        "try:\n    r = u.urlopen(req); print(r.status, r.headers['Docker-Content-Digest'])\n"
        "except e.HTTPError as x:\n    print(x.code, '-')\n"
    )
    out = subprocess.run(
        [*site.host.nsenter(), sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    code, digest = out.stdout.split()
    return int(code), digest


def _buildx(site: Site, context: Path, *args: str) -> str:
    """`docker buildx build` on `site`, the CLI inside the host: BuildKit's session fetches the
    registry token in the client, which must reach the host's loopback as a real build's does."""
    assert site.engine is not None
    result = site.engine.cli(
        "buildx",
        "build",
        "--progress",
        "plain",
        "--network",
        "none",
        "-t",
        "cached:1",
        *args,
        str(context),
        timeout=600,
        prefix=site.host.nsenter(),
    )
    return result.stdout + result.stderr

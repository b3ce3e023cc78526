"""The local status surface: an HTML page for people, JSON for tools, health, readiness, metrics.

Binds to localhost by default (--status-listen): it shows the mesh's layout and takes no secret.
"""

from __future__ import annotations

import time
from html import escape
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from mesh.protocol.liveness import State
from mesh.ui.humanize import short_id, size_text

if TYPE_CHECKING:
    from mesh.node.node import Node


def _transfer(t: Any) -> dict[str, Any]:
    return {
        "image": t.image,
        "tags": list(t.tags),
        "peer": t.peer_name,
        "address": t.peer,
        "direction": t.direction,
        "bytes": t.done,
        "total": t.total,
        "rate": round(t.rate),
        "started": t.started,
        "finished": t.finished,
        "outcome": t.outcome,
        "error": t.error,
    }


def build_status(node: Node) -> dict[str, Any]:
    core = node.core
    members = core.membership.members
    replicas = core.manifests.replicas
    ready, reason = node.readiness.check()
    peers = []
    for member_id, m in sorted(members.items(), key=lambda kv: kv[1].name):
        if member_id == node.node_id:
            continue
        replica = replicas.get(member_id)
        peers.append(
            {
                "id": member_id,
                "name": m.name,
                "address": m.addr,
                "state": m.state.label,
                "incarnation": m.incarnation,
                "rtt_ms": None if m.rtt is None else round(m.rtt * 1000, 2),
                "images": len(replica.entries) if replica else 0,
                "since": round(time.monotonic() - m.since, 1),
            }
        )
    holders: dict[str, list[str]] = {}
    tags: dict[str, set[str]] = {}
    for holder, replica in replicas.items():
        if holder != node.node_id and (holder not in members or members[holder].state is not State.ALIVE):
            continue
        name = node.config.node_name if holder == node.node_id else members[holder].name
        for image, (image_tags, _) in replica.entries.items():
            holders.setdefault(image, []).append(name)
            tags.setdefault(image, set()).update(image_tags)
    for image, local in node.local.images.items():
        tags.setdefault(image, set()).update(local.tags)
    metas = {**core.manifests.metas, **node.local.metas()}
    images = []
    for image in sorted(tags, key=lambda i: (-metas[i].created if i in metas else 0, i)):
        local_image = node.local.images.get(image)
        if not tags[image] and local_image is None and image not in node.local.shared:
            continue
        meta = metas.get(image)
        images.append(
            {
                "id": image,
                "tags": sorted(tags[image]),
                "size": meta.size if meta else None,
                "created": meta.created if meta else None,
                "local": local_image is not None,
                "holders": sorted(holders.get(image, [])),
            }
        )
    plan = node.puller.plan
    return {
        "node": {
            "id": node.node_id,
            "name": node.config.node_name,
            "address": node.advertise,
            "cluster": node.config.cluster,
            "incarnation": core.incarnation,
            "version": node.version,
            "uptime": round(time.time() - node.started, 1),
            "engine": node.config.docker_host,
            "engine_available": node.local.available,
        },
        "discovery": {
            "seeds": list(node.config.seeds),
            "mdns": node.mdns is not None,
            "mdns_found": sorted(node.mdns.found.values()) if node.mdns is not None else [],
        },
        "ready": ready,
        "ready_reason": reason,
        "missing": [] if plan is None else plan.missing,
        "peers": peers,
        "images": images,
        "transfers": [_transfer(t) for t in node.puller.active.values()]
        + [_transfer(t) for t in node.serving.values()],
        "recent_transfers": [_transfer(t) for t in node.puller.recent],
    }


def status_app(node: Node) -> web.Application:
    app = web.Application()

    async def api(request: web.Request) -> web.Response:
        return web.json_response(build_status(node))

    async def healthz(request: web.Request) -> web.Response:
        # Alive as long as the loop answers; an engine outage shows in readiness, not here,
        # so a restart of dockerd does not get the cachemesh container killed too.
        return web.json_response({"ok": True, "engine_available": node.local.available})

    async def readyz(request: web.Request) -> web.Response:
        ready, reason = node.readiness.check()
        return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=node.metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=render_html(build_status(node)), content_type="text/html")

    if node.config.docker_host == "memory://":
        # Lab only (the in-memory engine): let a test "build" an image on this node.
        from mesh.engine.fake import FakeEngine

        async def lab_build(request: web.Request) -> web.Response:
            engine = node.engine
            assert isinstance(engine, FakeEngine)
            tag = request.query.get("tag", "lab:latest")
            image = engine.build(tag, [f"{tag} {time.time_ns()}".encode()])
            return web.json_response({"id": image, "tag": tag})

        app.router.add_post("/lab/build", lab_build)

    app.router.add_get("/", page)
    app.router.add_get("/api/status", api)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


def _table(headers: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f"<p class=empty>{escape(empty)}</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(s: dict[str, Any]) -> str:
    node = s["node"]
    badge = "ready" if s["ready"] else "not-ready"
    peers = _table(
        ["name", "address", "state", "RTT", "images", "incarnation"],
        [
            [
                escape(p["name"]),
                escape(p["address"]),
                f"<span class={p['state']}>{p['state']}</span>",
                "–" if p["rtt_ms"] is None else f"{p['rtt_ms']:.1f} ms",
                str(p["images"]),
                str(p["incarnation"]),
            ]
            for p in s["peers"]
        ],
        "No peers yet.",
    )
    images = _table(
        ["image", "tags", "size", "here", "held by"],
        [
            [
                f"<code>{short_id(i['id'])}</code>",
                escape(", ".join(i["tags"])) or "<i>untagged (parent)</i>",
                size_text(i["size"]),
                "yes" if i["local"] else "no",
                escape(", ".join(i["holders"])),
            ]
            for i in s["images"]
        ],
        "No images shared yet.",
    )
    transfers = _table(
        ["image", "tags", "peer", "direction", "progress", "rate"],
        [
            [
                f"<code>{short_id(t['image'])}</code>",
                escape(", ".join(t["tags"])),
                escape(t["peer"]),
                t["direction"],
                f"<progress max={max(t['total'], t['bytes'], 1)} value={t['bytes']}></progress> {size_text(t['bytes'])}",
                f"{size_text(t['rate'])}/s",
            ]
            for t in s["transfers"]
        ],
        "No transfers in flight.",
    )
    recent = _table(
        ["image", "peer", "direction", "outcome", "bytes", "error"],
        [
            [
                f"<code>{short_id(t['image'])}</code>",
                escape(t["peer"]),
                t["direction"],
                f"<span class={t['outcome']}>{t['outcome']}</span>",
                size_text(t["bytes"]),
                escape(t["error"][:160]),
            ]
            for t in s["recent_transfers"][:15]
        ],
        "None yet.",
    )
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><meta http-equiv=refresh content=2>
<title>cachemesh · {escape(node["name"])}</title>
<style>
body{{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}}
h1{{font-size:1.4em}} h2{{font-size:1.1em;margin-top:1.6em}}
table{{border-collapse:collapse;width:100%}} th,td{{text-align:left;padding:.3em .6em;border-bottom:1px solid #ddd}}
th{{background:#f4f4f4}} code{{font-size:.95em}} .empty{{color:#777}}
.badge{{padding:.15em .6em;border-radius:1em;color:#fff}} .ready{{background:#2a7}} .not-ready{{background:#c63}}
.alive,.ok{{color:#2a7}} .suspect{{color:#c80}} .dead,.failed{{color:#c33}} .left{{color:#777}}
</style></head><body>
<h1>cachemesh · {escape(node["name"])} <span class="badge {badge}">{"ready" if s["ready"] else "not ready"}</span></h1>
<p>{escape(s["ready_reason"])} · node <code>{escape(node["id"])}</code> at {escape(node["address"])} ·
cluster <b>{escape(node["cluster"])}</b> · incarnation {node["incarnation"]} · up {node["uptime"]:.0f}s ·
engine {escape(node["engine"])} ({"reachable" if node["engine_available"] else "UNREACHABLE"}) · v{escape(node["version"])}</p>
<h2>Peers ({len(s["peers"])})</h2>{peers}
<h2>Images ({len(s["images"])})</h2>{images}
<h2>Transfers in flight</h2>{transfers}
<h2>Recent transfers</h2>{recent}
<p class=empty>JSON: <a href=/api/status>/api/status</a> · <a href=/metrics>/metrics</a> ·
<a href=/healthz>/healthz</a> · <a href=/readyz>/readyz</a></p>
</body></html>"""

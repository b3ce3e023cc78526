"""The local status surface: an HTML page for people, JSON for tools, health, readiness, metrics.

Binds to localhost by default (--status-listen): it shows the mesh's layout and takes no secret.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from html import escape

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from mesh.ui.humanize import eta_text, short_id, size_text, warmup_figures
from mesh.ui.status_doc import (
    DiskDoc,
    NodeTLSDoc,
    PeerGossipDoc,
    PeerTLSDoc,
    RegistryDoc,
    ShareDoc,
    StatusDoc,
    TrustDoc,
)


@dataclass(frozen=True)
class StatusSources:
    """What the status surface reads, and nothing more: each is called per request."""

    status: Callable[[], StatusDoc]  # the /api/status document (see README)
    readiness: Callable[[], tuple[bool, str]]  # (ready, reason)
    engine_available: Callable[[], bool]
    metrics: Callable[[], bytes]  # Prometheus text


def status_app(sources: StatusSources) -> web.Application:
    app = web.Application()

    async def api(request: web.Request) -> web.Response:
        return web.json_response(sources.status())

    async def healthz(request: web.Request) -> web.Response:
        # Alive as long as the loop answers; an engine outage shows in readiness, not here,
        # so a restart of dockerd does not get the cachemesh container killed too.
        return web.json_response({"ok": True, "engine_available": sources.engine_available()})

    async def readyz(request: web.Request) -> web.Response:
        ready, reason = sources.readiness()
        return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=sources.metrics())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=render_html(sources.status()), content_type="text/html")

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


def _tls_cell(tls: PeerTLSDoc) -> str:
    """A peer's TLS state: verified (version, which secret it holds), refused (why), off, unknown."""
    state = tls["state"]
    if state == "verified":
        secret = f" · secret: {tls['secret']}" if "secret" in tls else ""
        return f"<span class=ok>{escape(tls.get('version', ''))}</span>{escape(secret)}"
    if state == "refused":
        return f"<span class=failed title='{escape(tls.get('error', ''))}'>refused</span>: {escape(tls.get('error', '')[:120])}"
    return escape(state)


def _gossip_cell(gossip: PeerGossipDoc) -> str:
    if gossip["datagrams"] != "sealed":
        return escape(gossip["datagrams"])
    return f"<span class=ok>sealed</span> · secret: {escape(gossip.get('secret', ''))}"


def _engine_html(engine: str, available: bool) -> str:
    if engine == "off":  # --engine off: no Docker Engine, the registry endpoint alone
        return "no engine (registry only)"
    return f"engine {escape(engine)} ({'reachable' if available else 'UNREACHABLE'})"


def _engine_id_cell(engine_id: str | None) -> str:
    """The ID `docker images` shows for it here; the mesh key is another column."""
    return f"<code>{short_id(engine_id)}</code>" if engine_id else "–"


def _share_cell(share: ShareDoc | None) -> str:
    """Whether this node announces a local image, and why (the share rule's reason)."""
    if not share:
        return ""
    word = "<span class=ok>shared</span>" if share["shared"] else "<b>kept here</b>"
    return f"{word}: {escape(share['reason'])}"


def _tls_mode(tls: NodeTLSDoc) -> str:
    mode = tls["mode"]
    if mode == "off":
        return "OFF (plain HTTP)"
    secrets = tls.get("secrets", [])
    if mode == "derived":
        return "TLS 1.3, CA from the cluster secret" + (
            " (rotation: current + previous)" if len(secrets) > 1 else ""
        )
    return "TLS 1.3, operator CA"


def _trust_html(t: TrustDoc | None) -> str:
    if not t:
        return ""
    if t["mode"] == "off":
        return (
            "<h2>Trust classes</h2><p>off: no trust key here, so every host may move every tag"
            f"{' (pushes need the token)' if t['push_token'] else ''}.</p>"
        )
    refused = ", ".join(f"{reason} {n}" for reason, n in t["refused"].items()) or "none"
    claims = _table(
        ["name", "kind", "names", "publisher", "class", "believed here"],
        [
            [
                escape(c["name"]),
                escape(c["kind"]),
                f"<code>{short_id(c['target'])}</code>",
                escape(c["publisher"]),
                escape(c["trust_class"]),
                "yes" if c["believed"] else f"<span class=failed>no: {escape(c['reason'])}</span>",
            ]
            for c in t["claims"]
        ],
        "No tag claims yet.",
    )
    return (
        f"<h2>Trust classes</h2><p>this host is <b>{escape(t['mode'])}</b> · keys "
        f"{escape(', '.join(t['keys']))} · protected {escape(', '.join(t['protected']) or 'none')} · "
        f"registry pushes {'need the token' if t['push_token'] else 'open'} · refused claims: "
        f"{escape(refused)}</p>{claims}"
    )


def _registry_html(r: RegistryDoc | None) -> str:
    if not r:
        return ""
    tags = _table(
        ["repository", "tag", "digest", "here", "held by"],
        [
            [
                escape(repo["name"]),
                escape(t["tag"]),
                f"<code>{short_id(t['digest'])}</code>",
                "yes" if t["here"] else "no",
                escape(", ".join(t["holders"])),
            ]
            for repo in r["repositories"]
            for t in repo["tags"]
        ],
        "No registry tags yet.",
    )
    fetches = _table(
        ["digest", "from", "progress"],
        [
            [
                f"<code>{short_id(f['digest'])}</code>",
                escape(f["source"]),
                f"<progress max={max(f['total'], f['bytes'], 1)} value={f['bytes']}></progress> {size_text(f['bytes'])}",
            ]
            for f in r["fetches"]
        ],
        "No fetches in flight.",
    )
    warm = r["warm"]
    warm_text = (
        f"warm-up {escape(', '.join(warm['globs']))}: {warm['held']} of {warm['wanted']} manifests held"
        if warm["globs"]
        else "no warm-up globs"
    )
    return (
        f"<h2>Registry ({escape(r['listen'])})</h2><p>{size_text(r['bytes_held'])} in {r['blobs_held']} blobs held here"
        f" · {warm_text}</p>{tags}<h3>Fetches from peers</h3>{fetches}"
    )


def _warmup_html(s: StatusDoc) -> str:
    """The warm-up as `cachemesh wait-ready` shows it: a bar over the bytes, images, rate, ETA."""
    w = s.get("warmup")
    if not w:
        return ""
    f = warmup_figures(w)
    total = w["bytes_done"] + w["bytes_left"]
    if w["ready_by_timeout"]:
        state = (
            f"<p class=timeout>Ready by <code>--ready-timeout</code> before the warm-up finished: "
            f"{escape(s['ready_reason'])}. Builds here may miss the cache until the rest arrives.</p>"
        )
    elif w["ready_timeout_left"] is not None and not s["ready"]:
        state = (
            f"<p>Reports ready anyway in {eta_text(w['ready_timeout_left'])} "
            "(<code>--ready-timeout</code>) if the warm-up has not finished by then.</p>"
        )
    else:
        state = ""
    return (
        f"<h2>Warm-up</h2><p class=warmup><progress max={max(total, 1)} value={w['bytes_done']}></progress> "
        f"{escape(f['images'])} · {escape(f['bytes'])} ({escape(f['left'])}) · {escape(f['rate'])} · "
        f"{escape(f['eta'])}</p>{state}"
    )


def _disk_html(d: DiskDoc | None) -> str:
    """Bytes the mesh brought here against the budget, the watermarks, evictions by reason."""
    if not d:
        return ""
    held = "not measured yet" if d["held"] is None else size_text(d["held"])
    budget = f" of a {size_text(d['budget'])} budget" if d["budget"] else " (no budget)"
    marks = ""
    if d["high"]:
        marks = f" · watermarks {d['high']:.0%} / {d['low']:.0%}"
    if d["limit_reason"] == "watermark":
        marks += " · <b>above the high watermark: evicting</b>"
    fs = "".join(f" · {escape(f['path'])} {f['fraction']:.0%} full" for f in d["filesystems"])
    reasons = ", ".join(
        f"{n} for the {escape(r)} ({size_text(d['evicted_bytes'].get(r, 0))})"
        for r, n in sorted(d["evictions"].items())
    )
    recent = _table(
        ["what", "kind", "reason", "bytes"],
        [
            [
                f"<code>{short_id(e['id'])}</code>",
                escape(e["kind"]),
                escape(e["reason"]),
                size_text(e["bytes"]),
            ]
            for e in d["recent_evictions"][:10]
        ],
        "No evictions.",
    )
    return (
        f"<h2>Disk</h2><p>{held} brought by the mesh{budget}{marks}{fs}"
        f" · evicted: {reasons or 'nothing'}</p>{recent}"
    )


def render_html(s: StatusDoc) -> str:
    node = s["node"]
    badge = "ready" if s["ready"] else "not-ready"
    peers = _table(
        ["name", "address", "state", "RTT", "images", "incarnation", "TLS", "gossip datagrams"],
        [
            [
                escape(p["name"]),
                escape(p["address"]),
                f"<span class={p['state']}>{p['state']}</span>",
                "–" if p["rtt_ms"] is None else f"{p['rtt_ms']:.1f} ms",
                str(p["images"]),
                str(p["incarnation"]),
                _tls_cell(p["tls"]),
                _gossip_cell(p["gossip"]),
            ]
            for p in s["peers"]
        ],
        "No peers yet.",
    )
    images = _table(
        ["image ID", "tags", "size", "here", "held by", "shared from here", "mesh key"],
        [
            [
                _engine_id_cell(i["engine_id"]),
                escape(", ".join(i["tags"])) or "<i>untagged (parent)</i>",
                size_text(i["size"]),
                ("yes, from the mesh" if i["from_mesh"] else "yes") if i["local"] else "no",
                escape(", ".join(i["holders"])),
                _share_cell(i["share"]),
                f"<code>{short_id(i['id'])}</code>",
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
    registry = _registry_html(s.get("registry")) + _trust_html(s.get("trust")) + _disk_html(s.get("disk"))
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><meta http-equiv=refresh content=2>
<title>cachemesh · {escape(node["name"])}</title>
<style>
body{{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}}
h1{{font-size:1.4em}} h2{{font-size:1.1em;margin-top:1.6em}}
table{{border-collapse:collapse;width:100%}} th,td{{text-align:left;padding:.3em .6em;border-bottom:1px solid #ddd}}
th{{background:#f4f4f4}} code{{font-size:.95em}} .empty{{color:#777}}
.badge{{padding:.15em .6em;border-radius:1em;color:#fff}} .ready{{background:#2a7}} .not-ready{{background:#c63}}
.timeout{{color:#c63}} .alive,.ok{{color:#2a7}} .suspect{{color:#c80}} .dead,.failed{{color:#c33}} .left{{color:#777}}
</style></head><body>
<h1>cachemesh · {escape(node["name"])} <span class="badge {badge}">{"ready" if s["ready"] else "not ready"}</span></h1>
<p>{escape(s["ready_reason"])} · node <code>{escape(node["id"])}</code> at {escape(node["address"])} ·
cluster <b>{escape(node["cluster"])}</b> · incarnation {node["incarnation"]} · up {node["uptime"]:.0f}s ·
{_engine_html(node["engine"], node["engine_available"])} · v{escape(node["version"])} ·
peer TLS: {escape(_tls_mode(node["tls"]))}</p>
{_warmup_html(s)}
<h2>Peers ({len(s["peers"])})</h2>{peers}
<h2>Images ({len(s["images"])})</h2>{images}
<h2>Transfers in flight</h2>{transfers}
<h2>Recent transfers</h2>{recent}
{registry}
<p class=empty>JSON: <a href=/api/status>/api/status</a> · <a href=/metrics>/metrics</a> ·
<a href=/healthz>/healthz</a> · <a href=/readyz>/readyz</a></p>
</body></html>"""

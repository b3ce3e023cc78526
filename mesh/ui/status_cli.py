"""`cachemesh status`: the status page as terminal tables."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from mesh.ui.humanize import short_id, size_text, warmup_figures
from mesh.ui.status_doc import StatusDoc


def print_status(s: StatusDoc, console: Console | None = None) -> None:
    console = console or Console()
    node = s["node"]
    state = "[green]ready[/]" if s["ready"] else "[yellow]not ready[/]"
    console.print(
        f"[bold]{node['name']}[/] ({node['id']}) at {node['address']}, cluster {node['cluster']}: "
        f"{state} ({s['ready_reason']})"
    )
    w = s.get("warmup")
    if w and (w["images_left"] or w.get("ready_by_timeout")):
        f = warmup_figures(w)
        console.print(f"warm-up: {f['images']}, {f['bytes']} ({f['left']}), {f['rate']}, {f['eta']}")
    peers = Table(title=f"Peers ({len(s['peers'])})", title_justify="left")
    for column in ("name", "address", "state", "RTT", "images", "incarnation"):
        peers.add_column(column)
    colours = {"alive": "green", "suspect": "yellow", "dead": "red", "left": "dim"}
    for p in s["peers"]:
        rtt = "–" if p["rtt_ms"] is None else f"{p['rtt_ms']:.1f} ms"
        peers.add_row(
            p["name"],
            p["address"],
            f"[{colours[p['state']]}]{p['state']}[/]",
            rtt,
            str(p["images"]),
            str(p["incarnation"]),
        )
    console.print(peers)
    images = Table(title=f"Images ({len(s['images'])})", title_justify="left")
    for column in ("image ID", "tags", "size", "here", "held by", "mesh key"):
        images.add_column(column)
    for i in s["images"]:
        engine_id = i.get("engine_id")  # absent from a node older than 0.2
        images.add_row(
            short_id(engine_id) if engine_id else "-",
            ", ".join(i["tags"]) or "(parent)",
            size_text(i["size"]),
            "yes" if i["local"] else "no",
            ", ".join(i["holders"]),
            short_id(i["id"]),
        )
    console.print(images)
    if s["transfers"]:
        transfers = Table(title="Transfers in flight", title_justify="left")
        for column in ("image", "peer", "direction", "bytes", "rate"):
            transfers.add_column(column)
        for t in s["transfers"]:
            transfers.add_row(
                short_id(t["image"]),
                t["peer"],
                t["direction"],
                size_text(t["bytes"]),
                size_text(t["rate"]) + "/s",
            )
        console.print(transfers)
    trust = s.get("trust")
    if trust and trust["mode"] != "off":
        refused = ", ".join(f"{reason} {n}" for reason, n in trust["refused"].items()) or "none"
        protected = ", ".join(trust["protected"]) or "none"
        table = Table(
            title=f"Trust: this host is {trust['mode']}, protected {protected}, refused claims: {refused}",
            title_justify="left",
        )
        for column in ("name", "kind", "names", "publisher", "class", "believed"):
            table.add_column(column)
        for c in trust["claims"]:
            table.add_row(
                c["name"],
                c["kind"],
                short_id(c["target"]),
                c["publisher"],
                c["trust_class"],
                "yes" if c["believed"] else f"no: {c['reason']}",
            )
        console.print(table)
    registry = s.get("registry")
    if registry:
        rows = [(r["name"], tag) for r in registry["repositories"] for tag in r["tags"]]
        table = Table(
            title=f"Registry at {registry['listen']}: {size_text(registry['bytes_held'])} held here",
            title_justify="left",
        )
        for column in ("repository", "tag", "digest", "here", "held by"):
            table.add_column(column)
        for name, tag in rows:
            table.add_row(
                name,
                tag["tag"],
                short_id(tag["digest"]),
                "yes" if tag["here"] else "no",
                ", ".join(tag["holders"]),
            )
        console.print(table)

"""The monitoring kit in deploy/: the Prometheus rules pass promtool's checks and their unit tests,
the Grafana dashboard validates against the schema generated from @grafana/schema, every metric
that either uses is one a real node exports, and a real Prometheus scraping two in-process nodes
evaluates the rules (the nodes do not know each other, so "no peers" goes pending for both) and
every dashboard query. scripts/monitoring_tools.sh installs the tools; docs/monitoring.md
describes the kit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mesh.lab.nodes import free_ports
from mesh.lab.poll import async_wait_until
from mesh.node.node import Node
from tests.inproc import start_node

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "cachemesh.rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "cachemesh.rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "cachemesh.json"
SCHEMA = REPO / "deploy" / "grafana" / "dashboard.schema.json"
TOOLS = Path(os.environ.get("CACHEMESH_TOOLS", "/var/cache/cachemesh/tools"))
INSTALL = "scripts/monitoring_tools.sh installs it"


def _prometheus_tool(name: str) -> str:
    path = shutil.which(name) or str(TOOLS / "prometheus" / "root" / "usr" / "bin" / name)
    if not os.access(path, os.X_OK):
        pytest.skip(f"{name} not installed ({INSTALL})")
    return path


def _check_jsonschema() -> str:
    beside = Path(sys.executable).parent / "check-jsonschema"  # the virtualenv's, as installed
    path = str(beside) if os.access(beside, os.X_OK) else shutil.which("check-jsonschema")
    if path is None:
        pytest.skip(f"check-jsonschema not installed ({INSTALL})")
    return path


def _rules() -> list[dict[str, Any]]:
    try:
        import yaml
    except ImportError:
        pytest.skip(f"PyYAML not installed ({INSTALL})")
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


async def _run(*args: str, cwd: Path = REPO) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(errors="replace")


# --- (a)-(c): the tools' own checks ----------------------------------------------------------------


async def test_promtool_check_rules_is_clean() -> None:
    code, out = await _run(_prometheus_tool("promtool"), "check", "rules", str(RULES))
    assert code == 0, out
    assert "SUCCESS" in out and "WARNING" not in out, out


async def test_promtool_unit_tests_of_the_rules_pass() -> None:
    # promtool resolves rule_files relative to the test file
    code, out = await _run(
        _prometheus_tool("promtool"), "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent
    )
    assert code == 0, out
    assert "SUCCESS" in out, out


def test_every_alert_has_a_unit_test_and_says_what_to_do() -> None:
    alerts = [r for r in _rules() if "alert" in r]
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert {a["alert"] for a in alerts} <= tested
    for alert in alerts:
        assert alert["annotations"]["summary"] and len(alert["annotations"]["description"]) > 80, alert
        assert alert["labels"]["severity"] in ("warning", "info"), alert


async def test_the_dashboard_validates_against_the_generated_schema() -> None:
    code, out = await _run(_check_jsonschema(), "--schemafile", str(SCHEMA), str(DASHBOARD))
    assert code == 0, out
    assert "ok -- validation done" in out, out


async def test_the_schema_check_catches_a_broken_dashboard(workdir: Path) -> None:
    """The control: the committed schema is strict enough to refuse a panel with an unknown key."""
    broken = json.loads(DASHBOARD.read_text())
    broken["panels"][1]["gridPos"]["wide"] = 3
    path = workdir / "broken.json"
    path.write_text(json.dumps(broken))
    code, out = await _run(_check_jsonschema(), "--schemafile", str(SCHEMA), str(path))
    assert code == 1 and "gridPos" in out, out


def test_the_dashboard_has_datasource_and_instance_variables() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert variables["instance"]["type"] == "query" and variables["instance"]["multi"]
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in _panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    for expr in _dashboard_queries(dashboard):
        assert 'instance=~"$instance"' in expr, expr


# --- (d): names used are names a node exports --------------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, labels or keywords)."""
    bare = _STRINGS.sub('""', expr)
    bare = _MATCHERS.sub(" ", bare)
    bare = _RANGES.sub(" ", bare)
    bare = _LABEL_LISTS.sub(" ", bare)
    return {name for name, call in _IDENTIFIER.findall(bare) if not call and name.lower() not in _KEYWORDS}


def test_metric_names_finds_the_selected_series_only() -> None:
    expr = (
        "histogram_quantile(0.9, sum by (le) "
        '(rate(a_seconds_bucket{job=~"$job", x="y z"}[$__rate_interval])))'
        " / on (instance) group_left b:recorded * 1e3 > bool 0 and c_total offset 5m"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b:recorded", "c_total"}


def _panels(dashboard: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]


def _variable_queries(dashboard: dict[str, Any]) -> list[str]:
    """The series the query variables read: label_values(SELECTOR, label)."""
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            selector = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"])
            assert selector, variable["query"]
            found.append(selector.group(1))
    return found


def exported_names(text: str) -> set[str]:
    """Every sample name a /metrics page can hold, families without samples yet included (a
    labelled counter nothing has bumped shows only its HELP and TYPE)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(s.name for s in family.samples)
    return names


async def _get(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as r:
        assert r.status == 200, url
        return await r.text()


async def test_every_metric_in_the_rules_and_the_dashboard_is_exported_by_a_node(workdir: Path) -> None:
    rules = _rules()
    recorded = {r["record"] for r in rules if "record" in r}
    dashboard = json.loads(DASHBOARD.read_text())
    used: dict[str, set[str]] = {}
    for rule in rules:
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(rule.get("alert") or rule["record"])
    for expr in _dashboard_queries(dashboard) + _variable_queries(dashboard):
        for name in metric_names(expr):
            used.setdefault(name, set()).add("dashboard")

    # a disk budget, so that the node checks its disk and exports what it holds
    node = await start_node(workdir, "a", disk_budget=10**9)
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://{node.status_addr}/metrics"

            async def scraped() -> str | None:
                text = await _get(http, url)
                return text if "cachemesh_mesh_bytes_held " in text else None

            text = await async_wait_until(scraped, 15, what="a disk check in /metrics")
    finally:
        await node.stop()
    exported = exported_names(text)
    unknown = {
        name: sorted(where)
        for name, where in used.items()
        if name not in exported and not (":" in name and name in recorded)
    }
    assert not unknown, f"not exported by a node: {unknown}"


# --- (e): a real Prometheus scrapes two nodes and evaluates the rules --------------------------


@contextlib.asynccontextmanager
async def prometheus(workdir: Path, targets: list[str]) -> AsyncIterator[str]:
    """A Prometheus server on a free loopback port scraping `targets` every second and evaluating
    the rules every second; yields its base URL, and stops it."""
    binary = _prometheus_tool("prometheus")
    (port,) = free_ports(1)
    config = workdir / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [{"job_name": "cachemesh", "static_configs": [{"targets": targets}]}],
            }
        )
    )
    log = workdir / "prometheus.log"
    out = await asyncio.to_thread(log.open, "wb")
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            stdout=out,
            stderr=out,
        )
    finally:
        out.close()
    try:
        yield f"http://127.0.0.1:{port}"
    except AssertionError as exc:
        tail = (await asyncio.to_thread(log.read_bytes))[-3000:].decode(errors="replace")
        raise AssertionError(f"{exc}\nprometheus log:\n{tail}") from exc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _api(http: aiohttp.ClientSession, base: str, path: str, **params: str) -> Any:
    try:
        async with http.get(f"{base}{path}", params=params) as r:
            body = await r.json()
    except aiohttp.ClientConnectionError:
        return None  # not listening yet
    assert body["status"] == "success", body
    return body["data"]


def _grafana_to_promql(expr: str) -> str:
    """A dashboard query as Grafana sends it with every job and node selected."""
    for variable, value in (
        ("$__rate_interval", "1m"),
        ("$__range", "1h"),
        ("$instance", ".*"),
        ("$job", ".*"),
    ):
        expr = expr.replace(variable, value)
    assert "$" not in expr, expr
    return expr


ALWAYS = {
    "cachemesh_ready",
    "cachemesh_peers",
    "cachemesh_images",
    "cachemesh_images_missing",
    "cachemesh_transfers_in_flight",
    "cachemesh_incarnation",
    "cachemesh_disk_budget_bytes",
    "cachemesh_mesh_bytes_held",
}
"""Gauges every node with a disk budget exports from its start (once it has checked its disk)."""


async def test_prometheus_scrapes_nodes_and_evaluates_the_rules(workdir: Path) -> None:
    # Two nodes that know no seed and look for no peer: each sees no alive peer while the other of
    # its job is up, which is what CachemeshNoPeers is for.
    nodes: list[Node] = []
    try:
        for name in ("a", "b"):
            nodes.append(await start_node(workdir, name, disk_budget=10**9))
        # ready (alone, after the join window) before the first scrape: no warm-up alert pending
        await async_wait_until(lambda: all(n.readiness.ready for n in nodes), 30, what="both nodes ready")
        targets = sorted(n.status_addr for n in nodes)
        async with prometheus(workdir, targets) as base, aiohttp.ClientSession() as http:

            async def all_up() -> bool:
                data = await _api(http, base, "/api/v1/targets")
                if data is None:
                    return False
                active = data["activeTargets"]
                return sorted(t["labels"]["instance"] for t in active if t["health"] == "up") == targets

            await async_wait_until(all_up, 30, interval=0.2, what="both nodes scraped (targets up)")

            async def no_peers_pending() -> list[dict[str, Any]] | None:
                alerts = (await _api(http, base, "/api/v1/alerts"))["alerts"]
                mine = [a for a in alerts if a["labels"]["alertname"] == "CachemeshNoPeers"]
                return mine if sorted(a["labels"]["instance"] for a in mine) == targets else None

            alerts = await async_wait_until(
                no_peers_pending, 30, interval=0.2, what="CachemeshNoPeers pending"
            )
            assert {a["state"] for a in alerts} == {"pending"}  # for: 5m
            assert {a["labels"]["job"] for a in alerts} == {"cachemesh"}

            async def every_rule_evaluated() -> list[dict[str, Any]] | None:
                groups = (await _api(http, base, "/api/v1/rules"))["groups"]
                rules = [r for g in groups for r in g["rules"]]
                evaluated = all(not r["lastEvaluation"].startswith("0001") for r in rules)
                return rules if rules and evaluated else None

            rules = await async_wait_until(
                every_rule_evaluated, 30, interval=0.2, what="every rule evaluated"
            )
            assert len(rules) == len(_rules())
            broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
            assert not broken, broken
            firing_or_pending = {
                r["name"] for r in rules if r["type"] == "alerting" and r["state"] != "inactive"
            }
            assert firing_or_pending == {"CachemeshNoPeers"}, firing_or_pending

            # a rate needs two scrapes of a node: wait for both nodes' series, each direction
            expected = {(t, d) for t in targets for d in ("in", "out")}

            async def recorded() -> bool:
                data = await _api(http, base, "/api/v1/query", query="cachemesh:transfer_bytes:rate5m")
                found = {(s["metric"]["instance"], s["metric"]["direction"]) for s in data["result"]}
                return found == expected

            await async_wait_until(
                recorded, 30, interval=0.2, what="a recording rule's series for both nodes"
            )

            # Every dashboard query is valid PromQL that Prometheus evaluates, and those that read
            # only gauges every node has get data from these two.
            dashboard = json.loads(DASHBOARD.read_text())
            empty = []
            for expr in _dashboard_queries(dashboard) + _variable_queries(dashboard):
                data = await _api(http, base, "/api/v1/query", query=_grafana_to_promql(expr))
                if not data["result"] and metric_names(expr) <= ALWAYS:
                    empty.append(expr)
            assert not empty, empty
    finally:
        for node in reversed(nodes):
            await node.stop()

"""The TypedDicts of mesh.ui.status_doc say what the node serves: every key of /api/status and of the
metrics snapshot, at every depth, is one they name, with a value of the type they give, and no key
they require is missing. mypy checks the code that builds and reads the document against them;
this checks them against the JSON."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any, get_args, get_origin, get_type_hints, is_typeddict

import aiohttp

from mesh.engine.fake import FakeEngine
from mesh.lab.poll import async_wait_until
from mesh.ui.status_doc import MetricsSnapshot, StatusDoc
from tests.inproc import start_node


def problems(value: Any, kind: Any, path: str = "") -> list[str]:
    """Where `value` (JSON, or the snapshot's Python values) is not of the type `kind`."""
    if is_typeddict(kind):
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__}, not a {kind.__name__}"]
        # With postponed annotations Python 3.11 cannot see NotRequired in __required_keys__.
        hints = get_type_hints(kind, include_extras=True)
        optional = {key for key, hint in hints.items() if get_origin(hint) is typing.NotRequired}
        hints = get_type_hints(kind)
        found = [f"{path}.{key}: not in {kind.__name__}" for key in set(value) - set(hints)]
        found += [f"{path}.{key}: missing" for key in set(hints) - optional - set(value)]
        for key in set(value) & set(hints):
            found += problems(value[key], hints[key], f"{path}.{key}")
        return found
    origin, args = get_origin(kind), get_args(kind)
    if origin in (types.UnionType, typing.Union):
        options = [problems(value, option, path) for option in args]
        return [] if any(not p for p in options) else min(options, key=len)
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {type(value).__name__}, not a list"]
        return [p for i, item in enumerate(value) for p in problems(item, args[0], f"{path}[{i}]")]
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            return [f"{path}: {type(value).__name__}, not a mapping"]
        found = []
        for key, item in value.items():
            found += problems(key, args[0], f"{path} key {key!r}")
            found += problems(item, args[1], f"{path}[{key!r}]")
        return found
    if origin is tuple:
        if not isinstance(value, tuple) or len(value) != len(args):
            return [f"{path}: {value!r}, not a {kind}"]
        return [p for item, arg in zip(value, args, strict=True) for p in problems(item, arg, path)]
    if kind is type(None):
        return [] if value is None else [f"{path}: {value!r}, not None"]
    # JSON has no float type of its own: where a float goes, a whole number is as good.
    ok = type(value) in (int, float) if kind is float else type(value) is kind
    return [] if ok else [f"{path}: {value!r} is a {type(value).__name__}, not a {kind.__name__}"]


class _Inner(typing.TypedDict):
    n: int
    maybe: typing.NotRequired[str]


class _Outer(typing.TypedDict):
    items: list[_Inner]
    note: str | None


def test_the_checker_finds_a_misnamed_a_missing_and_a_mistyped_key() -> None:
    assert problems({"items": [{"n": 1}, {"n": 2, "maybe": "x"}], "note": None}, _Outer) == []
    assert sorted(problems({"items": [{"m": 1}], "note": "x"}, _Outer)) == [
        ".items[0].m: not in _Inner",
        ".items[0].n: missing",
    ]
    assert sorted(problems({"items": [{"n": "1"}], "note": 3}, _Outer)) == [
        ".items[0].n: '1' is a str, not a int",
        ".note: 3 is a int, not a str",
    ]


async def test_the_served_document_and_the_metrics_snapshot_are_what_their_typeddicts_say(workdir):
    ea = FakeEngine()
    ea.build("tool:1", [b"tool"])
    a = await start_node(workdir, "a", engine=ea)
    b = await start_node(workdir, "b", seeds=(a.peer_addr,), registry_warm=("r/*",))
    try:
        await async_wait_until(lambda: b.readiness.ready and len(b.local.images) == 1, 10, what="b warm")
        for node in (a, b):
            url = f"http://{node.status_addr}/api/status"
            async with aiohttp.ClientSession() as http, http.get(url) as r:
                served = await r.json()
            assert served["peers"] and served["images"] and served["warmup"]
            assert problems(served, StatusDoc) == [], node.config.node_name
            assert problems(node.parts.metrics_snapshot(), MetricsSnapshot) == [], node.config.node_name
        assert b.puller.recent  # the pull that brought tool:1: a transfer row was checked too
    finally:
        await b.stop()
        await a.stop()

"""The protocol core's Timings: the presets are the numbers the Config presets gave before the core
stopped taking a Config, every field says what it trades, and the node still hands them over."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools

import pytest

from mesh.config import Config, ConfigError
from mesh.options import validate
from mesh.protocol import timings as timings_module
from mesh.protocol.timings import Timings

SECRET = b"0123456789abcdef0123456789abcdef"

# Config.lan() and Config.local() before the split (mesh/config.py at 41cce62).
LAN = {
    "probe_interval": 1.0,
    "probe_timeout": 0.5,
    "indirect_checks": 3,
    "suspicion_mult": 4,
    "suspicion_max_timeout_mult": 3,
    "dead_reap_time": 600.0,
    "gossip_interval": 0.2,
    "gossip_nodes": 3,
    "gossip_to_dead_time": 30.0,
    "retransmit_mult": 4,
    "push_pull_interval": 10.0,
    "reconnect_interval": 5.0,
    "tombstone_ttl": 600.0,
    "gossip_message_bytes": 8 * 1024,
    "rumour_inline_bytes": 1024,
    "max_message_bytes": 1024 * 1024,
}
LOCAL = LAN | {
    "probe_interval": 0.5,
    "probe_timeout": 0.25,
    "gossip_interval": 0.1,
    "push_pull_interval": 2.0,
    "reconnect_interval": 1.0,
    "dead_reap_time": 60.0,
    "gossip_to_dead_time": 10.0,
}
# What else the local preset changed, all of it the node's, not the core's.
LOCAL_NODE = {
    "rescan_interval": 5.0,
    "event_debounce": 0.1,
    "retry_backoff": 0.5,
    "retry_backoff_max": 5.0,
    "join_grace": 2.0,
    "disk_check_interval": 1.0,
}


@pytest.mark.parametrize(("timings", "expected"), [(Timings.lan(), LAN), (Timings.local(), LOCAL)])
def test_the_presets_are_the_numbers_the_config_presets_gave(timings: Timings, expected: dict[str, object]):
    assert dataclasses.asdict(timings) == expected


@pytest.mark.parametrize(
    ("config", "timings"), [(Config.lan(), Timings.lan()), (Config.local(), Timings.local())]
)
def test_a_config_preset_carries_the_timings_preset_of_the_same_name(config: Config, timings: Timings):
    assert config.timings == timings


@pytest.mark.parametrize(("field", "value"), LOCAL_NODE.items())
def test_the_local_preset_still_speeds_up_the_node(field: str, value: float):
    assert getattr(Config.local(), field) == value
    assert getattr(Config.lan(), field) > value


def test_overrides_and_replace_change_one_field():
    assert Timings.local(probe_interval=2.0) == Timings.local().replace(probe_interval=2.0)
    assert Timings.local(probe_interval=2.0).gossip_interval == LOCAL["gossip_interval"]
    custom = Timings.lan(gossip_interval=1.0)
    assert Config.local(timings=custom).timings is custom


def test_the_node_reads_the_cores_limits_through_its_config():
    config = Config.local(timings=Timings.local(max_message_bytes=4096, reconnect_interval=3.0))
    assert (config.max_message_bytes, config.reconnect_interval) == (4096, 3.0)


def test_a_probe_timeout_as_long_as_the_interval_is_refused():
    with pytest.raises(ConfigError, match="probe_timeout must be shorter than probe_interval"):
        validate(Config.lan(secret=SECRET, timings=Timings.lan(probe_timeout=1.0)))


def _documented_fields() -> dict[str, str]:
    """Field name -> the docstring written under it in the class body."""
    source = ast.parse(inspect.getsource(timings_module))
    body = next(n for n in source.body if isinstance(n, ast.ClassDef) and n.name == "Timings").body
    docs = {}
    for node, after in itertools.pairwise(body):
        named = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        if named and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = str(after.value.value)
    return docs


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Timings)])
def test_every_timing_says_what_it_is_for(field: str):
    assert len(_documented_fields().get(field, "")) > 20, f"Timings.{field} has no docstring"

"""Settings the command line refuses with a clear error, and where the client commands find the
node's status page."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from mesh import cli
from mesh.config import ConfigError
from mesh.node.persistence import NodeState
from mesh.options import resolve

SECRET = {"CACHEMESH_SECRET": "a-cluster-secret-of-enough-length"}


def test_an_unknown_preset_is_refused_not_taken_for_lan():
    with pytest.raises(ConfigError, match="CACHEMESH_PRESET 'prod': one of lan, local"):
        resolve({}, SECRET, preset="prod")


def test_an_unknown_log_level_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("CACHEMESH_LOG_LEVEL", "verbose")
    assert cli.main(["run", "--insecure"]) == 2
    assert "CACHEMESH_LOG_LEVEL 'verbose': one of debug, info, warning, error" in capsys.readouterr().err


@pytest.mark.parametrize(("raw", "seconds"), [("30", 30.0), ("30s", 30.0), ("2m", 120.0), ("1.5", 1.5)])
def test_the_idle_timeout_takes_durations_and_bare_seconds(raw: str, seconds: float):
    env = {**SECRET, "CACHEMESH_TRANSFER_IDLE_TIMEOUT": raw}
    assert resolve({}, env).transfer_idle_timeout == seconds


@pytest.mark.parametrize("raw", ["0", "off", "ten"])
def test_an_idle_timeout_that_never_passes_is_refused(raw: str):
    with pytest.raises(ConfigError, match="CACHEMESH_TRANSFER_IDLE_TIMEOUT"):
        resolve({}, {**SECRET, "CACHEMESH_TRANSFER_IDLE_TIMEOUT": raw})


def test_client_commands_find_the_status_page_the_node_wrote_down(tmp_path: Path, monkeypatch):
    args = argparse.Namespace(status_addr=None)
    monkeypatch.delenv("CACHEMESH_STATUS_LISTEN", raising=False)
    monkeypatch.setenv("CACHEMESH_DATA_DIR", str(tmp_path))
    assert cli._status_addr(args) == "127.0.0.1:7612"  # nothing written: the default
    NodeState(str(tmp_path)).save_status_addr("10.0.0.5:9000")  # a node run with --status-listen
    assert cli._status_addr(args) == "10.0.0.5:9000"
    monkeypatch.setenv("CACHEMESH_STATUS_LISTEN", "127.0.0.1:7000")
    assert cli._status_addr(args) == "127.0.0.1:7000"  # the environment still wins
    assert cli._status_addr(argparse.Namespace(status_addr="127.0.0.1:1")) == "127.0.0.1:1"


def test_trust_settings_come_as_files_from_flags_or_env(tmp_path: Path):
    from mesh.net.trust_keys import write_pair

    write_pair(tmp_path / "trust.key", tmp_path / "trust.pub")
    (tmp_path / "token").write_text("a-push-token-of-enough-length\n")
    env = {
        **SECRET,
        "CACHEMESH_TRUST_PUB": str(tmp_path / "trust.pub"),
        "CACHEMESH_PROTECT": "*:main, cache/*:main",
        "CACHEMESH_REGISTRY_PUSH_TOKEN_FILE": str(tmp_path / "token"),
    }
    config = resolve({"trust_key": str(tmp_path / "trust.key")}, env)
    assert config.trust_pub == str(tmp_path / "trust.pub") and config.trust_key == str(tmp_path / "trust.key")
    assert config.protect == ("*:main", "cache/*:main")
    assert config.registry_push_token_file == str(tmp_path / "token")


def test_protected_names_without_a_trust_key_are_refused():
    with pytest.raises(ConfigError, match="--protect needs a trust key"):
        resolve({}, {**SECRET, "CACHEMESH_PROTECT": "*:main"})


@pytest.mark.parametrize("flag", ["trust_key", "trust_pub", "registry_push_token_file"])
def test_a_missing_key_or_token_file_is_refused_by_its_flag(tmp_path: Path, flag: str):
    with pytest.raises(ConfigError, match=f"--{flag.replace('_', '-')} .*missing: no such file"):
        resolve({flag: str(tmp_path / "missing")}, SECRET)


def test_a_node_with_a_garbled_key_file_exits_2_with_why(tmp_path: Path, capsys):
    from mesh.config import Config
    from mesh.engine.fake import FakeEngine

    bad = tmp_path / "trust.pub"
    bad.write_text("-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n")
    config = Config.local(
        secret=b"a-cluster-secret-of-enough-length",
        listen="127.0.0.1:0",
        status_listen="127.0.0.1:0",
        registry_listen="127.0.0.1:0",
        data_dir=str(tmp_path / "data"),
        mdns=False,
        trust_pub=str(bad),
    )
    # Run as `cachemesh run` would (the start's key derivation is no work for a test's loop).
    assert asyncio.run(cli.serve_node(config, engine=FakeEngine())) == 2
    err = capsys.readouterr().err
    assert "--trust-pub file" in err and "key 1 does not parse" in err

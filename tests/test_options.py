"""The option table: the same flags and env vars as ever, each help line ending in the real default
(rendered from the Config field, in the form the flag takes), and `cachemesh run --help` showing
them all."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.cli import main
from mesh.config import Config
from mesh.options import OPTIONS, Option, default

README = Path(__file__).resolve().parent.parent / "README.md"

# field -> (flag, env var): what operators and their deployments already set.
FLAGS = {
    "engine": ("--engine", "CACHEMESH_ENGINE"),
    "docker_host": ("--docker-host", "CACHEMESH_DOCKER_HOST"),
    "listen": ("--listen", "CACHEMESH_LISTEN"),
    "advertise": ("--advertise", "CACHEMESH_ADVERTISE"),
    "status_listen": ("--status-listen", "CACHEMESH_STATUS_LISTEN"),
    "seeds": ("--seeds", "CACHEMESH_SEEDS"),
    "mdns": ("--mdns", "CACHEMESH_MDNS"),
    "gossip_datagrams": ("--gossip-datagrams", "CACHEMESH_GOSSIP_DATAGRAMS"),
    "cluster": ("--cluster", "CACHEMESH_CLUSTER"),
    "insecure": ("--insecure", "CACHEMESH_INSECURE"),
    "data_dir": ("--data-dir", "CACHEMESH_DATA_DIR"),
    "node_name": ("--node-name", "CACHEMESH_NODE_NAME"),
    "include": ("--include", "CACHEMESH_INCLUDE"),
    "exclude": ("--exclude", "CACHEMESH_EXCLUDE"),
    "tls": ("--tls", "CACHEMESH_TLS"),
    "tls_cert": ("--tls-cert", "CACHEMESH_TLS_CERT"),
    "tls_key": ("--tls-key", "CACHEMESH_TLS_KEY"),
    "tls_ca": ("--tls-ca", "CACHEMESH_TLS_CA"),
    "registry_listen": ("--registry-listen", "CACHEMESH_REGISTRY_LISTEN"),
    "zone": ("--zone", "CACHEMESH_ZONE"),
    "max_transfers_out": ("--max-uploads", "CACHEMESH_MAX_UPLOADS"),
    "max_transfers_in": ("--max-downloads", "CACHEMESH_MAX_DOWNLOADS"),
    "upload_queue": ("--upload-queue", "CACHEMESH_UPLOAD_QUEUE"),
    "transfer_idle_timeout": ("--transfer-idle-timeout", "CACHEMESH_TRANSFER_IDLE_TIMEOUT"),
    "registry_warm": ("--registry-warm", "CACHEMESH_REGISTRY_WARM"),
    "registry_push_token_file": ("--registry-push-token-file", "CACHEMESH_REGISTRY_PUSH_TOKEN_FILE"),
    "trust_key": ("--trust-key", "CACHEMESH_TRUST_KEY"),
    "trust_pub": ("--trust-pub", "CACHEMESH_TRUST_PUB"),
    "protect": ("--protect", "CACHEMESH_PROTECT"),
    "ready_timeout": ("--ready-timeout", "CACHEMESH_READY_TIMEOUT"),
    "share": ("--share", "CACHEMESH_SHARE"),
    "disk_budget": ("--disk-budget", "CACHEMESH_DISK_BUDGET"),
    "disk_high": ("--disk-high", "CACHEMESH_DISK_HIGH"),
    "disk_low": ("--disk-low", "CACHEMESH_DISK_LOW"),
}

# How help shows some defaults: in the flag's own form, or what an empty default means.
SHOWN = {
    "listen": "0.0.0.0:7611",
    "docker_host": "unix:///var/run/docker.sock",
    "mdns": "on",
    "insecure": "off",
    "seeds": "none",
    "include": "all tags",
    "advertise": "derived from this host's addresses",
    "transfer_idle_timeout": "10s",
    "upload_queue": "32",
    "ready_timeout": "30m",
    "disk_budget": "none",
    "disk_high": "off",
    "disk_low": "15 points under --disk-high",
}


def _by_field(field: str) -> Option:
    return next(option for option in OPTIONS if option.field == field)


def _shown(option: Option) -> str:
    return option.unset or option.show(option.default)


def test_the_flags_and_env_vars_are_the_ones_deployments_use():
    assert {option.field: (option.flag, option.env) for option in OPTIONS} == FLAGS


@pytest.mark.parametrize(("field", "shown"), SHOWN.items())
def test_help_shows_the_default_as_an_operator_would_write_it(field: str, shown: str):
    assert _by_field(field).help_text.endswith(f"(default: {shown}) [{FLAGS[field][1]}]")


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.field)
def test_the_default_in_the_help_is_the_configs(option: Option):
    """Read back through the option's own parser, what help shows is what an unset option is."""
    assert option.default == getattr(Config(), option.field)
    if option.unset:  # a rule for an empty default, worked out at start
        assert not option.default
    elif option.default in ("", ()):
        assert _shown(option) == "none"
    else:
        assert option.parse(_shown(option)) == option.default
    assert f"(default: {_shown(option)})" in option.help_text


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.field)
def test_no_help_line_writes_a_default_by_hand(option: Option):
    assert "default" not in option.help


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.field)
def test_an_options_default_is_the_same_in_every_preset(option: Option):
    """Help shows one default; the presets differ only in timings that are no flag's."""
    assert getattr(Config.local(), option.field) == getattr(Config.lan(), option.field)


def test_run_help_lists_every_flag_with_its_default(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag, nothing wrapped
    with pytest.raises(SystemExit) as exited:
        main(["run", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for option in OPTIONS:
        assert option.flag in out and option.help_text in out, option.field
    assert "(default: lan) [CACHEMESH_PRESET]" in out and "(default: info) [CACHEMESH_LOG_LEVEL]" in out


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["--no-mdns"], "mdns", False),
        (["--mdns"], "mdns", True),
        (["--no-gossip-datagrams"], "gossip_datagrams", False),
        (["--insecure"], "insecure", True),
        ([], "insecure", False),
    ],
)
def test_switches_take_their_flags(monkeypatch, argv: list[str], field: str, value: bool):
    seen: list[Config] = []

    async def serve(config: Config) -> int:
        seen.append(config)
        return 0

    monkeypatch.setenv("CACHEMESH_SECRET", "0123456789abcdef0123456789abcdef")
    assert main(["run", *argv], serve=serve) == 0
    assert getattr(seen[0], field) is value


def test_a_switch_that_is_off_by_default_has_no_negative_form():
    with pytest.raises(SystemExit):
        main(["run", "--no-insecure"])


def test_the_clients_fall_back_to_the_configs_status_address():
    assert default("status_listen") == Config().status_listen == "127.0.0.1:7612"


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.field)
def test_the_readme_lists_every_option(option: Option):
    settings = README.read_text().split("### Settings", 1)[1].split("\n### ", 1)[0]
    assert f"`{option.flag}" in settings and f"`{option.env}`" in settings

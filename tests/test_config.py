import pytest

from mesh.config import Config, ConfigError
from mesh.hostport import format_hostport, parse_hostport
from mesh.options import resolve
from mesh.values import format_duration, parse_duration, parse_fraction, parse_size

SECRET = "0123456789abcdef0123456789abcdef"


def test_env_vars_configure_everything_and_flags_win():
    env = {
        "CACHEMESH_SECRET": SECRET,
        "CACHEMESH_LISTEN": "0.0.0.0:9000",
        "CACHEMESH_SEEDS": "a:1, b.example:2 ,c",
        "CACHEMESH_MDNS": "false",
        "CACHEMESH_CLUSTER": "ci",
        "CACHEMESH_DATA_DIR": "/d",
        "CACHEMESH_NODE_NAME": "n",
        "CACHEMESH_STATUS_LISTEN": "0.0.0.0:9001",
        "CACHEMESH_ADVERTISE": "10.0.0.5:9000",
        "DOCKER_HOST": "tcp://x:2375",
        "CACHEMESH_EXCLUDE": "cachemesh:*",
    }
    config = resolve({"cluster": "from-flag"}, env)
    assert config.listen == "0.0.0.0:9000" and config.seeds == ("a:1", "b.example:2", "c")
    assert config.mdns is False and config.cluster == "from-flag" and config.data_dir == "/d"
    assert config.docker_host == "tcp://x:2375" and config.secret == SECRET.encode()
    assert config.exclude == ("cachemesh:*",)
    assert resolve({}, {**env, "CACHEMESH_DOCKER_HOST": "unix:///s"}).docker_host == "unix:///s"


def test_defaults():
    config = resolve({}, {"CACHEMESH_SECRET": SECRET})
    assert config.listen == "0.0.0.0:7611" and config.status_listen == "127.0.0.1:7612"
    assert config.docker_host == "unix:///var/run/docker.sock" and config.mdns and config.cluster == "default"


def test_gossip_datagrams_are_on_unless_turned_off_by_flag_or_env(monkeypatch):
    from mesh.cli import main

    env = {"CACHEMESH_SECRET": SECRET}
    assert resolve({}, env).gossip_datagrams is True
    assert resolve({}, {**env, "CACHEMESH_GOSSIP_DATAGRAMS": "false"}).gossip_datagrams is False
    seen: list[Config] = []

    async def serve(config: Config) -> int:
        seen.append(config)
        return 0

    monkeypatch.setenv("CACHEMESH_SECRET", SECRET)
    assert main(["run", "--no-gossip-datagrams"], serve=serve) == 0
    assert main(["run"], serve=serve) == 0
    assert [c.gossip_datagrams for c in seen] == [False, True]


def test_no_secret_is_refused_unless_insecure(tmp_path):
    with pytest.raises(ConfigError, match="refusing to start without a cluster secret"):
        resolve({}, {})
    assert resolve({"insecure": True}, {}).signing_secret
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    assert resolve({}, {}, secret_file=str(secret_file)).secret == SECRET.encode()
    with pytest.raises(ConfigError, match="shorter than 16"):
        resolve({}, {"CACHEMESH_SECRET": "short"})
    with pytest.raises(ConfigError, match="cannot read secret file"):
        resolve({}, {}, secret_file=str(tmp_path / "missing"))


@pytest.mark.parametrize(
    "env",
    [
        {"CACHEMESH_MDNS": "maybe"},
        {"CACHEMESH_LISTEN": "nohost"},
        {"CACHEMESH_SEEDS": "a:99999"},
        {"CACHEMESH_READY_TIMEOUT": "10 minutes"},
    ],
)
def test_malformed_settings_name_the_variable(env):
    with pytest.raises(ConfigError, match=next(iter(env))):
        resolve({}, {"CACHEMESH_SECRET": SECRET, **env})


def test_hostport_parsing():
    assert parse_hostport("[::1]:7611") == ("::1", 7611)
    assert parse_hostport("seed.internal", default_port=7611) == ("seed.internal", 7611)
    with pytest.raises(ValueError, match="brackets"):
        parse_hostport("::1:7611")


@pytest.mark.parametrize(("host", "text"), [("10.0.0.1", "10.0.0.1:7611"), ("::1", "[::1]:7611")])
def test_hostport_formatting_is_the_inverse_of_parsing(host, text):
    assert format_hostport(host, 7611) == text
    assert parse_hostport(text) == (host, 7611)


def test_local_preset_is_faster_and_the_secret_is_not_printed():
    assert Config.local().timings.probe_interval < Config.lan().timings.probe_interval
    assert SECRET not in repr(Config(secret=SECRET.encode()))


def test_burst_settings_zone_and_transfer_limits():
    env = {
        "CACHEMESH_SECRET": SECRET,
        "CACHEMESH_ZONE": "eu-west-1a",
        "CACHEMESH_MAX_UPLOADS": "2",
        "CACHEMESH_MAX_DOWNLOADS": "3",
        "CACHEMESH_UPLOAD_QUEUE": "0",
        "CACHEMESH_TRANSFER_IDLE_TIMEOUT": "2.5",
    }
    config = resolve({}, env)
    assert config.zone == "eu-west-1a" and config.max_transfers_out == 2 and config.max_transfers_in == 3
    assert config.upload_queue == 0 and config.transfer_idle_timeout == 2.5
    assert resolve({}, {"CACHEMESH_SECRET": SECRET}).transfer_idle_timeout == 10.0
    with pytest.raises(ConfigError, match="zone must be at most 64 characters, without spaces"):
        resolve({}, {**env, "CACHEMESH_ZONE": "two words"})
    with pytest.raises(ConfigError, match="upload-queue"):
        resolve({"upload_queue": -1}, env)
    with pytest.raises(ConfigError, match="CACHEMESH_MAX_UPLOADS"):
        resolve({}, {**env, "CACHEMESH_MAX_UPLOADS": "many"})


def test_ready_timeout_reads_durations_and_defaults_to_half_an_hour():
    assert resolve({}, {"CACHEMESH_SECRET": SECRET}).ready_timeout == 1800.0
    assert resolve({}, {"CACHEMESH_SECRET": SECRET, "CACHEMESH_READY_TIMEOUT": "10m"}).ready_timeout == 600.0
    assert resolve({}, {"CACHEMESH_SECRET": SECRET, "CACHEMESH_READY_TIMEOUT": "off"}).ready_timeout == 0.0
    cases = {"90": 90.0, "90s": 90.0, "1.5s": 1.5, "10m": 600.0, "1h30m": 5400.0, "0": 0.0, "OFF": 0.0}
    assert {raw: parse_duration(raw) for raw in cases} == cases
    for bad in ("", "-5s", "10x", "m", "10m5", "5s10m junk"):
        with pytest.raises(ValueError, match="expected a duration"):
            parse_duration(bad)
    for seconds in (1.5, 45.0, 600.0, 5400.0, 3605.0):
        assert parse_duration(format_duration(seconds)) == seconds
    assert [format_duration(s) for s in (1.5, 45, 600, 5400)] == ["1.5s", "45s", "10m", "1h30m"]


def test_share_budget_and_watermarks_from_env():
    base = {"CACHEMESH_INSECURE": "1"}
    config = resolve(
        {},
        {**base, "CACHEMESH_SHARE": "all", "CACHEMESH_DISK_BUDGET": "20GB", "CACHEMESH_DISK_HIGH": "85%"},
    )
    assert config.share == "all" and config.disk_budget == 20 * 1000**3
    assert config.disk_high == 0.85 and round(config.disk_low, 2) == 0.70  # 15 points under by default
    assert resolve({}, base).share == "deps" and resolve({}, base).disk_budget == 0
    assert parse_size("500MiB") == 500 * 1024**2 and parse_size("1.5g") == 1_500_000_000
    assert parse_size("off") == 0 and parse_fraction("0.9") == 0.9


@pytest.mark.parametrize(
    "env",
    [
        {"CACHEMESH_SHARE": "some"},
        {"CACHEMESH_DISK_BUDGET": "lots"},
        {"CACHEMESH_DISK_BUDGET": "12XB"},
        {"CACHEMESH_DISK_HIGH": "120%"},
        {"CACHEMESH_DISK_HIGH": "70%", "CACHEMESH_DISK_LOW": "80%"},
        {"CACHEMESH_DISK_LOW": "70%"},
    ],
)
def test_bad_share_and_disk_settings_are_refused_with_the_reason(env):
    with pytest.raises(ConfigError) as info:
        resolve({}, {"CACHEMESH_INSECURE": "1", **env})
    assert "CACHEMESH_" in str(info.value) or "--disk-" in str(info.value)

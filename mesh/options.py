"""The operator's settings: each one defined once, as a flag, an env var and a parser, and the one
place where flags and env vars become a validated `Config`.

Defaults are not written here: help text renders each from the Config field it sets, in the form
an operator would type it, so the two cannot drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh.config import Config, ConfigError
from mesh.hostport import DEFAULT_PORT, parse_hostport
from mesh.values import (
    format_bool,
    format_duration,
    format_fraction,
    format_list,
    format_size,
    parse_bool,
    parse_duration,
    parse_fraction,
    parse_list,
    parse_size,
)

PRESETS: dict[str, Callable[..., Config]] = {"lan": Config.lan, "local": Config.local}
"""--preset: the timings a node runs on. Operator settings have the same defaults in each."""
DEFAULT_PRESET = "lan"

DISK_LOW_GAP = 0.15
"""With only --disk-high given, eviction stops this far (of the filesystem) under it."""


def _parse_hostport_text(raw: str) -> str:
    parse_hostport(raw)
    return raw.strip()


def _parse_seeds(raw: str) -> tuple[str, ...]:
    seeds = parse_list(raw)
    for seed in seeds:
        parse_hostport(seed, default_port=DEFAULT_PORT)
    return seeds


def _parse_tls(raw: str) -> str:
    value = raw.strip().lower()
    if value in ("on", "true", "1", "yes"):
        return "on"
    if value in ("off", "false", "0", "no"):
        return "off"
    raise ValueError(f"expected on or off, got {raw!r}")


def _parse_engine(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("docker", "off"):
        raise ValueError(f"expected docker or off, got {raw!r}")
    return value


def _parse_registry_listen(raw: str) -> str:
    if raw.strip().lower() == "off":
        return "off"
    return _parse_hostport_text(raw)


def _parse_timeout(raw: str) -> float:
    """A duration that must pass: 30s, 2m, or bare seconds (30); never 0 or off."""
    seconds = parse_duration(raw)
    if seconds <= 0:
        raise ValueError(f"expected a duration above 0, like 30s or 2m, got {raw!r}")
    return seconds


def _parse_zone(raw: str) -> str:
    zone = raw.strip()
    if len(zone) > 64 or any(c.isspace() for c in zone):
        raise ConfigError("--zone must be at most 64 characters, without spaces")
    return zone


def _parse_share(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("deps", "all"):
        raise ValueError(f"expected deps or all, got {raw!r}")
    return value


def default(field: str) -> Any:
    """What a Config field is when nothing sets it: the one definition, in mesh.config."""
    return getattr(PRESETS[DEFAULT_PRESET](), field)


def _show(value: Any) -> str:
    """A default in the form its flag takes, for values whose type says enough."""
    if isinstance(value, bool):
        return format_bool(value)
    if isinstance(value, tuple):
        return format_list(value)
    return str(value) if value != "" else "none"


@dataclass(frozen=True, slots=True)
class Option:
    """One operator setting: its flag, its env var, how to parse it and how to show its default."""

    field: str
    parse: Callable[[str], Any]
    help: str
    metavar: str = ""
    show: Callable[[Any], str] = _show
    unset: str = ""
    """What the field's empty default means, when it is worked out at start rather than fixed."""
    name: str = ""
    """The flag without its dashes, where it is not the field's name."""

    @property
    def flag(self) -> str:
        return "--" + (self.name or self.field.replace("_", "-"))

    @property
    def env(self) -> str:
        """Every flag's env var is its name in capitals: --max-uploads, CACHEMESH_MAX_UPLOADS."""
        return "CACHEMESH_" + self.flag.removeprefix("--").replace("-", "_").upper()

    @property
    def default(self) -> Any:
        return default(self.field)

    @property
    def help_text(self) -> str:
        """The help line, ending in the real default and the env var."""
        return f"{self.help} (default: {self.unset or self.show(self.default)}) [{self.env}]"


_HOSTPORT = "HOST:PORT"

OPTIONS: tuple[Option, ...] = (
    Option(
        "engine",
        _parse_engine,
        "docker: share the engine's images; off: the registry endpoint alone, no Docker socket",
        "docker|off",
    ),
    Option("docker_host", str, "Docker Engine endpoint, else $DOCKER_HOST", "URL"),
    Option("listen", _parse_hostport_text, "peer API address", _HOSTPORT),
    Option(
        "advertise",
        _parse_hostport_text,
        "address peers dial",
        _HOSTPORT,
        unset="derived from this host's addresses",
    ),
    Option("status_listen", _parse_hostport_text, "status page address", _HOSTPORT),
    Option("seeds", _parse_seeds, "comma-separated host:port of peers to join; DNS names allowed", "LIST"),
    Option("mdns", parse_bool, "find peers by multicast DNS"),
    Option(
        "gossip_datagrams",
        parse_bool,
        "send small gossip as sealed UDP datagrams on the peer port; the same on every node",
    ),
    Option("cluster", str, "cluster name", "NAME"),
    Option("insecure", parse_bool, "run without a cluster secret, for throwaway experiments only"),
    Option("data_dir", str, "state directory", "DIR"),
    Option("node_name", str, "name shown to people", "NAME"),
    Option(
        "include",
        parse_list,
        "only share tags matching these comma-separated globs",
        "GLOBS",
        unset="all tags",
    ),
    Option("exclude", parse_list, "never share tags matching these comma-separated globs", "GLOBS"),
    Option("tls", _parse_tls, "TLS on the peer API; off only with --insecure", "on|off"),
    Option(
        "tls_cert", str, "operator PKI: this node's certificate (PEM; with --tls-key and --tls-ca)", "PATH"
    ),
    Option("tls_key", str, "operator PKI: this node's key (PEM)", "PATH"),
    Option(
        "tls_ca",
        str,
        "operator PKI: CA certificate(s) peers must chain to (PEM), replacing the derived CA",
        "PATH",
    ),
    Option(
        "registry_listen",
        _parse_registry_listen,
        "local OCI registry endpoint for BuildKit and docker push/pull, or off",
        _HOSTPORT,
    ),
    Option("zone", _parse_zone, "this node's zone: same-zone sources preferred", "NAME"),
    Option(
        "max_transfers_out",
        int,
        "concurrent image uploads to peers; more wait in a queue",
        "N",
        name="max-uploads",
    ),
    Option("max_transfers_in", int, "concurrent image pulls from peers", "N", name="max-downloads"),
    Option(
        "upload_queue", int, "upload requests that may wait for a slot; past that, 503 + Retry-After", "N"
    ),
    Option(
        "transfer_idle_timeout",
        _parse_timeout,
        "time without bytes before a pull fails over to another holder, e.g. 30s",
        "DURATION",
        show=format_duration,
    ),
    Option(
        "registry_warm",
        parse_list,
        "registry repo:tag globs fetched whole before the node reports ready, e.g. cache/*",
        "GLOBS",
    ),
    Option(
        "registry_push_token_file",
        str,
        "file with the token a push to the local registry must present (docker login's password); "
        "pulls stay open",
        "FILE",
    ),
    Option(
        "trust_key",
        str,
        "private Ed25519 key (PEM) of a trusted publisher: sign this host's tag claims, "
        "believe only signed ones",
        "FILE",
    ),
    Option(
        "trust_pub",
        str,
        "public trust key(s) (PEM; two during a rotation, new first) that claims are verified with",
        "FILE",
    ),
    Option(
        "protect",
        parse_list,
        "tag and repo:tag globs only trusted (signed) claims may set, on every host, "
        "e.g. '*:main,cache/*:main'",
        "GLOBS",
    ),
    Option(
        "ready_timeout",
        parse_duration,
        "report ready this long after start even if the warm-up is not done, e.g. 10m; "
        "off waits for the whole warm-up",
        "DURATION",
        show=format_duration,
    ),
    Option(
        "share",
        _parse_share,
        "which builds to spread: deps (when a dependency step changed) or all",
        "deps|all",
    ),
    Option(
        "disk_budget",
        parse_size,
        "cap on bytes the mesh brings here (pulled images, registry blobs), e.g. 20GB",
        "SIZE",
        show=format_size,
    ),
    Option(
        "disk_high",
        parse_fraction,
        "evict mesh-brought content when the engine's or data dir's filesystem is fuller, e.g. 85%",
        "PERCENT",
        show=format_fraction,
    ),
    Option(
        "disk_low",
        parse_fraction,
        "watermark eviction stops below this, e.g. 70%",
        "PERCENT",
        unset=f"{DISK_LOW_GAP * 100:g} points under --disk-high",
    ),
)


def resolve(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    preset: str = DEFAULT_PRESET,
    secret_file: str | None = None,
) -> Config:
    """Build a Config from parsed flags (field -> value, None when not given) and the environment.

    Precedence: flag, then CACHEMESH_* env var, then the preset's default. The secret comes from
    --secret-file, else CACHEMESH_SECRET_FILE, else CACHEMESH_SECRET.
    """
    values: dict[str, Any] = {}
    for option in OPTIONS:
        given = flags.get(option.field)
        if given is not None:
            values[option.field] = given
            continue
        raw = env.get(option.env)
        if raw is None:
            continue
        try:
            values[option.field] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{option.env}={raw!r}: {exc}") from None
    if "docker_host" not in values and env.get("DOCKER_HOST"):
        values["docker_host"] = env["DOCKER_HOST"]
    values["secret"], values["previous_secret"] = _read_secrets(
        secret_file or env.get("CACHEMESH_SECRET_FILE"), env
    )
    if values.get("disk_high") and not values.get("disk_low"):
        values["disk_low"] = max(0.01, values["disk_high"] - DISK_LOW_GAP)
    preset_of = PRESETS.get(preset)
    if preset_of is None:
        raise ConfigError(f"--preset / CACHEMESH_PRESET {preset!r}: one of {', '.join(PRESETS)}")
    config = preset_of(**values)
    validate(config)
    return config


def _read_secrets(path: str | None, env: Mapping[str, str]) -> tuple[bytes, bytes]:
    """(secret, previous secret): a secret file holds one secret, or two during a rotation (one a
    line, the new one first). CACHEMESH_SECRET holds one."""
    if path:
        try:
            with open(path, "rb") as fh:
                lines = [line.strip() for line in fh.read().splitlines() if line.strip()]
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from None
        if not lines:
            raise ConfigError(f"secret file {path} is empty")
        if len(lines) > 2:
            raise ConfigError(
                f"secret file {path} has {len(lines)} lines: one secret, or two during a rotation (new first)"
            )
        return lines[0], lines[1] if len(lines) == 2 else b""
    return env.get("CACHEMESH_SECRET", "").strip().encode(), b""


def validate(config: Config) -> None:
    """Refuse settings that cannot work, with the reason."""
    if not config.secret and not config.insecure:
        raise ConfigError(
            "refusing to start without a cluster secret: set CACHEMESH_SECRET or --secret-file PATH "
            "(every node of the cluster needs the same one), or pass --insecure for a throwaway experiment"
        )
    if config.secret and len(config.secret) < 16:
        raise ConfigError("the cluster secret is shorter than 16 bytes; use e.g. `openssl rand -hex 32`")
    if config.previous_secret and len(config.previous_secret) < 16:
        raise ConfigError("the previous cluster secret (the secret file's second line) is under 16 bytes")
    if config.previous_secret and config.previous_secret == config.secret:
        raise ConfigError("the secret file lists the same secret twice")
    if config.tls not in ("on", "off"):
        raise ConfigError("--tls must be on or off")
    if config.engine not in ("docker", "off"):
        raise ConfigError("--engine must be docker or off")
    if config.engine == "off" and config.registry_listen == "off":
        raise ConfigError(
            "--engine off with --registry-listen off leaves nothing to share: an engine-less node "
            "serves the registry endpoint alone, so give it an address (the default is 127.0.0.1:7613)"
        )
    if config.tls == "off" and not config.insecure:
        raise ConfigError(
            "--tls off sends image layers in the clear; it is only allowed together with --insecure "
            "(throwaway experiments)"
        )
    operator_pki = [bool(config.tls_cert), bool(config.tls_key), bool(config.tls_ca)]
    if any(operator_pki) and not all(operator_pki):
        raise ConfigError("operator PKI needs all three of --tls-cert, --tls-key and --tls-ca")
    if any(operator_pki) and config.tls == "off":
        raise ConfigError("--tls-cert/--tls-key/--tls-ca given with --tls off")
    if not config.cluster or len(config.cluster) > 64:
        raise ConfigError("--cluster must be 1 to 64 characters")
    if config.timings.probe_timeout >= config.timings.probe_interval:
        raise ConfigError("probe_timeout must be shorter than probe_interval")
    if config.share not in ("deps", "all"):
        raise ConfigError("--share must be deps or all")
    if config.disk_budget < 0:
        raise ConfigError("--disk-budget cannot be negative")
    if config.disk_low and not config.disk_high:
        raise ConfigError("--disk-low needs --disk-high")
    if config.disk_high and config.disk_low >= config.disk_high:
        raise ConfigError(
            f"--disk-low ({config.disk_low:.0%}) must be below --disk-high ({config.disk_high:.0%})"
        )
    if config.max_transfers_in < 1 or config.max_transfers_out < 1:
        raise ConfigError("transfer concurrency must be at least 1")
    if config.ready_timeout < 0:
        raise ConfigError("--ready-timeout must be a duration (e.g. 10m) or off")
    if config.upload_queue < 0:
        raise ConfigError("--upload-queue must be 0 or more")
    if config.transfer_idle_timeout <= 0:
        raise ConfigError("--transfer-idle-timeout must be positive")
    if config.protect and not (config.trust_pub or config.trust_key):
        raise ConfigError(
            "--protect needs a trust key: protected names are set only by signed claims, so give every "
            "host --trust-pub FILE (and trusted publishers --trust-key FILE; `cachemesh keygen` makes them)"
        )
    for flag, path in (
        ("--trust-key", config.trust_key),
        ("--trust-pub", config.trust_pub),
        ("--registry-push-token-file", config.registry_push_token_file),
    ):
        if path and not os.path.isfile(path):
            raise ConfigError(f"{flag} {path}: no such file")

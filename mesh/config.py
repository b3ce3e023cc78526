"""One frozen configuration for a node: what the operator set, and the timings its preset picks.

The defaults are the LAN preset; `Config.local()` is the fast preset for tests and the demo. The
protocol core's own timings are a `Timings` (mesh.protocol.timings) inside it, so the core never
sees the rest. Below the class: the one place where flags and env vars map onto it.
"""

from __future__ import annotations

import dataclasses
import platform
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.hostport import DEFAULT_PORT, parse_hostport
from mesh.protocol.timings import Timings


class ConfigError(ValueError):
    """A setting is missing or malformed. The message says which flag or env var to fix."""


@dataclass(frozen=True, slots=True)
class Config:
    # --- operator settings ---------------------------------------------------------------
    docker_host: str = "unix:///var/run/docker.sock"
    """Engine API endpoint of the local Docker Engine (unix:// or tcp://)."""
    listen: str = "0.0.0.0:7611"
    """host:port for the peer API (gossip and transfers)."""
    advertise: str = ""
    """host:port peers dial. Empty: derived from the host's addresses (see mesh.discovery.addresses)."""
    status_listen: str = "127.0.0.1:7612"
    """host:port for the status page, JSON API and metrics. Localhost unless told otherwise."""
    seeds: tuple[str, ...] = ()
    """host:port of peers to join through; DNS names are re-resolved, so a seed can be a DNS round robin."""
    mdns: bool = True
    """Find peers on the local link by multicast DNS."""
    gossip_datagrams: bool = True
    """Send gossip that fits in sealed UDP datagrams on the peer port (the rest goes over TLS).
    Off: everything over the TLS peer API; set it the same on every node (docs/protocol.md)."""
    cluster: str = "default"
    """Cluster name. Nodes only talk within one cluster; the name is mixed into the signing key."""
    secret: bytes = field(default=b"", repr=False)
    """Cluster secret every request is signed with. Required unless `insecure`."""
    insecure: bool = False
    """Run without a secret (a fixed, publicly known key). For throwaway local experiments only."""
    data_dir: str = "/var/lib/cachemesh"
    """Directory for the node ID, its incarnation and its eviction list."""
    node_name: str = field(default_factory=platform.node)
    """Human-readable name shown on status pages."""
    include: tuple[str, ...] = ()
    """Only share tags matching one of these globs (empty: all tags)."""
    exclude: tuple[str, ...] = ()
    """Never share tags matching these globs (wins over include)."""
    previous_secret: bytes = field(default=b"", repr=False)
    """During a secret rotation, the old secret (second line of --secret-file): peers that still
    hold only it are admitted. Empty otherwise."""
    tls: str = "on"
    """TLS 1.3 with mutual authentication on the peer API: "on" (default) or "off" (--insecure only)."""
    tls_cert: str = ""
    """Operator PKI: this node's certificate (PEM). With tls_key and tls_ca, replaces the CA derived
    from the cluster secret."""
    tls_key: str = ""
    """Operator PKI: this node's private key (PEM)."""
    tls_ca: str = ""
    """Operator PKI: the CA certificate(s) peers' certificates must chain to (PEM)."""
    registry_listen: str = "127.0.0.1:7613"
    """host:port of the local OCI registry endpoint (BuildKit cache, docker push/pull); "off" for none.
    Loopback needs no credentials: it is this host's builds talking to their own node."""
    registry_warm: tuple[str, ...] = ()
    """Registry `repo:tag` globs a new node fetches whole before it reports ready, e.g. `cache/*`."""
    ready_timeout: float = 1800.0
    """Seconds after start when /readyz says ready even if the warm-up is not done, and says why
    (0: wait for the warm-up however long it takes). The cache only speeds builds up: past half an
    hour, a host that builds without part of it serves better than one an autoscaler keeps waiting for."""
    share: str = "deps"
    """Which local builds are announced: "deps" (only when a dependency step changed, i.e. the
    first layer new to the mesh comes before the image's last ADD/COPY; bases always) or "all"."""
    disk_budget: int = 0
    """Bytes the mesh may bring onto this host (pulled images, fetched or pushed registry blobs);
    least recently used content beyond it is evicted and not pulled. 0: no budget."""
    disk_high: float = 0.0
    """Fraction of the engine's or the data dir's filesystem above which mesh-brought content is
    evicted, oldest use first, until use is below disk_low. 0: off."""
    disk_low: float = 0.0
    """Where watermark eviction stops (fraction of the filesystem)."""
    disk_check_interval: float = 10.0
    """Seconds between checks of the budget and the watermarks."""

    # --- engine and transfers ----------------------------------------------------------
    rescan_interval: float = 30.0
    """Seconds between full rescans of the engine's images, a safety net behind engine events."""
    event_debounce: float = 0.2
    """Wait this long after an engine event for more before rescanning (a build emits bursts)."""
    max_transfers_in: int = 2
    """Concurrent pulls into the local engine (downloads). `docker load` is the bottleneck; more
    only thrash disk."""
    max_transfers_out: int = 4
    """Concurrent saves served to peers (uploads); more wait in the upload queue."""
    upload_queue: int = 32
    """Save requests that wait for an upload slot; past this a requester gets 503 + Retry-After."""
    transfer_queue_wait: float = 300.0
    """How long a pull waits in a source's upload queue for its stream to start."""
    zone: str = ""
    """This node's zone (rack, AZ, site): sources in the same zone are preferred. "" = none."""
    transfer_chunk_bytes: int = 1024 * 1024
    """Chunk size of transfer streams (1 MiB matched a direct pipe in measurements)."""
    transfer_idle_timeout: float = 10.0
    """A transfer with no bytes for this long is aborted and fails over to another holder (the
    peer died, stalled or was stopped). A save stream starts within a second on a healthy peer."""
    retry_backoff: float = 2.0
    """First retry delay after a failed transfer; doubles per failure up to retry_backoff_max."""
    retry_backoff_max: float = 120.0
    """Longest retry delay."""
    max_attempts: int = 5
    """After this many failures of one image, readiness stops waiting for it (it is still retried)."""

    # --- HTTP and auth -----------------------------------------------------------------
    auth_window: float = 120.0
    """Seconds of clock skew a signed request may carry. Requests outside the window get 401."""
    request_timeout: float = 10.0
    """Seconds a peer may take to send a whole gossip request body; slower clients get 408."""
    peer_timeout: float = 5.0
    """Seconds this node waits for a peer's gossip response before treating the message as lost."""
    join_grace: float = 5.0
    """With no seeds configured, a node that found no peer after this long is ready on its own."""

    # --- the protocol core ----------------------------------------------------------------
    timings: Timings = field(default_factory=Timings.lan)
    """Timings and message sizes of the protocol core (failure detection, gossip, anti-entropy)."""

    # ---------------------------------------------------------------------------------
    @classmethod
    def lan(cls, **overrides: Any) -> Config:
        """Defaults for a build fleet on one LAN or VPC: 1,000 nodes, a few ms RTT."""
        return cls(**overrides)

    @classmethod
    def local(cls, **overrides: Any) -> Config:
        """Fast timings for tests and the demo: one machine, sub-millisecond RTT."""
        fast: dict[str, Any] = dict(
            timings=Timings.local(),
            rescan_interval=5.0,
            event_debounce=0.1,
            retry_backoff=0.5,
            retry_backoff_max=5.0,
            join_grace=2.0,
            disk_check_interval=1.0,
        )
        fast.update(overrides)
        return cls(**fast)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    # The node enforces two of the core's numbers at its own edges (the peer API's body limit, the
    # pace of its seed lookups): the same numbers, read through here.
    @property
    def max_message_bytes(self) -> int:
        return self.timings.max_message_bytes

    @property
    def reconnect_interval(self) -> float:
        return self.timings.reconnect_interval

    @property
    def signing_secrets(self) -> tuple[bytes, ...]:
        """The secrets this node accepts, the one it signs with first (two during a rotation)."""
        return (self.signing_secret, self.previous_secret) if self.previous_secret else (self.signing_secret,)

    @property
    def signing_secret(self) -> bytes:
        if self.secret:
            return self.secret
        if self.insecure:
            return b"cachemesh-insecure-publicly-known-key"
        raise ConfigError(
            "no cluster secret: set CACHEMESH_SECRET or --secret-file PATH "
            "(or --insecure for a throwaway local experiment)"
        )


# --- flags and env vars: the one mapping -------------------------------------------------


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _parse_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _parse_hostport_text(raw: str) -> str:
    parse_hostport(raw)
    return raw.strip()


def _parse_tls(raw: str) -> str:
    value = raw.strip().lower()
    if value in ("on", "true", "1", "yes"):
        return "on"
    if value in ("off", "false", "0", "no"):
        return "off"
    raise ValueError(f"expected on or off, got {raw!r}")


def _parse_registry_listen(raw: str) -> str:
    if raw.strip().lower() == "off":
        return "off"
    return _parse_hostport_text(raw)


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(raw: str) -> float:
    """'90', '90s', '10m', '1h', '1h30m' -> seconds; 'off' or '0' -> 0 (none)."""
    text = raw.strip().lower()
    if text in ("off", "none", "0"):
        return 0.0
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smh])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"expected a duration like 90s, 10m or 1h (or off), got {raw!r}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """Seconds as parse_duration reads them back, in the largest whole units: 600 -> '10m'."""
    whole = round(seconds)
    if whole != seconds or whole < 60:
        return f"{seconds:g}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if n)


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


_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip


def parse_size(raw: str) -> int:
    """'20GB', '500MiB', '1.5g', '1048576' -> bytes; '0' or 'off' -> 0 (no budget)."""
    text = raw.strip().lower().replace(" ", "")
    if text in ("off", "none", "0"):
        return 0
    number = text.rstrip("kmgtib")
    unit = text[len(number) :]
    if unit not in _UNITS or not number:
        raise ValueError(f"expected a size such as 20GB or 500MiB, got {raw!r}")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"expected a size such as 20GB or 500MiB, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"a size cannot be negative: {raw!r}")
    return int(value * _UNITS[unit])


def parse_fraction(raw: str) -> float:
    """'85%' or '0.85' -> 0.85; 'off' -> 0."""
    text = raw.strip().lower()
    if text in ("off", "none", "0", "0%"):
        return 0.0
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"expected a percentage such as 85%, got {raw!r}") from None
    if not 0 < value < 1:
        raise ValueError(f"expected a percentage between 0% and 100%, got {raw!r}")
    return value


def _parse_seeds(raw: str) -> tuple[str, ...]:
    seeds = _parse_list(raw)
    for seed in seeds:
        parse_hostport(seed, default_port=DEFAULT_PORT)
    return seeds


@dataclass(frozen=True, slots=True)
class Option:
    """One operator setting: its flag, its env var, and how to parse it."""

    field: str
    flag: str
    env: str
    parse: Callable[[str], Any]
    help: str
    metavar: str = ""


OPTIONS: tuple[Option, ...] = (
    Option(
        "docker_host",
        "--docker-host",
        "CACHEMESH_DOCKER_HOST",
        str,
        "Docker Engine endpoint (else $DOCKER_HOST, else unix:///var/run/docker.sock)",
        "URL",
    ),
    Option(
        "listen",
        "--listen",
        "CACHEMESH_LISTEN",
        _parse_hostport_text,
        "peer API address (default 0.0.0.0:7611)",
        "HOST:PORT",
    ),
    Option(
        "advertise",
        "--advertise",
        "CACHEMESH_ADVERTISE",
        _parse_hostport_text,
        "address peers dial (default: derived from this host's addresses)",
        "HOST:PORT",
    ),
    Option(
        "status_listen",
        "--status-listen",
        "CACHEMESH_STATUS_LISTEN",
        _parse_hostport_text,
        "status page address (default 127.0.0.1:7612)",
        "HOST:PORT",
    ),
    Option(
        "seeds",
        "--seeds",
        "CACHEMESH_SEEDS",
        _parse_seeds,
        "comma-separated host:port of peers to join; DNS names allowed",
        "LIST",
    ),
    Option("mdns", "--mdns", "CACHEMESH_MDNS", _parse_bool, "find peers by multicast DNS (default on)"),
    Option(
        "gossip_datagrams",
        "--gossip-datagrams",
        "CACHEMESH_GOSSIP_DATAGRAMS",
        _parse_bool,
        "send small gossip as sealed UDP datagrams on the peer port (default on; same on every node)",
    ),
    Option("cluster", "--cluster", "CACHEMESH_CLUSTER", str, "cluster name (default 'default')", "NAME"),
    Option(
        "insecure",
        "--insecure",
        "CACHEMESH_INSECURE",
        _parse_bool,
        "run without a cluster secret (throwaway experiments only)",
    ),
    Option(
        "data_dir",
        "--data-dir",
        "CACHEMESH_DATA_DIR",
        str,
        "state directory (default /var/lib/cachemesh)",
        "DIR",
    ),
    Option(
        "node_name",
        "--node-name",
        "CACHEMESH_NODE_NAME",
        str,
        "name shown to people (default: hostname)",
        "NAME",
    ),
    Option(
        "include",
        "--include",
        "CACHEMESH_INCLUDE",
        _parse_list,
        "only share tags matching these comma-separated globs",
        "GLOBS",
    ),
    Option(
        "exclude",
        "--exclude",
        "CACHEMESH_EXCLUDE",
        _parse_list,
        "never share tags matching these comma-separated globs",
        "GLOBS",
    ),
    Option(
        "tls",
        "--tls",
        "CACHEMESH_TLS",
        _parse_tls,
        "TLS on the peer API: on (default) or off (only with --insecure)",
        "on|off",
    ),
    Option(
        "tls_cert",
        "--tls-cert",
        "CACHEMESH_TLS_CERT",
        str,
        "operator PKI: this node's certificate (PEM; with --tls-key and --tls-ca)",
        "PATH",
    ),
    Option("tls_key", "--tls-key", "CACHEMESH_TLS_KEY", str, "operator PKI: this node's key (PEM)", "PATH"),
    Option(
        "tls_ca",
        "--tls-ca",
        "CACHEMESH_TLS_CA",
        str,
        "operator PKI: CA certificate(s) peers must chain to (PEM), replacing the derived CA",
        "PATH",
    ),
    Option(
        "registry_listen",
        "--registry-listen",
        "CACHEMESH_REGISTRY_LISTEN",
        _parse_registry_listen,
        "local OCI registry endpoint for BuildKit and docker push/pull (default 127.0.0.1:7613; 'off')",
        "HOST:PORT",
    ),
    Option(
        "zone",
        "--zone",
        "CACHEMESH_ZONE",
        _parse_zone,
        "this node's zone: same-zone sources preferred",
        "NAME",
    ),
    Option(
        "max_transfers_out",
        "--max-uploads",
        "CACHEMESH_MAX_UPLOADS",
        int,
        "concurrent image uploads to peers (default 4); more wait in a queue",
        "N",
    ),
    Option(
        "max_transfers_in",
        "--max-downloads",
        "CACHEMESH_MAX_DOWNLOADS",
        int,
        "concurrent image pulls from peers (default 2)",
        "N",
    ),
    Option(
        "upload_queue",
        "--upload-queue",
        "CACHEMESH_UPLOAD_QUEUE",
        int,
        "upload requests that may wait for a slot (default 32); past that, 503 + Retry-After",
        "N",
    ),
    Option(
        "transfer_idle_timeout",
        "--transfer-idle-timeout",
        "CACHEMESH_TRANSFER_IDLE_TIMEOUT",
        float,
        "seconds without bytes before a pull fails over to another holder (default 10)",
        "SECONDS",
    ),
    Option(
        "registry_warm",
        "--registry-warm",
        "CACHEMESH_REGISTRY_WARM",
        _parse_list,
        "registry repo:tag globs fetched whole before the node reports ready, e.g. cache/*",
        "GLOBS",
    ),
    Option(
        "ready_timeout",
        "--ready-timeout",
        "CACHEMESH_READY_TIMEOUT",
        parse_duration,
        "report ready this long after start even if the warm-up is not done, e.g. 10m "
        "(default 30m; off waits for the whole warm-up)",
        "DURATION",
    ),
    Option(
        "share",
        "--share",
        "CACHEMESH_SHARE",
        _parse_share,
        "which builds to spread: deps (when a dependency step changed; default) or all",
        "deps|all",
    ),
    Option(
        "disk_budget",
        "--disk-budget",
        "CACHEMESH_DISK_BUDGET",
        parse_size,
        "cap on bytes the mesh brings here (pulled images, registry blobs), e.g. 20GB (default: none)",
        "SIZE",
    ),
    Option(
        "disk_high",
        "--disk-high",
        "CACHEMESH_DISK_HIGH",
        parse_fraction,
        "evict mesh-brought content when the engine's or data dir's filesystem is fuller, e.g. 85%",
        "PERCENT",
    ),
    Option(
        "disk_low",
        "--disk-low",
        "CACHEMESH_DISK_LOW",
        parse_fraction,
        "watermark eviction stops below this, e.g. 70% (default: 15 points under --disk-high)",
        "PERCENT",
    ),
)


def resolve(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    preset: str = "lan",
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
        values["disk_low"] = max(0.01, values["disk_high"] - 0.15)
    config = Config.local(**values) if preset == "local" else Config.lan(**values)
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

"""The Docker Engines the lab runs, and how to run each (docs/engines.md has the facts behind them).

- `20.10`: Debian 12's docker.io, installed normally; graph driver (overlay2); CLI 20.10, which
  builds with BuildKit under DOCKER_BUILDKIT=1 without buildx.
- `26.1`: Debian 13's docker.io, docker-cli and docker-buildx, unpacked (never installed) by
  scripts/engines.sh; it runs on Debian 12 next to Debian 12's containerd and runc.
- `28.5`: Debian unstable's docker.io, docker-cli, containerd and docker-buildx, unpacked the same
  way; Debian 12's runc (unstable's needs a newer glibc).

Each of 26.1 and 28.5 runs with either image store: overlay2 (graph driver, what upgraded hosts
keep) or the containerd image store (`containerd-snapshotter`, the default of fresh installs since
Engine 29).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENGINES_DIR = Path(os.environ.get("CACHEMESH_ENGINES", "/var/cache/cachemesh/engines"))


@dataclass(frozen=True)
class EngineKind:
    name: str
    """How tests and logs name it: '20.10', '26.1-overlay2', '28.5-containerd', ..."""
    suite: str | None
    """The Debian suite whose packages scripts/engines.sh unpacked, or None for the system's."""
    containerd_store: bool = False

    @property
    def version(self) -> str:
        return self.name.split("-")[0]

    @property
    def root(self) -> Path | None:
        return ENGINES_DIR / self.suite / "root" if self.suite else None

    @property
    def dockerd(self) -> str:
        return str(self.root / "usr/sbin/dockerd") if self.root else "dockerd"

    @property
    def cli_path(self) -> str:
        return str(self.root / "usr/bin/docker") if self.root else "/usr/bin/docker"

    @property
    def buildx(self) -> Path | None:
        """The buildx plugin that comes with this engine's CLI; None for 20.10 (it has none)."""
        return self.root / "usr/libexec/docker/cli-plugins/docker-buildx" if self.root else None

    def path(self) -> str:
        """PATH for the daemon: this engine's binaries first (its containerd and shim, if it
        brings them), then the system's (Debian 12's runc, and containerd for 26.1)."""
        system = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        if not self.root:
            return system
        return f"{self.root}/usr/sbin:{self.root}/usr/bin:{system}"

    def missing(self) -> str | None:
        """None if this engine can run here, else why not."""
        if self.root and not Path(self.dockerd).exists():
            return f"Engine {self.version} is not unpacked in {self.root} (scripts/engines.sh does it)"
        return None


KINDS = {
    kind.name: kind
    for kind in (
        EngineKind("20.10", None),
        EngineKind("26.1-overlay2", "trixie"),
        EngineKind("26.1-containerd", "trixie", containerd_store=True),
        EngineKind("28.5-overlay2", "sid"),
        EngineKind("28.5-containerd", "sid", containerd_store=True),
    )
}
DEFAULT = KINDS["20.10"]

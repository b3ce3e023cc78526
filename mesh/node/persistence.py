"""What a node keeps across restarts, in its data directory.

- `node-id`: a random ID, so a restarted node is the same member to its peers.
- `incarnation`: bumped at every start, so a node that comes back outranks what peers remember
  of its previous life (suspect or dead at the old incarnation).
- `evicted.json`: images the operator removed here, or the node evicted for space, so the mesh does
  not pull them straight back.
- `brought.json`: images the mesh brought here (pulled), with when each was last used: what a
  disk budget may evict, oldest use first.
- `tags.json`: every local tag with its image and that image's creation at the last scan, and the
  tag sets (mesh.protocol.tagsets): a rollback made while the node was down is still seen, and a
  rollback keeps its time across restarts.
Writes are atomic (write, fsync, rename): a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from mesh.protocol.tagsets import TagSet


class StateError(Exception):
    pass


STATUS_ADDR_FILE = "status-addr"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class NodeState:
    def __init__(self, data_dir: str) -> None:
        self.dir = Path(data_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create data dir {data_dir}: {exc.strerror} (set --data-dir)") from None
        if not os.access(self.dir, os.W_OK):
            raise StateError(f"data dir {data_dir} is not writable (set --data-dir)")

    def save_status_addr(self, addr: str) -> None:
        """Where the status page listens, for `cachemesh healthcheck`, `status`, `wait-ready` and
        `doctor` run on this host without --status-addr (mesh.cli reads it back)."""
        _write_atomic(self.dir / STATUS_ADDR_FILE, addr + "\n")

    def node_id(self) -> str:
        path = self.dir / "node-id"
        if path.exists():
            value = path.read_text().strip()
            if value:
                return value
        value = secrets.token_hex(8)
        _write_atomic(path, value + "\n")
        return value

    def next_incarnation(self) -> int:
        path = self.dir / "incarnation"
        try:
            last = int(path.read_text().strip())
        except (OSError, ValueError):
            last = 0
        value = last + 1
        _write_atomic(path, f"{value}\n")
        return value

    def save_incarnation(self, value: int) -> None:
        _write_atomic(self.dir / "incarnation", f"{value}\n")

    def evicted(self) -> dict[str, str]:
        try:
            data = json.loads((self.dir / "evicted.json").read_text())
            return {str(k): str(v) for k, v in data.items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def save_evicted(self, evicted: dict[str, str]) -> None:
        _write_atomic(self.dir / "evicted.json", json.dumps(evicted, indent=1, sort_keys=True))

    def brought(self) -> dict[str, float]:
        try:
            data = json.loads((self.dir / "brought.json").read_text())
            return {str(k): float(v) for k, v in data.items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    def save_brought(self, brought: dict[str, float]) -> None:
        _write_atomic(self.dir / "brought.json", json.dumps(brought, indent=1, sort_keys=True))

    def tags(self) -> tuple[dict[str, tuple[str, int]], dict[str, TagSet]]:
        """(tag -> (image, created) at the last scan, tag -> its tag set); empty if unreadable."""
        try:
            data = json.loads((self.dir / "tags.json").read_text())
            scanned = {str(t): (str(i), int(c)) for t, (i, c) in data["scanned"].items()}
            sets = {str(t): TagSet(str(i), int(at)) for t, (i, at) in data["sets"].items()}
            return scanned, sets
        except (OSError, ValueError, AttributeError, TypeError, KeyError):
            return {}, {}

    def save_tags(self, scanned: dict[str, tuple[str, int]], sets: dict[str, TagSet]) -> None:
        data = {"scanned": scanned, "sets": {t: [s.image, s.at] for t, s in sets.items()}}
        _write_atomic(self.dir / "tags.json", json.dumps(data, indent=1, sort_keys=True))

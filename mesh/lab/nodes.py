"""cachemesh node processes, started the way an operator would: `python -m mesh run` with env vars.

With `lab=ADDR` the process is a lab node instead (`python -m mesh.lab.memnode`: the same node on
the in-memory engine), and `build(tag)` makes an image on it through the lab control server at ADDR.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mesh.lab.poll import wait_until
from mesh.ui.status_doc import StatusDoc

SECRET = "test-cluster-secret-0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports free on `host` now, for TCP and UDP (a node listens on both), for processes that must
    be told their port up front. They are chosen below the kernel's ephemeral range: a port the
    kernel handed out by binding to 0 could be given again to any outgoing connection (a node's
    own, or another test's) before the process that was told it binds it. Other users of the
    machine are never assumed away: each port is checked, never reserved."""
    first_ephemeral = _ephemeral_start()
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randrange(10_000, first_ephemeral)
        if port not in chosen and _bindable(host, port):
            chosen.append(port)
    return chosen


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(host: str, port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def data_dir(workdir: Path, name: str) -> Path:
    """Where the node process `name` started in `workdir` keeps its data."""
    return workdir / f"{name}-data"


class NodeProcess:
    def __init__(
        self,
        name: str,
        workdir: Path,
        *,
        env: dict[str, str],
        prefix: list[str] | None = None,
        status: str,
        lab: str | None = None,
        code: Path = REPO,
    ) -> None:
        """`code`: the directory holding the `mesh` package this node runs (an older commit's, for
        a soak's rolling upgrade); the dependencies are this Python's."""
        self.name = name
        self.lab = lab
        self.workdir = workdir
        self.status = status
        self.log = workdir / f"{name}.log"
        self.data_dir = data_dir(workdir, name)
        workdir.mkdir(parents=True, exist_ok=True)
        full_env = {
            **os.environ,
            "CACHEMESH_SECRET": SECRET,
            "CACHEMESH_NODE_NAME": name,
            "CACHEMESH_MDNS": "false",
            "CACHEMESH_DATA_DIR": str(self.data_dir),
            "CACHEMESH_STATUS_LISTEN": status,
            # Many nodes share one loopback in tests: a free port unless the test names one.
            "CACHEMESH_REGISTRY_LISTEN": "127.0.0.1:0",
            "CACHEMESH_PRESET": "local",
            "PYTHONPATH": str(code),
            "CACHEMESH_LOG_LEVEL": "info",
            **env,
            **({"CACHEMESH_LAB_LISTEN": lab} if lab else {}),
        }
        module = "mesh.lab.memnode" if lab else "mesh"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*(prefix or []), sys.executable, "-m", module, *([] if lab else ["run"])],
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=str(code),
            )

    def get(self, path: str, timeout: float = 3.0) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://{self.status}{path}", timeout=timeout) as r:
                body = r.read()
                return r.status, json.loads(
                    body
                ) if r.headers.get_content_type() == "application/json" else body
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def build(self, tag: str, size: int = 0) -> str:
        """A new image tagged `tag` on this lab node's in-memory engine (with a layer of `size`
        random bytes); returns its ID."""
        assert self.lab, "only a lab node (lab=ADDR) can build"
        request = urllib.request.Request(f"http://{self.lab}/lab/build?tag={tag}&bytes={size}", method="POST")
        with urllib.request.urlopen(request, timeout=5) as r:
            return str(json.loads(r.read())["id"])

    def api(self) -> StatusDoc:
        return self.get("/api/status")[1]  # type: ignore[no-any-return]

    def wait_up(self, timeout: float = 30.0) -> NodeProcess:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.name} exited: {self.log.read_text()[-3000:]}")
            return self.get("/healthz")[0] == 200

        wait_until(up, timeout, 0.1, what=f"node {self.name} up")
        return self

    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:]) if self.log.exists() else ""

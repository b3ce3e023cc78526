"""cachemesh node processes, started the way an operator would: `python -m mesh run` with env vars."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mesh.lab.poll import wait_until

SECRET = "test-cluster-secret-0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]


class NodeProcess:
    def __init__(
        self, name: str, workdir: Path, *, env: dict[str, str], prefix: list[str] | None = None, status: str
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.status = status
        self.log = workdir / f"{name}.log"
        workdir.mkdir(parents=True, exist_ok=True)
        full_env = {
            **os.environ,
            "CACHEMESH_SECRET": SECRET,
            "CACHEMESH_NODE_NAME": name,
            "CACHEMESH_MDNS": "false",
            "CACHEMESH_DATA_DIR": str(workdir / f"{name}-data"),
            "CACHEMESH_STATUS_LISTEN": status,
            "CACHEMESH_PRESET": "local",
            "PYTHONPATH": str(REPO),
            "CACHEMESH_LOG_LEVEL": "info",
            **env,
        }
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*(prefix or []), sys.executable, "-m", "mesh", "run"],
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=str(REPO),
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

    def api(self) -> dict[str, Any]:
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

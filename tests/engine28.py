"""Engine 28.5 (Debian unstable's dockerd, containerd 2.1, CLI and buildx 0.29, unpacked by
scripts/engines.sh) on the containerd image store, for the registry tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from mesh.lab.dockerd import busybox_rootfs
from mesh.lab.poll import wait_until

ENGINES = Path(os.environ.get("CACHEMESH_ENGINES", "/var/cache/cachemesh/engines"))
ROOT = ENGINES / "sid" / "root"


def engine28_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for path in (
        "usr/sbin/dockerd",
        "usr/bin/containerd",
        "usr/bin/docker",
        "usr/libexec/docker/cli-plugins/docker-buildx",
    ):
        if not (ROOT / path).exists():
            return f"{ROOT / path} missing (scripts/engines.sh unpacks it)"
    return None


class Engine28:
    def __init__(self, root: Path, netns: str | None = None, name: str = "engine") -> None:
        self.root = root
        self.netns = netns
        self.name = name
        self.sock = root / "docker.sock"
        self.host = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "dockerd.log"
        self.config_dir = root / "cli"

    def _env(self) -> dict[str, str]:
        path = f"{ROOT}/usr/sbin:{ROOT}/usr/bin:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        env = {**os.environ, "PATH": path, "DOCKER_HOST": self.host, "DOCKER_CONFIG": str(self.config_dir)}
        env.pop("DOCKER_CONTEXT", None)
        return env

    def start(self, timeout: float = 60.0) -> Engine28:
        self.root.mkdir(parents=True, exist_ok=True)
        plugins = self.config_dir / "cli-plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        link = plugins / "docker-buildx"
        if not link.exists():
            link.symlink_to(ROOT / "usr/libexec/docker/cli-plugins/docker-buildx")
        config = self.root / "daemon.json"
        config.write_text(json.dumps({"features": {"containerd-snapshotter": True}}))
        cmd = [
            str(ROOT / "usr/sbin/dockerd"),
            "--config-file", str(config),
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "-H", self.host,
            "--pidfile", str(self.root / "pid"),
            "--bridge=none", "--iptables=false", "--ip6tables=false",
        ]  # fmt: skip
        if self.netns:
            cmd = ["nsenter", f"--net=/var/run/netns/{self.netns}", *cmd]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self._env()
            )
        wait_until(self._answers, timeout, 0.2, what=f"dockerd 28 {self.name} answering")
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"dockerd {self.name} exited: {self.log.read_text()[-2000:]}")
        return self.sock.exists() and self.cli("version", check=False).returncode == 0

    def cli(
        self, *args: str, check: bool = True, input: bytes | None = None, timeout: float = 600.0
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(ROOT / "usr/bin/docker"), *args],
            env=self._env(),
            input=input.decode("latin-1") if input is not None else None,
            capture_output=True,
            text=True,
            encoding="latin-1",
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {result.stdout[-3000:]}{result.stderr[-3000:]}")
        return result

    def import_busybox(self, tag: str) -> None:
        self.cli("import", "-", tag, input=busybox_rootfs())

    def build(self, context: Path, *args: str, tag: str = "app:1") -> str:
        """`docker buildx build` with the docker driver; returns the plain progress output."""
        result = self.cli(
            "buildx", "build", "--progress", "plain", "--network", "none", "-t", tag, *args, str(context)
        )
        return result.stdout + result.stderr

    def destroy(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        subprocess.run(["umount", "-R", str(self.root / "exec")], capture_output=True)
        subprocess.run(["umount", "-R", str(self.root / "data")], capture_output=True)
        deadline = time.monotonic() + 10
        while self.root.exists() and time.monotonic() < deadline:
            shutil.rmtree(self.root, ignore_errors=True)

"""A private Docker Engine per simulated host: its own data root, exec root and socket, no bridge and
no iptables, optionally inside a network namespace. Which engine and store: mesh.lab.engines
(docs/engines.md, docs/testing.md)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

from mesh.lab.engines import DEFAULT, EngineKind
from mesh.lab.poll import wait_until

DOCKER_CLI = "/usr/bin/docker"  # Debian's 20.10 CLI: BuildKit under DOCKER_BUILDKIT=1 without buildx


def available() -> str | None:
    """None if real engines can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root (private dockerds and network namespaces)"
    for tool in ("dockerd", DOCKER_CLI, "nsenter", "ip"):
        if not shutil.which(tool):
            return f"{tool} not installed (scripts/test installs docker.io and iproute2)"
    return None


class Dockerd:
    def __init__(
        self, root: Path, netns: str | None = None, name: str = "engine", kind: EngineKind = DEFAULT
    ) -> None:
        self.root = root
        self.kind = kind
        self.netns = netns
        self.name = name
        self.sock = root / "docker.sock"
        self.host = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "dockerd.log"

    def start(self, timeout: float = 60.0) -> Dockerd:
        self.root.mkdir(parents=True, exist_ok=True)
        why_not = self.kind.missing()
        if why_not:
            raise RuntimeError(why_not)
        config = self.root / "daemon.json"
        config.write_text(json.dumps({"features": {"containerd-snapshotter": self.kind.containerd_store}}))
        cmd = [
            self.kind.dockerd,
            "--config-file",
            str(config),
            "--data-root",
            str(self.root / "data"),
            "--exec-root",
            str(self.root / "exec"),
            "-H",
            self.host,
            "--pidfile",
            str(self.root / "pid"),
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false" if _supports_ip6tables(self.kind.dockerd) else "--ipv6=false",
        ]
        if self.netns:
            # nsenter, not `ip netns exec`: the latter remounts /sys and dockerd loses its cgroups.
            cmd = ["nsenter", f"--net=/var/run/netns/{self.netns}", *cmd]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PATH": self.kind.path()},
            )
        wait_until(self._answers, timeout, 0.1, what=f"dockerd {self.name} answering")
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"dockerd {self.name} exited: {self.log.read_text()[-2000:]}")
        return self.sock.exists() and self.cli("version", check=False).returncode == 0

    def cli(
        self,
        *args: str,
        check: bool = True,
        env: dict[str, str] | None = None,
        input: bytes | None = None,
        timeout: float = 300.0,
        prefix: list[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`prefix`: run the CLI through it, e.g. the host's nsenter, where the client itself must
        reach the host's loopback (BuildKit's session fetches registry tokens in the CLI)."""
        full_env = {
            **os.environ,
            "DOCKER_HOST": self.host,
            "DOCKER_CONFIG": str(self.cli_config()),
            **(env or {}),
        }
        full_env.pop("DOCKER_CONTEXT", None)
        result = subprocess.run(
            [*(prefix or []), self.kind.cli_path, *args],
            env=full_env,
            input=input.decode("latin-1") if input is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            encoding="latin-1",
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"docker {' '.join(args)} failed: {result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
        return result

    def cli_config(self) -> Path:
        """A DOCKER_CONFIG of this engine's own, whose cli-plugins holds the buildx that came with
        its CLI (the 26.1 and 28.5 CLIs build with buildx by default)."""
        config = self.root / "cli-config"
        plugins = config / "cli-plugins"
        if self.kind.buildx and not (plugins / "docker-buildx").exists():
            plugins.mkdir(parents=True, exist_ok=True)
            (plugins / "docker-buildx").symlink_to(self.kind.buildx)
        config.mkdir(parents=True, exist_ok=True)
        return config

    def image_id(self, ref: str) -> str | None:
        result = self.cli("image", "inspect", "--format", "{{.Id}}", ref, check=False)
        return result.stdout.strip() if result.returncode == 0 else None

    def tags(self) -> set[str]:
        out = self.cli("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        return {t for t in out if "<none>" not in t}

    def image_ids(self) -> set[str]:
        return set(self.cli("images", "-a", "-q", "--no-trunc").stdout.split())

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        unmount_under(self.root)
        deadline = time.monotonic() + 10
        while self.root.exists() and time.monotonic() < deadline:
            shutil.rmtree(self.root, ignore_errors=True)
            if self.root.exists():
                time.sleep(0.2)


def unmount_under(root: Path) -> None:
    """Unmount everything mounted at or below `root`, deepest first: what a stopped engine leaves
    (its exec root's netns bind mount, a data root it bind-mounted onto itself). Unmounting only
    the exec root itself missed the mounts below it, and the directories could never be removed."""
    prefix = f"{root}/"
    points = [
        line.split()[1].replace("\\040", " ")
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if len(line.split()) > 1
    ]
    for point in sorted((p for p in points if p == str(root) or p.startswith(prefix)), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)


def _dockerds_under(root: Path) -> list[tuple[int, int, str]]:
    """(pid, parent pid, data root) of every dockerd whose data root lies below `root`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            data_root = args[args.index(b"--data-root") + 1].decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not an engine
        if args[0].endswith(b"dockerd") and data_root.startswith(f"{root}/"):
            found.append((int(proc.name), ppid, data_root))
    return found


def reap_engines(root: Path, *, owner: int | None = None) -> list[int]:
    """Stop the private engines below `root` that nobody else will stop: orphans (their test
    process died before its teardown, so init adopted them) and, given `owner`, those that process
    started and left running. Then unmount what stopped engines left below `root`. Returns the
    PIDs stopped. Engines of another live test session are left alone."""
    doomed = [pid for pid, ppid, _ in _dockerds_under(root) if ppid in (1, owner)]

    def gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() for pid in doomed)

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        with contextlib.suppress(AssertionError):
            wait_until(gone, 20, 0.1, what="leftover engines to stop")
            break
    running = [data_root for _, _, data_root in _dockerds_under(root)]
    for engine in root.glob("*/engine-*"):
        if not any(data_root.startswith(f"{engine}/") for data_root in running):
            unmount_under(engine)
    return doomed


_IP6: dict[str, bool] = {}


def _supports_ip6tables(dockerd: str) -> bool:
    if dockerd not in _IP6:
        help_text = subprocess.run([dockerd, "--help"], capture_output=True, text=True).stdout
        _IP6[dockerd] = "--ip6tables" in help_text
    return _IP6[dockerd]


def busybox_rootfs(payload: int = 0) -> bytes:
    """A tiny root filesystem: busybox-static and its applet links (no registry here), plus
    `payload` random (incompressible) bytes in /payload for a base of a chosen size."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "tmp", "etc"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755 if directory != "tmp" else 0o1777
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in ("sh", "ls", "cat", "echo", "mkdir", "touch", "sleep", "true", "head", "dd", "rm"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        if payload:
            info = tarfile.TarInfo("payload")
            info.size = payload
            tar.addfile(info, io.BytesIO(os.urandom(payload)))
    return buffer.getvalue()


def import_base(engine: Dockerd, tag: str = "base:1", payload: int = 0) -> str:
    engine.cli("import", "-", tag, input=busybox_rootfs(payload))
    image = engine.image_id(tag)
    assert image
    return image

#!/usr/bin/env python3
"""Mesh transfer time against a direct `docker save | docker load` pipe, in the same run.

Two private dockerds on this machine (root needed). An image of --mb megabytes of random data is
built on engine A. Each round:
  direct: `docker -H A save CHAIN | docker -H B load`, timed, then the images are removed from B;
  mesh:   two cachemesh node processes (A, B) on loopback; B pulls the image from A, timed from
          the moment B's node starts pulling until the image is tagged on B; then removed again.
Prints the median of each, their ratio (mesh / direct), and the receiving node's peak RSS, which
shows the stream is not held in memory.

    sudo .venv/bin/python scripts/bench_transfer.py --mb 500 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesh.lab.dockerd import DOCKER_CLI, Dockerd, available, import_base
from mesh.lab.nodes import NodeProcess
from mesh.lab.poll import wait_until


def chain_ids(engine: Dockerd, ref: str) -> list[str]:
    return [i for i in engine.cli("history", "-q", "--no-trunc", ref).stdout.split() if i != "<missing>"]


def remove_all(engine: Dockerd, ref: str, ids: list[str]) -> None:
    engine.cli("rmi", "-f", ref, check=False)
    for image in ids:
        engine.cli("rmi", "-f", image, check=False)
    engine.cli("rmi", "-f", "base:1", check=False)


def direct(a: Dockerd, b: Dockerd, ids: list[str]) -> float:
    started = time.monotonic()
    save = subprocess.Popen([DOCKER_CLI, "-H", a.host, "save", *ids], stdout=subprocess.PIPE)
    load = subprocess.run([DOCKER_CLI, "-H", b.host, "load"], stdin=save.stdout, capture_output=True)
    save.wait()
    elapsed = time.monotonic() - started
    if save.returncode or load.returncode:
        raise RuntimeError(f"direct pipe failed: {load.stderr!r}")
    return elapsed


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def mesh(a: Dockerd, b: Dockerd, image: str, workdir: Path, round_no: int) -> tuple[float, float]:
    env_a = {"CACHEMESH_DOCKER_HOST": a.host, "CACHEMESH_LISTEN": "127.0.0.1:17711"}
    node_a = NodeProcess(f"bench-a{round_no}", workdir, env=env_a, status="127.0.0.1:17712").wait_up()
    env_b = {
        "CACHEMESH_DOCKER_HOST": b.host,
        "CACHEMESH_LISTEN": "127.0.0.1:17721",
        "CACHEMESH_SEEDS": "127.0.0.1:17711",
    }
    node_b = NodeProcess(f"bench-b{round_no}", workdir, env=env_b, status="127.0.0.1:17722").wait_up()
    try:

        def done() -> dict[str, object] | None:
            for t in node_b.api()["recent_transfers"]:
                if t["image"] == image and t["outcome"] == "ok":
                    return t
            return None

        transfer = wait_until(done, 600, 0.2, what="mesh transfer")
        return float(transfer["finished"]) - float(transfer["started"]), peak_rss_mb(node_b.proc.pid)
    finally:
        node_b.stop()
        node_a.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500, help="image size in MB of random data")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if reason := available():
        print(f"bench: {reason}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="cachemesh-bench-"))
    a = Dockerd(workdir / "a", name="a").start()
    b = Dockerd(workdir / "b", name="b").start()
    try:
        import_base(a, "base:1")
        layers = 4
        per_layer = max(1, args.mb // layers)
        dockerfile = "FROM base:1\n" + "".join(
            f"RUN dd if=/dev/urandom of=/data{i} bs=1M count={per_layer} 2>/dev/null\n" for i in range(layers)
        )
        a.cli("build", "--network", "none", "-t", "bench:1", "-", input=dockerfile.encode(), timeout=1800)
        image = a.image_id("bench:1")
        assert image
        ids = chain_ids(a, "bench:1")
        size = int(a.cli("image", "inspect", "--format", "{{.Size}}", "bench:1").stdout) / 1e6
        print(f"image bench:1: {size:.0f} MB, {len(ids)} images in its chain", flush=True)
        directs, meshes, rss = [], [], []
        for round_no in range(args.rounds):
            remove_all(b, "bench:1", ids)
            directs.append(direct(a, b, ids))
            remove_all(b, "bench:1", ids)
            elapsed, peak = mesh(a, b, image, workdir, round_no)
            meshes.append(elapsed)
            rss.append(peak)
            print(
                f"round {round_no + 1}: direct {directs[-1]:.2f}s, mesh {meshes[-1]:.2f}s, "
                f"receiver peak RSS {peak:.0f} MB",
                flush=True,
            )
        d, m = statistics.median(directs), statistics.median(meshes)
        print(f"direct save|load: {d:.2f}s ({size / d:.0f} MB/s)")
        print(f"mesh pull:        {m:.2f}s ({size / m:.0f} MB/s)")
        print(f"ratio mesh/direct: {m / d:.2f}")
        print(f"receiver node peak RSS: {max(rss):.0f} MB for a {size:.0f} MB image")
        return 0
    finally:
        a.destroy()
        b.destroy()
        if os.environ.get("KEEP") is None:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

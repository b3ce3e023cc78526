#!/usr/bin/env python3
"""Mesh transfer time against a direct `docker save | docker load` pipe, in the same run, timed the
same way from outside.

Two private dockerds on this machine (root needed). An image of --mb megabytes of random data is
built on engine A and kept there under a tag the mesh does not share (`hold:1`). Each way is timed
from the moment the image becomes present on A as `bench:1` (`docker -H A tag` returns) to the
moment B's engine shows its ID under that tag, watched the same way for both, by B's image events
(mesh.lab.arrival: polling would tax the way being timed):
  pipe: `docker -H A save bench:1 PARENTS... | docker -H B load`;
  mesh: two cachemesh node processes (A, B) on loopback, already joined and warm, that share only
        `bench:*`; B's node learns A's new tag by gossip, pulls the image and its chain, tags it.
Before each run the image leaves B and the tag leaves A (fresh nodes for each mesh run, so B's node
does not remember the removal as an eviction), and dirty pages are flushed (sync). The order
alternates: pipe first in odd rounds, mesh first in even ones. Prints the median of each, their
ratio (mesh / pipe), the spread of the rounds' own ratios, and the receiving node's peak RSS,
which shows the stream is not held in memory.

    sudo .venv/bin/python scripts/bench_transfer.py --mb 500 --rounds 5 [--engine 28.5-containerd]
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

from mesh.lab.arrival import Arrival
from mesh.lab.dockerd import Dockerd, available, import_base
from mesh.lab.engines import DEFAULT, KINDS
from mesh.lab.nodes import NodeProcess, free_ports
from mesh.lab.poll import wait_until
from mesh.lab.procstat import peak_rss_mb


def chain_ids(engine: Dockerd, ref: str) -> list[str]:
    return [i for i in engine.cli("history", "-q", "--no-trunc", ref).stdout.split() if i != "<missing>"]


def reset(a: Dockerd, b: Dockerd, ids: list[str]) -> None:
    """The image off B entirely, and off A's shared tag (it stays on A as hold:1)."""
    b.cli("rmi", "-f", "bench:1", check=False)
    for image in ids:
        b.cli("rmi", "-f", image, check=False)
    b.cli("rmi", "-f", "base:1", check=False)
    a.cli("rmi", "bench:1", check=False)  # only the tag: hold:1 keeps the image
    assert b.image_id("bench:1") is None and a.image_id("bench:1") is None


def present_on_a(a: Dockerd, image: str) -> float:
    """Tag the image bench:1 on A; the clock starts once the tag exists."""
    a.cli("tag", image, "bench:1")
    return time.monotonic()


def pipe(a: Dockerd, b: Dockerd, image: str, parents: list[str]) -> float:
    arrival = Arrival(b.host, "bench:1", image)
    started = present_on_a(a, image)
    cli = a.kind.cli_path
    save = subprocess.Popen([cli, "-H", a.host, "save", "bench:1", *parents], stdout=subprocess.PIPE)
    load = subprocess.Popen(
        [cli, "-H", b.host, "load"], stdin=save.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert save.stdout
    save.stdout.close()  # the load holds the pipe's read end now
    try:
        elapsed = arrival.wait(
            started, failed=lambda: f"load exited {load.returncode}" if load.poll() else ""
        )
    finally:
        _, err = load.communicate(timeout=900)
        save.wait(timeout=60)
    if save.returncode or load.returncode:
        raise RuntimeError(f"direct pipe failed: {err!r}")
    return elapsed


def mesh(a: Dockerd, b: Dockerd, image: str, workdir: Path, run: int) -> tuple[float, float]:
    peer_a, status_a, peer_b, status_b = free_ports(4)
    common = {"CACHEMESH_INCLUDE": "bench:*"}
    env_a = {**common, "CACHEMESH_DOCKER_HOST": a.host, "CACHEMESH_LISTEN": f"127.0.0.1:{peer_a}"}
    node_a = NodeProcess(f"bench-a{run}", workdir, env=env_a, status=f"127.0.0.1:{status_a}").wait_up()
    env_b = {
        **common,
        "CACHEMESH_DOCKER_HOST": b.host,
        "CACHEMESH_LISTEN": f"127.0.0.1:{peer_b}",
        "CACHEMESH_SEEDS": f"127.0.0.1:{peer_a}",
    }
    node_b = NodeProcess(f"bench-b{run}", workdir, env=env_b, status=f"127.0.0.1:{status_b}").wait_up()
    try:
        wait_until(lambda: node_a.ready() and node_b.ready(), 60, 0.2, what="both nodes warm")
        arrival = Arrival(b.host, "bench:1", image)
        elapsed = arrival.wait(present_on_a(a, image))
        return elapsed, peak_rss_mb(node_b.proc.pid)
    finally:
        node_b.stop()
        node_a.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500, help="image size in MB of random data")
    parser.add_argument(
        "--rounds", type=int, default=5, help="each round runs both ways (odd: the median is a round)"
    )
    parser.add_argument(
        "--engine", choices=list(KINDS), default=DEFAULT.name, help="engine and image store of both hosts"
    )
    args = parser.parse_args()
    kind = KINDS[args.engine]
    if reason := available():
        print(f"bench: {reason}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="cachemesh-bench-"))
    a = Dockerd(workdir / "a", name="a", kind=kind).start()
    b = Dockerd(workdir / "b", name="b", kind=kind).start()
    try:
        import_base(a, "base:1")
        layers = 4
        per_layer = max(1, args.mb // layers)
        dockerfile = "FROM base:1\n" + "".join(
            f"RUN dd if=/dev/urandom of=/data{i} bs=1M count={per_layer} 2>/dev/null\n" for i in range(layers)
        )
        a.cli(
            "build", "--network", "none", "-t", "hold:1", "-",
            input=dockerfile.encode(), timeout=1800, env={"DOCKER_BUILDKIT": "0"},
        )  # fmt: skip
        image = a.image_id("hold:1")
        assert image
        ids = chain_ids(a, "hold:1")
        parents = ids[1:]
        size = int(a.cli("image", "inspect", "--format", "{{.Size}}", "hold:1").stdout) / 1e6
        print(f"engine {kind.name}: image {size:.0f} MB, {len(ids)} images in its chain", flush=True)
        pipes: list[float] = []
        meshes: list[float] = []
        rss: list[float] = []
        for round_no in range(args.rounds):
            order = ("pipe", "mesh") if round_no % 2 == 0 else ("mesh", "pipe")
            for way in order:
                reset(a, b, ids)
                # The previous way wrote a gigabyte (save temp files, the load): flush it now, so
                # its writeback does not slow whichever way runs next.
                os.sync()
                if way == "pipe":
                    pipes.append(pipe(a, b, image, parents))
                else:
                    elapsed, peak = mesh(a, b, image, workdir, round_no)
                    meshes.append(elapsed)
                    rss.append(peak)
            print(
                f"round {round_no + 1} ({' then '.join(order)}): pipe {pipes[-1]:.2f}s, "
                f"mesh {meshes[-1]:.2f}s, receiver peak RSS {rss[-1]:.0f} MB",
                flush=True,
            )
        d, m = statistics.median(pipes), statistics.median(meshes)
        print(f"pipe save|load: {d:.2f}s ({size / d:.0f} MB/s)  (tag on A -> inspect on B)")
        print(f"mesh:           {m:.2f}s ({size / m:.0f} MB/s)  (tag on A -> inspect on B)")
        print(f"ratio mesh/pipe: {m / d:.2f}")
        # The engines' own times vary from round to round (the containerd store's by ±15%): the
        # spread of the rounds' own ratios says how far one run's figure can be trusted.
        ratios = sorted(mesh_s / pipe_s for mesh_s, pipe_s in zip(meshes, pipes, strict=True))
        spread = f"{ratios[0]:.2f} to {ratios[-1]:.2f}, median {statistics.median(ratios):.2f}"
        print(f"rounds' own ratios: {spread}")
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

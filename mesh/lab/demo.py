"""A local demo mesh: three build hosts on this machine, each a network namespace with its own
dockerd and cachemesh node. A sample image is built on the first; it reaches the others, and a
rebuild on another host hits the cache. Ctrl-C stops everything cleanly.

    sudo scripts/demo            # runs until Ctrl-C
    sudo scripts/demo --once     # shows the sequence, then stops (used by the test suite)
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from mesh.lab.dockerd import Dockerd, available, import_base
from mesh.lab.engines import DEFAULT, KINDS
from mesh.lab.netns import Network
from mesh.lab.nodes import NodeProcess
from mesh.lab.poll import wait_until

SAMPLE = """FROM base:1
# Stand-ins for slow dependency steps (apt-get, npm, pip): a few seconds each.
RUN mkdir /deps && sleep 3 && echo "system packages" > /deps/system
RUN sleep 3 && echo "language packages" > /deps/lang
COPY app.txt /app/app.txt
CMD ["cat", "/app/app.txt"]
"""


def say(text: str = "") -> None:
    print(text, flush=True)


def build(engine: Dockerd, context: Path, tag: str, *extra: str) -> tuple[float, str]:
    started = time.monotonic()
    result = engine.cli(
        "build", "--network", "none", "-t", tag, *extra, str(context), env={"DOCKER_BUILDKIT": "0"}
    )
    return time.monotonic() - started, result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="stop after the demonstration instead of waiting")
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument(
        "--engine",
        choices=list(KINDS),
        default=DEFAULT.name,
        help="the engine and image store of every host (26.1 and 28.5: scripts/engines.sh unpacks them)",
    )
    args = parser.parse_args()
    reason = available()
    if reason:
        say(f"demo: cannot run: {reason}")
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="cachemesh-demo-"))
    network = Network("demo", subnet="10.78.0")
    engines: list[Dockerd] = []
    nodes: list[NodeProcess] = []
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    secret = secrets.token_hex(32)
    try:
        say(f"Starting {args.hosts} build hosts, each with its own Docker engine and cachemesh node...")
        for index in range(args.hosts):
            name = f"host{index + 1}"
            host = network.add_host(name)
            engine = Dockerd(workdir / name, netns=host.netns, name=name, kind=KINDS[args.engine]).start()
            engines.append(engine)
            seeds = f"{network.hosts[0].address}:7611" if index else ""
            env = {
                "CACHEMESH_DOCKER_HOST": engine.host,
                "CACHEMESH_SECRET": secret,
                "CACHEMESH_PRESET": "lan",
                "CACHEMESH_STATUS_LISTEN": f"{host.address}:7612",
                "CACHEMESH_SEEDS": seeds,
            }
            nodes.append(
                NodeProcess(name, workdir, env=env, prefix=host.nsenter(), status=f"{host.address}:7612")
            )
        for node in nodes:
            node.wait_up()
        wait_until(
            lambda: all(
                len([p for p in n.api()["peers"] if p["state"] == "alive"]) == args.hosts - 1 for n in nodes
            ),
            30,
            what="all hosts see each other",
        )
        say("Mesh is up. Status pages (open them in a browser on this machine):")
        for node in nodes:
            say(f"  {node.name}: http://{node.status}/")
        say()

        import_base(engines[0], "base:1")
        context = workdir / "sample"
        context.mkdir()
        (context / "Dockerfile").write_text(SAMPLE)
        (context / "app.txt").write_text("hello from the sample app\n")
        say("host1: building sample:1 (classic builder, two slow dependency steps)...")
        cold, _ = build(engines[0], context, "sample:1")
        image = engines[0].image_id("sample:1") or ""
        say(f"host1: built sample:1 ({image[7:19]}) in {cold:.1f}s")
        built_at = time.monotonic()
        for node, engine in zip(nodes[1:], engines[1:], strict=True):

            def arrived(e: Dockerd = engine) -> bool:
                return e.image_id("sample:1") == image

            wait_until(arrived, 60, 0.05, what=f"sample:1 on {node.name}")
            elapsed = time.monotonic() - built_at
            say(f"{node.name}: has sample:1 with its parent chain, {elapsed:.1f}s after the build")
        say()
        say("host2: rebuilding the same Dockerfile...")
        # Since Engine 25.0.2 the classic builder uses a loaded image as cache only when named.
        named = [] if engines[1].kind.version == "20.10" else ["--cache-from", "sample:1"]
        if named:
            say(f"  (Engine {engines[1].kind.version}: docker build --cache-from sample:1 ...)")
        warm, output = build(engines[1], context, "sample:1", *named)
        for line in output.splitlines():
            if re.match(r"(Step \d+/\d+|\s*---> Using cache)", line):
                say(f"  {line.strip()}")
        cached = output.count("Using cache")
        say(f"host2: rebuilt in {warm:.1f}s ({cached} cached steps) instead of {cold:.1f}s cold")
        say()
        from mesh.ui.status_cli import print_status

        shown = nodes[2 if len(nodes) > 2 else 1]
        everyone = {n.name for n in nodes}

        def settled() -> bool:  # the pulls have been gossiped, so the table shows every holder
            images = shown.api()["images"]
            return any("sample:1" in i["tags"] and set(i["holders"]) == everyone for i in images)

        wait_until(settled, 10, 0.1, what=f"{shown.name} to see sample:1 on every host")
        print_status(shown.api())
        if args.once:
            return 0 if cached >= 3 else 1
        say("\nThe mesh keeps running: build something on a host, e.g.")
        say(f"  DOCKER_HOST={engines[0].host} docker build -t mine:1 ...")
        say("Press Ctrl-C to stop.")
        while not stop["now"]:
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        say("\nStopping: nodes leave the mesh, engines stop, namespaces go away...")
        for node in nodes:
            node.stop()
        for engine in engines:
            engine.destroy()
        network.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
        say("Stopped.")


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("demo: run as root (it creates network namespaces and Docker engines)", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main())

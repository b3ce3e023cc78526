"""`cachemesh run | status | wait-ready | doctor | healthcheck | keygen | version`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

import uvloop

from mesh import __version__
from mesh.allocator import keep_large_buffers_on_the_heap
from mesh.config import ConfigError
from mesh.node.persistence import STATUS_ADDR_FILE
from mesh.options import DEFAULT_PRESET, OPTIONS, PRESETS, default, resolve
from mesh.values import parse_bool, parse_duration

if TYPE_CHECKING:
    from mesh.ui.status_doc import StatusDoc

Serve = Callable[[Any], Coroutine[Any, Any, int]]


def _run_parser(sub: Any) -> None:
    run = sub.add_parser("run", help="run a node (every flag also reads a CACHEMESH_* env var)")
    for option in OPTIONS:
        help_text = option.help_text.replace("%", "%%")  # argparse formats help with %
        if option.parse is parse_bool:
            # A switch that is on by default needs a --no-…; one that is off only its flag.
            action = argparse.BooleanOptionalAction if option.default else "store_true"
            run.add_argument(option.flag, dest=option.field, action=action, default=None, help=help_text)
        else:
            run.add_argument(
                option.flag,
                dest=option.field,
                default=None,
                metavar=option.metavar or None,
                type=option.parse,
                help=help_text,
            )
    run.add_argument(
        "--secret-file",
        metavar="PATH",
        help="file holding the cluster secret [CACHEMESH_SECRET_FILE]; or set CACHEMESH_SECRET",
    )
    run.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default=os.environ.get("CACHEMESH_PRESET", DEFAULT_PRESET),
        help="timing preset: lan for a build fleet, local (fast) for tests and demos "
        "(default: %(default)s) [CACHEMESH_PRESET]",
    )
    run.add_argument(
        "--log-level",
        default=os.environ.get("CACHEMESH_LOG_LEVEL", "info"),
        help="debug, info, warning (default: %(default)s) [CACHEMESH_LOG_LEVEL]",
    )


def _status_addr(args: argparse.Namespace) -> str:
    """--status-addr, else CACHEMESH_STATUS_LISTEN, else where the node on this host said its status
    page listens (it writes that into its data dir, so a node started with --status-listen is
    found too), else the default."""
    given = args.status_addr or os.environ.get("CACHEMESH_STATUS_LISTEN")
    if given:
        return str(given)
    data_dir = os.environ.get("CACHEMESH_DATA_DIR") or default("data_dir")
    try:
        with open(os.path.join(str(data_dir), STATUS_ADDR_FILE)) as fh:
            written = fh.read().strip()
    except OSError:
        written = ""
    return written or str(default("status_listen"))


def _get(addr: str, path: str, timeout: float = 3.0) -> tuple[int, Any]:
    host = addr.replace("0.0.0.0", "127.0.0.1", 1)
    try:
        with urllib.request.urlopen(f"http://{host}{path}", timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def main(argv: list[str] | None = None, *, serve: Serve | None = None) -> int:
    """The command line. `serve` replaces how `run` serves a resolved config (the lab's in-memory
    nodes use it; see mesh/lab/memnode.py)."""
    parser = argparse.ArgumentParser(
        prog="cachemesh", description="Spread Docker build cache across build hosts."
    )
    parser.add_argument("--version", action="version", version=f"cachemesh {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    status = sub.add_parser("status", help="show this host's node: peers, images, transfers")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    wait = sub.add_parser("wait-ready", help="exit 0 once the node is ready (warm), 1 on timeout")
    wait.add_argument(
        "--timeout",
        type=parse_duration,
        metavar="DURATION",
        help="give up after this long, e.g. 10m (default: the node's own --ready-timeout left, plus "
        "a minute; 5m while no node answers)",
    )
    health = sub.add_parser("healthcheck", help="exit 0 if the local node answers /healthz (for HEALTHCHECK)")
    doctor = sub.add_parser("doctor", help="check why this host gets no cache; a fix for each problem")
    doctor.add_argument(
        "--docker-host", metavar="URL", help="the engine [CACHEMESH_DOCKER_HOST, DOCKER_HOST]"
    )
    for client in (status, wait, health, doctor):
        client.add_argument(
            "--status-addr", metavar="HOST:PORT", help="the node's status address [CACHEMESH_STATUS_LISTEN]"
        )
    keygen = sub.add_parser(
        "keygen", help="write a trust key pair: trust.key for trusted publishers, trust.pub for every host"
    )
    keygen.add_argument("--out", metavar="DIR", default=".", help="where to write them (default: .)")
    sub.add_parser("version", help="print the version")
    args = parser.parse_args(argv)

    if args.command == "version":
        print(f"cachemesh {__version__}")
        return 0
    if args.command == "status":
        return _status(args)
    if args.command == "wait-ready":
        return _wait_ready(args)
    if args.command == "doctor":
        return _doctor(args)
    if args.command == "keygen":
        return _keygen(args)
    if args.command == "healthcheck":
        try:
            code, _ = _get(_status_addr(args), "/healthz", timeout=3.0)
        except (OSError, ValueError) as exc:
            print(f"unhealthy: {exc}", file=sys.stderr)
            return 1
        return 0 if code == 200 else 1
    return _run(args, serve or serve_node)


def _keygen(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mesh.net.trust_keys import write_pair

    out = Path(args.out)
    private, public = out / "trust.key", out / "trust.pub"
    for path in (private, public):
        if path.exists():
            print(f"cachemesh: {path} exists; not overwriting a key", file=sys.stderr)
            return 1
    try:
        fingerprint = write_pair(private, public)
    except OSError as exc:
        print(f"cachemesh: cannot write the key pair in {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {private} (private: trusted publishers only, --trust-key)")
    print(f"wrote {public} (public: every host, --trust-pub)")
    print(f"key fingerprint {fingerprint}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from mesh.doctor.checks import diagnose, exit_code, render
    from mesh.doctor.probe import probe

    docker_host = (
        args.docker_host
        or os.environ.get("CACHEMESH_DOCKER_HOST")
        or os.environ.get("DOCKER_HOST")
        or default("docker_host")
    )
    findings = diagnose(probe(_status_addr(args), docker_host))
    print(render(findings))
    return exit_code(findings)


LOG_LEVELS = ("debug", "info", "warning", "error")


def _run(args: argparse.Namespace, serve: Serve) -> int:
    if str(args.log_level).lower() not in LOG_LEVELS:
        print(
            f"cachemesh: --log-level / CACHEMESH_LOG_LEVEL {args.log_level!r}: "
            f"one of {', '.join(LOG_LEVELS)}",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    flags = {option.field: getattr(args, option.field) for option in OPTIONS}
    try:
        config = resolve(flags, os.environ, preset=args.preset, secret_file=args.secret_file)
    except ConfigError as exc:
        print(f"cachemesh: {exc}", file=sys.stderr)
        return 2
    # A node shares its host's cores with the engine it feeds, so CPU per byte moved matters:
    # large buffers are reused from the heap (mesh.allocator, about half the CPU of a TLS
    # stream), and uvloop's transports and TLS cost about a third less than the standard loop's
    # (measured with scripts/bench_transfer.py).
    if not keep_large_buffers_on_the_heap():
        logging.getLogger("cachemesh").info("malloc thresholds not set (not glibc): streams cost more CPU")
    return uvloop.run(serve(config))


async def serve_node(
    config: Any,
    engine: Any = None,
    on_start: Callable[[Any], Awaitable[Callable[[], Awaitable[None]]]] | None = None,
) -> int:
    """Run one node until SIGTERM or SIGINT, then leave. `engine` and `on_start` (called with the
    started node, returns a cleanup) are for the lab."""
    from mesh.node.node import Node
    from mesh.node.persistence import StateError

    try:
        node = Node(config, engine)
    except (StateError, ValueError) as exc:
        print(f"cachemesh: {exc}", file=sys.stderr)
        return 2
    try:
        await node.start()
    except OSError as exc:
        print(f"cachemesh: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        await node.stop(leave=False)
        return 2
    except ValueError as exc:  # a file the settings name that cannot be used (a trust key, a token)
        print(f"cachemesh: {exc}", file=sys.stderr)
        await node.stop(leave=False)
        return 2
    cleanup = await on_start(node) if on_start is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if cleanup is not None:
        await cleanup()
    stopping = asyncio.create_task(node.stop(leave=True))
    done, _ = await asyncio.wait({stopping}, timeout=15.0)
    if not done:
        # Never hang a host's shutdown: say what is stuck, then exit anyway.
        log = logging.getLogger("cachemesh")
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                log.error("shutdown stuck on task %s: %s", task.get_name(), task.get_stack(limit=8))
        return 1
    return 0


def _status(args: argparse.Namespace) -> int:
    addr = _status_addr(args)
    try:
        _, data = _get(addr, "/api/status")
    except OSError as exc:
        print(f"cachemesh: no node answers at {addr}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    from mesh.ui.status_cli import print_status

    print_status(data)
    return 0


def _wait_ready(args: argparse.Namespace) -> int:
    from mesh.ui.warmup_cli import watch

    addr = _status_addr(args)

    def fetch() -> StatusDoc:
        try:
            _, data = _get(addr, "/api/status", timeout=2.0)
        except OSError as exc:
            raise OSError(f"at {addr}: {exc}") from None
        if not isinstance(data, dict) or "ready" not in data:
            raise ValueError(f"{addr} answered something other than a cachemesh status")
        return cast("StatusDoc", data)  # JSON from the node: its shape is its version's

    return watch(fetch, timeout=args.timeout, out=sys.stdout, err=sys.stderr, terminal=sys.stdout.isatty())

"""Warm-up people can watch, against real nodes: `cachemesh wait-ready` under tmux (a progress bar
with images, bytes and ETA) and piped (plain lines, no control codes), and `--ready-timeout`
saying why a node reports ready early in /readyz, /api/status, the status page, the log and
wait-ready's output.

The nodes are lab nodes (real processes, HTTP, TLS, timers) on the in-memory engine, whose saves
the lab paces (CACHEMESH_LAB_SAVE_RATE) so a warm-up lasts long enough to watch.
"""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from mesh.engine.fake import FakeEngine
from mesh.lab.nodes import REPO, NodeProcess, free_ports
from mesh.lab.poll import async_wait_until, wait_until
from mesh.node.status import build_status
from mesh.ui.status_cli import print_status
from mesh.ui.status_page import render_html
from tests.inproc import has_image, start_node

TMUX = shutil.which("tmux")
RATE = 1_000_000  # bytes/s each save leaves the source at
SIZES = (4_000_000, 3_000_000)  # two images: about 4 s at that rate, pulled side by side


@dataclass
class Source:
    node: NodeProcess
    peer: str  # its peer API, for the newcomers' seeds


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    """A node holding two images it serves at RATE."""
    peer, status, lab = free_ports(3)
    node = NodeProcess(
        "source",
        tmp_path_factory.mktemp("source"),
        env={"CACHEMESH_LISTEN": f"127.0.0.1:{peer}", "CACHEMESH_LAB_SAVE_RATE": str(RATE)},
        status=f"127.0.0.1:{status}",
        lab=f"127.0.0.1:{lab}",
    )
    try:
        node.wait_up()
        for i, size in enumerate(SIZES):
            node.build(f"big{i}:1", size)
        yield Source(node, f"127.0.0.1:{peer}")
    finally:
        node.stop()


def newcomer(source: Source, workdir: Path) -> NodeProcess:
    peer, status, lab = free_ports(3)
    env = {"CACHEMESH_LISTEN": f"127.0.0.1:{peer}", "CACHEMESH_SEEDS": source.peer}
    return NodeProcess("newcomer", workdir, env=env, status=f"127.0.0.1:{status}", lab=f"127.0.0.1:{lab}")


def wait_ready_command(node: NodeProcess) -> list[str]:
    return [sys.executable, "-m", "mesh", "wait-ready", "--status-addr", node.status, "--timeout", "60"]


@pytest.mark.skipif(TMUX is None, reason="tmux not installed (scripts/test installs it)")
def test_wait_ready_draws_a_progress_bar_on_a_terminal(source, workdir):
    socket = f"cachemesh-{uuid.uuid4().hex[:8]}"
    tmux = [TMUX, "-L", socket, "-f", "/dev/null"]
    node = newcomer(source, workdir)
    try:
        subprocess.run([*tmux, "new-session", "-d", "-x", "200", "-y", "12", "-c", str(REPO), "bash --norc"],
                       check=True)  # fmt: skip
        command = " ".join(wait_ready_command(node)) + "; echo EXIT=$?"
        subprocess.run([*tmux, "send-keys", command, "Enter"], check=True)

        def pane() -> str:
            return subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout

        bar = re.compile(
            r"pulling \d image\(s\) +━+.*[01]/2 images +[\d.]+ [kM]?B/\d+\.\d MB +[\d.]+ [kM]?B/s +ETA \d+s"
        )
        seen = wait_until(
            lambda: bar.search(pane()), 30, 0.1, what="the bar with images, bytes, rate and ETA"
        )
        assert "\x1b" not in seen.group(0)  # capture-pane shows the screen, not the codes
        wait_until(lambda: "EXIT=0" in pane(), 60, 0.2, what="wait-ready to finish")
        screen = pane()
        assert "2/2 images" in screen and "ready: warm" in screen
        assert node.api()["warmup"]["images_done"] == 2
    finally:
        subprocess.run([*tmux, "kill-server"], check=False, capture_output=True)
        node.stop()


def test_wait_ready_prints_plain_progress_lines_when_piped(source, workdir):
    node = newcomer(source, workdir)
    try:
        result = subprocess.run(
            wait_ready_command(node), capture_output=True, text=True, timeout=90, cwd=REPO
        )
    finally:
        node.stop()
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\r" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[-1] == "ready: warm" and lines[-2].startswith("warming up: 2/2 images, 7.0 MB/7.0 MB")
    line = re.compile(r"^warming up: [012]/2 images, [\d.]+ [kM]?B/[\d.]+ [kM]?B \([\d.]+ [kM]?B left\), "
                      r"[\d.]+ [kM]?B/s, ETA (\d+s|\?) · pulling \d image\(s\)$")  # fmt: skip
    progress = [x for x in lines if line.match(x)]
    assert progress, lines
    # one line per change (or every few seconds), not one per poll: a 4 s warm-up polled every 0.5 s
    assert len(lines) < 12, lines


class StallingEngine(FakeEngine):
    """Serves the first chunk of a save, then nothing until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def save(self, image_ids: Iterable[str], chunk_size: int = 1 << 16) -> AsyncIterator[bytes]:
        first = True
        async for chunk in super().save(image_ids, chunk_size):
            yield chunk
            if first:
                first = False
                await self.release.wait()


async def test_ready_timeout_reports_ready_early_and_says_why_everywhere(workdir, caplog):
    engine = StallingEngine()
    image = engine.build("stuck:1", [b"x" * 200_000])
    a = await start_node(workdir, "alpha", engine=engine)
    b = await start_node(workdir, "beta", engine=FakeEngine(), seeds=(a.peer_addr,), ready_timeout=3.0)
    try:
        await async_wait_until(lambda: b.puller.active, 10, what="beta pulling")
        assert b.readiness.check() == (False, "pulling 1 image(s)")
        with caplog.at_level("WARNING", logger="cachemesh.readiness"):
            await async_wait_until(lambda: b.readiness.ready, 10, what="beta ready by the timeout")
        reason = "ready-timeout 3s passed, still pulling 1 image(s)"
        assert not has_image(b, image)
        assert f"reporting ready before the warm-up is done: {reason}" in caplog.messages
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "mesh", "wait-ready", "--status-addr", b.status_addr, "--timeout", "10"],
            stdout=asyncio.subprocess.PIPE,
            cwd=str(REPO),
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        lines = out.decode().splitlines()
        assert proc.returncode == 0 and lines[-1] == f"ready: {reason}"
        assert lines[-2].startswith("warming up: 0/1 images, ")  # what the timeout left undone
        status = build_status(b.parts.status_facts)
        assert status["ready"] and status["ready_reason"] == reason
        assert status["warmup"]["ready_by_timeout"] is True and status["warmup"]["images_left"] == 1
        out = io.StringIO()
        print_status(status, Console(file=out, width=200))
        assert f"ready ({reason})" in out.getvalue() and "warm-up: 0/1 images, " in out.getvalue()
        html = render_html(status)
        assert "Ready by <code>--ready-timeout</code> before the warm-up finished" in html and reason in html
        engine.release.set()
        await async_wait_until(lambda: has_image(b, image, "stuck:1"), 10, what="beta gets the image")
        await async_wait_until(lambda: b.readiness.check() == (True, "warm"), 10, what="beta warm")
        assert build_status(b.parts.status_facts)["warmup"]["ready_by_timeout"] is False
    finally:
        engine.release.set()
        await b.stop()
        await a.stop()

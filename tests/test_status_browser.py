"""The status page in a real browser (headless Chromium): it renders peers, images and state."""

from __future__ import annotations

import asyncio
import re
import shutil

import pytest

from mesh.engine.fake import FakeEngine
from mesh.lab.poll import async_wait_until
from tests.inproc import start_node

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/test installs it)")
async def test_status_page_renders_in_chromium(workdir):
    ea = FakeEngine()
    ea.build("web:1", [b"layer"])
    a = await start_node(workdir, "alpha", engine=ea)
    b = await start_node(workdir, "beta", engine=FakeEngine(), seeds=(a.peer_addr,))
    try:
        await async_wait_until(lambda: b.readiness.ready and b.local.images, 10, what="beta warm")
        # The profile lives in workdir, removed after the test: removing chromium's profile takes
        # a few hundred milliseconds of file I/O, which must not run on the event loop.
        profile = workdir / "chromium-profile"
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--dump-dom",
            f"http://{b.status_addr}/",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        dom, _ = await asyncio.wait_for(proc.communicate(), 60)
        html = dom.decode()
        assert "cachemesh · beta" in html
        assert "badge ready" in html
        assert "<td>alpha</td>" in html
        assert '<span class="alive">alive</span>' in html
        assert "web:1" in html and "alpha, beta" in html
        # the warm-up as wait-ready shows it: the one image pulled, every byte of it, nothing left
        warmup = re.search(
            r'<p class="warmup"><progress max="(\d+)" value="(\d+)"></progress> (.*?)</p>', html
        )
        assert warmup is not None, html
        assert warmup.group(1) == warmup.group(2)
        assert warmup.group(3).startswith("1/1 images · ") and "(0 B left)" in warmup.group(3)
    finally:
        await b.stop()
        await a.stop()

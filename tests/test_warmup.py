"""The warm-up's progress (pure), the rate meter, and the view `cachemesh wait-ready` prints."""

from __future__ import annotations

import io

import pytest

from mesh.node.warmup import RateMeter, progress
from mesh.protocol.wire import ImageMeta
from mesh.ui.humanize import eta_text
from mesh.ui.status_doc import StatusDoc
from mesh.ui.warmup_cli import plain_line, watch


def meta(n: int, size: int, parent: int = 0) -> ImageMeta:
    return ImageMeta(f"sha256:{n:064x}", f"sha256:{parent:064x}" if parent else "", (), size, n)


BASE, APP, TOOL, OLD = meta(1, 40), meta(2, 100, parent=1), meta(3, 30), meta(4, 10)
METAS = {m.id: m for m in (BASE, APP, TOOL, OLD)}


def test_progress_counts_images_and_bytes_and_estimates_the_time_left():
    p = progress(
        wanted={BASE.id, APP.id, TOOL.id, OLD.id},
        held={OLD.id},
        missing=[BASE.id, APP.id, TOOL.id],
        given_up=[],
        metas=METAS,
        in_flight={APP.id: 60},
        received=70,  # 10 for OLD, 60 so far for APP
        rate=10.0,
    )
    assert (p.images_done, p.images_left, p.images_given_up) == (1, 3, 0)
    # BASE arrives inside APP's stream (its size is part of APP's): 100 - 60 + 30
    assert (p.bytes_done, p.bytes_left) == (70, 70)
    assert p.eta == pytest.approx(7.0)


def test_progress_leaves_given_up_images_out_and_has_no_eta_while_nothing_moves():
    p = progress(
        wanted={TOOL.id, OLD.id},
        held=set(),
        missing=[TOOL.id, OLD.id],
        given_up=[OLD.id],
        metas=METAS,
        in_flight={},
        received=0,
        rate=0.0,
    )
    assert (p.images_left, p.images_given_up, p.bytes_left, p.eta) == (1, 1, 30, None)
    done = progress(
        wanted={TOOL.id},
        held={TOOL.id},
        missing=[],
        given_up=[],
        metas=METAS,
        in_flight={},
        received=30,
        rate=0,
    )
    assert (done.images_done, done.images_left, done.bytes_left, done.eta) == (1, 0, 0, 0.0)


def test_rate_meter_measures_over_its_window_and_restarts_after_a_silence():
    meter = RateMeter(window=10.0, resolution=0.25)
    assert meter.rate(0.0) == 0.0
    for second in range(20):
        meter.add(100.0 + second, 1_000_000)
    assert meter.rate(119.5) == pytest.approx(1_000_000, rel=0.12)
    assert meter.rate(200.0) == 0.0  # nothing for longer than the window
    meter.add(300.0, 500_000)
    meter.add(301.0, 500_000)
    assert meter.rate(302.0) == pytest.approx(500_000)  # from the first new byte, not the window


def test_eta_text():
    assert [eta_text(s) for s in (None, 0, 59.4, 61, 3725)] == ["?", "0s", "59s", "1m01s", "1h02m"]


STATUS = {
    "ready": False,
    "ready_reason": "pulling 2 image(s)",
    "warmup": {
        "images_done": 1,
        "images_left": 2,
        "images_given_up": 0,
        "bytes_done": 5_000_000,
        "bytes_left": 15_000_000,
        "rate": 2_500_000,
        "eta": 6.0,
    },
}


def test_plain_lines_say_everything_on_one_line():
    assert plain_line(STATUS) == (
        "warming up: 1/3 images, 5.0 MB/20.0 MB (15.0 MB left), 2.5 MB/s, ETA 6s · pulling 2 image(s)"
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def pause(self, seconds: float) -> None:
        self.now += seconds


def test_watch_prints_a_line_per_change_and_every_few_seconds_when_piped():
    clock = Clock()
    warm = {**STATUS, "ready": True, "ready_reason": "warm"}
    answers = [STATUS] * 30 + [warm]
    out, err = io.StringIO(), io.StringIO()
    code = watch(
        lambda: answers.pop(0), timeout=60, out=out, err=err, terminal=False, clock=clock, pause=clock.pause
    )
    lines = out.getvalue().splitlines()
    assert code == 0 and lines[-2:] == [plain_line(warm), "ready: warm"]
    # 15 s of the same figures: the first line and one every 5 s, not 30
    assert lines[:-2] == [plain_line(STATUS)] * 3
    assert "\x1b" not in out.getvalue() and err.getvalue() == ""


def test_watch_says_why_it_gives_up():
    clock = Clock()

    def refused() -> StatusDoc:
        raise OSError("connection refused")

    out, err = io.StringIO(), io.StringIO()
    assert watch(refused, timeout=2, out=out, err=err, terminal=False, clock=clock, pause=clock.pause) == 1
    assert out.getvalue().splitlines() == ["waiting: no node answers (connection refused)"]
    assert err.getvalue() == "cachemesh: not ready after 2s: no node answers (connection refused)\n"


def test_watch_on_a_terminal_draws_a_bar_with_the_figures():
    clock = Clock()
    answers = [STATUS, {**STATUS, "ready": True, "ready_reason": "warm"}]
    out, err = io.StringIO(), io.StringIO()
    watch(lambda: answers.pop(0), timeout=60, out=out, err=err, terminal=True, clock=clock, pause=clock.pause)
    text = out.getvalue()
    assert "━" in text and "1/3 images" in text and "5.0 MB/20.0 MB" in text and "ETA 6s" in text
    assert text.rstrip().endswith("ready: warm")


def test_without_a_timeout_watch_waits_as_long_as_the_nodes_own_ready_timeout_left_plus_a_minute():
    clock = Clock()
    cold = {**STATUS, "warmup": {**STATUS["warmup"], "ready_timeout_left": 120.0}}
    out, err = io.StringIO(), io.StringIO()
    code = watch(lambda: cold, timeout=None, out=out, err=err, terminal=False, clock=clock, pause=clock.pause)
    assert code == 1 and 180.0 <= clock.now <= 181.0  # 120 s the node has left, then one more minute
    assert err.getvalue().startswith("cachemesh: not ready after 3m:")


def test_without_a_timeout_watch_gives_up_on_a_node_that_never_answers_after_five_minutes():
    clock = Clock()

    def refused() -> StatusDoc:
        raise OSError("connection refused")

    out, err = io.StringIO(), io.StringIO()
    assert watch(refused, timeout=None, out=out, err=err, terminal=False, clock=clock, pause=clock.pause) == 1
    assert clock.now == 300.0

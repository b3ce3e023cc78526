"""The benches' watch for a tag reaching an engine (mesh.lab.arrival), on every engine and store:
their image events differ (a load, a tag, the containerd store's create), and the watch must see
the tag from each."""

from __future__ import annotations

import threading
import time

import pytest

from mesh.lab.arrival import Arrival
from mesh.lab.dockerd import import_base
from mesh.lab.engines import KINDS

pytestmark = [pytest.mark.docker]


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_tag_is_seen_when_it_appears_and_not_before(engines, kind: str) -> None:  # type: ignore[no-untyped-def]
    engine = engines("a", kind=KINDS[kind])
    image = import_base(engine, "base:1")
    arrival = Arrival(engine.host, "bench:1", image, recheck=10)
    started = time.monotonic()
    tagged: list[float] = []

    def tag_later() -> None:
        time.sleep(0.5)  # not a wait for anything: the tag comes later than the watch begins
        engine.cli("tag", "base:1", "bench:1")
        tagged.append(time.monotonic() - started)

    tagger = threading.Thread(target=tag_later)
    tagger.start()
    elapsed = arrival.wait(started, timeout=30)
    tagger.join()
    # Seen after the tag command began, and by its event: the fallback check is 10 s away.
    assert elapsed >= 0.5
    assert tagged and elapsed <= tagged[0] + 2


@pytest.mark.parametrize("kind", ["20.10"])
def test_a_reason_it_never_comes_ends_the_wait(engines, kind: str) -> None:  # type: ignore[no-untyped-def]
    """One engine is enough: this part never reaches the engine's events."""
    engine = engines("a", kind=KINDS[kind])
    arrival = Arrival(engine.host, "bench:1")
    with pytest.raises(RuntimeError, match="load exited 1"):
        arrival.wait(time.monotonic(), timeout=30, failed=lambda: "load exited 1")

"""The fetch lane: one body at a time from a source, the lowest key next, and a waiter that gives
up never stalls the ones behind it."""

from __future__ import annotations

import asyncio

from mesh.registry.lane import Lane


async def queued(lane: Lane, n: int) -> None:
    """Let the loop run until `n` tasks wait in the lane (each needs a step or two to get there)."""
    async with asyncio.timeout(5):
        while lane.waiting < n:  # noqa: ASYNC110 - no event to wait on: the lane is what is tested
            await asyncio.sleep(0)


async def test_waiters_go_in_key_order_not_arrival_order() -> None:
    lane = Lane()
    order: list[str] = []
    release = asyncio.Event()

    async def holder() -> None:
        async with lane.turn((0,)):
            order.append("first")
            await release.wait()

    async def waiter(name: str, key: tuple[float, ...]) -> None:
        async with lane.turn(key):
            order.append(name)
            await asyncio.sleep(0)  # hold the turn across a switch: nobody else may enter

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(waiter(n, k)) for n, k in (("c", (3, 0)), ("a", (1, 5)), ("b", (1, 7)))]
    await queued(lane, 3)
    release.set()
    await asyncio.gather(first, *waiters)
    assert order == ["first", "a", "b", "c"]


async def test_a_cancelled_waiter_does_not_stall_the_lane() -> None:
    lane = Lane()
    release = asyncio.Event()
    entered: list[str] = []

    async def holder() -> None:
        async with lane.turn((0,)):
            await release.wait()

    async def waiter(name: str, key: tuple[float, ...]) -> None:
        async with lane.turn(key):
            entered.append(name)

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    gone = asyncio.create_task(waiter("gone", (1,)))
    later = asyncio.create_task(waiter("later", (2,)))
    await queued(lane, 2)
    gone.cancel()
    release.set()
    await asyncio.wait_for(asyncio.gather(first, later), 5)
    assert entered == ["later"]
    assert gone.cancelled()
    async with asyncio.timeout(5), lane.turn((9,)):  # free again
        pass


async def test_a_waiter_cancelled_as_it_is_handed_the_turn_passes_it_on() -> None:
    lane = Lane()
    release = asyncio.Event()
    entered: list[str] = []
    tasks: dict[str, asyncio.Task[None]] = {}

    async def holder() -> None:
        async with lane.turn((0,)):
            await release.wait()
        tasks["handed"].cancel()  # in the same step as the hand-over: it has the turn, not yet run

    async def waiter(name: str, key: tuple[float, ...]) -> None:
        async with lane.turn(key):
            entered.append(name)

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    tasks["handed"] = asyncio.create_task(waiter("handed", (1,)))
    behind = asyncio.create_task(waiter("behind", (2,)))
    await queued(lane, 2)
    release.set()
    await first
    await asyncio.wait_for(behind, 5)
    assert entered == ["behind"]
    assert tasks["handed"].cancelled()


async def test_a_body_gives_way_between_pieces_to_a_more_wanted_one_only() -> None:
    """Requests arrive in any order: the last layer may take the free lane before the first
    arrives. It gives way at its next piece; a less wanted arrival waits for it instead."""
    lane = Lane()
    log: list[str] = []
    arrivals: dict[str, asyncio.Event] = {"urgent": asyncio.Event(), "later": asyncio.Event()}

    async def body(name: str, key: tuple[float, ...], pieces: int) -> None:
        async with lane.turn(key) as turn:
            for i in range(pieces):
                log.append(f"{name}{i}")
                if name == "holder" and i == 1:
                    arrivals["urgent"].set()
                    arrivals["later"].set()
                    await queued(lane, 2)
                await turn.give_way()

    async def arrive(name: str, key: tuple[float, ...]) -> None:
        await arrivals[name].wait()
        await body(name, key, 2)

    await asyncio.wait_for(
        asyncio.gather(body("holder", (5,), 4), arrive("urgent", (1,)), arrive("later", (9,))), 5
    )
    assert log == ["holder0", "holder1", "urgent0", "urgent1", "holder2", "holder3", "later0", "later1"]


async def test_a_body_cancelled_while_it_gives_way_leaves_the_lane_working() -> None:
    lane = Lane()
    entered: list[str] = []
    stop = asyncio.Event()

    async def holder() -> None:
        async with lane.turn((5,)) as turn:
            await stop.wait()
            await turn.give_way()  # the urgent body is waiting: this waits for the turn back
            entered.append("holder again")

    async def urgent() -> None:
        async with lane.turn((1,)):
            entered.append("urgent")
            await asyncio.sleep(0)

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    second = asyncio.create_task(urgent())
    await queued(lane, 1)
    stop.set()
    await asyncio.wait_for(second, 5)
    first.cancel()  # cancelled (or finishing) while it waits for the turn back
    await asyncio.gather(first, return_exceptions=True)
    async with asyncio.timeout(5), lane.turn((9,)):  # free again, whatever happened to holder
        entered.append("after")
    assert entered[0] == "urgent" and entered[-1] == "after"

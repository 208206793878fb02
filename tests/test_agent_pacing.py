"""The agent's background work gives way to urgent work: one slice per loop turn, none while urgent,
and neither kind can hold the other back for long."""

from __future__ import annotations

import asyncio

from services.agent.pacing import BackgroundGate, next_turn


class LoopTurns:
    """Counts turns of the event loop: a callback that reschedules itself runs once per turn."""

    def __init__(self) -> None:
        self.count = 0
        self._handle: asyncio.Handle | None = None

    def __enter__(self) -> LoopTurns:
        self._tick()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._handle is not None
        self._handle.cancel()

    def _tick(self) -> None:
        self.count += 1
        self._handle = asyncio.get_running_loop().call_soon(self._tick)


async def background_worker(gate: BackgroundGate, slices: int, ran: list[tuple[str, int]], name: str, turns: LoopTurns) -> None:
    for _ in range(slices):
        await gate.turn()
        ran.append((name, turns.count))


async def test_background_work_runs_one_slice_per_loop_turn() -> None:
    gate, ran = BackgroundGate(), []
    with LoopTurns() as turns:
        await asyncio.gather(*(background_worker(gate, 5, ran, name, turns) for name in "abc"))
    assert len(ran) == 15
    at_turn = [turn for _, turn in ran]
    assert at_turn == sorted(at_turn) and len(set(at_turn)) == 15, at_turn  # never two slices in one turn
    assert [name for name, _ in ran[:6]] == list("abcabc")  # in the order they asked, round after round


async def test_urgent_work_goes_first_and_background_work_resumes_when_it_ends() -> None:
    gate, ran = BackgroundGate(max_park_s=60, max_urgent_s=60), []
    with LoopTurns() as turns:
        urgent = gate.urgent()
        workers = asyncio.gather(*(background_worker(gate, 3, ran, name, turns) for name in "ab"))
        for _ in range(50):
            await next_turn()  # the urgent work's own awaits
        assert ran == [], "background work ran while urgent work was in flight"
        urgent.end()
        urgent.end()  # ending twice counts once
        await workers
    assert len(ran) == 6


async def test_a_busy_hot_path_is_not_slowed_by_a_burst_of_background_slices() -> None:
    """What the gate is for: without it, every await of a message's hot path queued behind
    every background slice that was ready; with it, none run until its urgent work ends."""

    async def burst(pace, slices_run: list[int]) -> None:  # type: ignore[no-untyped-def]
        for _ in range(40):
            await pace()
            slices_run.append(1)

    async def hot_path(awaits: int) -> None:
        for _ in range(awaits):
            await next_turn()

    async def slices_during_hot_path(pace, gate: BackgroundGate | None) -> int:  # type: ignore[no-untyped-def]
        slices_run: list[int] = []
        streams = [asyncio.create_task(burst(pace, slices_run)) for _ in range(8)]
        await next_turn()
        urgent = gate.urgent() if gate is not None else None
        before = len(slices_run)
        await hot_path(10)
        during = len(slices_run) - before
        if urgent is not None:
            urgent.end()
        await asyncio.gather(*streams)
        assert len(slices_run) == 8 * 40  # all of the background work got done in the end
        return during

    gate = BackgroundGate(max_park_s=60, max_urgent_s=60)
    assert await slices_during_hot_path(next_turn, None) >= 8 * 10  # plain yields: every stream, every await
    assert await slices_during_hot_path(gate.turn, gate) <= 1


async def test_background_work_parked_by_endless_urgent_work_still_runs() -> None:
    gate, ran = BackgroundGate(max_park_s=0.005, max_urgent_s=60), []
    with LoopTurns() as turns:
        urgents = [gate.urgent()]  # a steady stream of messages: always one urgent

        async def more_urgent_work() -> None:
            while True:
                urgents.append(gate.urgent())
                urgents.pop(0).end()
                await asyncio.sleep(0.001)

        arrivals = asyncio.create_task(more_urgent_work())
        await asyncio.wait_for(asyncio.gather(*(background_worker(gate, 20, ran, name, turns) for name in "ab")), 10)
        arrivals.cancel()
    assert len(ran) == 40
    # After each full park it runs freely for a while (slices in back-to-back turns), not one slice per park.
    at_turn = [turn for _, turn in ran]
    assert min(b - a for a, b in zip(at_turn, at_turn[1:])) <= 2, at_turn


async def test_urgency_lapses_by_itself_and_renews() -> None:
    """Waiting for a real model's first token takes seconds: an answer that started and then
    waits must not hold the others' background work back all that time."""
    gate, ran = BackgroundGate(max_park_s=60, max_urgent_s=0.2), []
    with LoopTurns() as turns:
        urgent = gate.urgent()  # never ended: the answer is waiting for the model
        await asyncio.wait_for(background_worker(gate, 3, ran, "a", turns), 10)
        assert len(ran) == 3
        urgent.renew()  # its first delta: urgent again
        worker = asyncio.create_task(background_worker(gate, 1, ran, "b", turns))
        for _ in range(20):
            await next_turn()
        assert len(ran) == 3, "background work ran while the renewed urgency held"
        await asyncio.wait_for(worker, 10)  # ...until it lapsed again
        urgent.renew()
        urgent.lapse()  # waiting on something slow now: the others go on at once, not at its expiry
        worker = asyncio.create_task(background_worker(gate, 1, ran, "c", turns))
        for _ in range(20):
            await next_turn()
        assert worker.done() and len(ran) == 5
        urgent.end()
        urgent.renew()  # ended is final
        await asyncio.wait_for(background_worker(gate, 2, ran, "d", turns), 10)
    assert len(ran) == 7


async def test_a_waiter_cancelled_at_the_gate_does_not_hold_up_the_others() -> None:
    gate, ran = BackgroundGate(max_urgent_s=60), []
    with LoopTurns() as turns:
        urgent = gate.urgent()
        cancelled = asyncio.create_task(gate.turn())
        others = asyncio.gather(*(background_worker(gate, 2, ran, name, turns) for name in "ab"))
        await next_turn()
        cancelled.cancel()
        urgent.end()
        await asyncio.wait_for(others, 10)
    assert cancelled.cancelled() and len(ran) == 4

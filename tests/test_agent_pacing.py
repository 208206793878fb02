"""The agent's background work gives way to urgent work: one slice per loop turn, none while urgent."""

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
    gate, ran = BackgroundGate(max_park_s=60), []
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

    gate = BackgroundGate(max_park_s=60)
    assert await slices_during_hot_path(next_turn, None) >= 8 * 10  # plain yields: every stream, every await
    assert await slices_during_hot_path(gate.turn, gate) <= 1


async def test_background_work_parked_by_endless_urgent_work_still_runs() -> None:
    gate, ran = BackgroundGate(max_park_s=0.005), []
    with LoopTurns() as turns:
        urgent = gate.urgent()  # never ends during the test: a steady stream of messages
        await asyncio.wait_for(asyncio.gather(*(background_worker(gate, 3, ran, name, turns) for name in "ab")), 10)
        urgent.end()
    assert len(ran) == 6


async def test_a_waiter_cancelled_at_the_gate_does_not_hold_up_the_others() -> None:
    gate, ran = BackgroundGate(), []
    with LoopTurns() as turns:
        urgent = gate.urgent()
        cancelled = asyncio.create_task(gate.turn())
        others = asyncio.gather(*(background_worker(gate, 2, ran, name, turns) for name in "ab"))
        await next_turn()
        cancelled.cancel()
        urgent.end()
        await asyncio.wait_for(others, 10)
    assert cancelled.cancelled() and len(ran) == 4

"""An answer's Cancel: /stop or a newer message interrupts the model call in the answer's own task.

The call runs in the answer's task (a task of its own would start a loop turn
later), so a cancel must cancel that task and end at the block's edge, while
the agent stopping (any other cancellation) must still go through.
"""

from __future__ import annotations

import asyncio

import pytest

from services.agent.answer import Cancel


async def streaming(cancel: Cancel, reached: list[str]) -> None:
    """An answer's shape: a model call that never ends by itself, then the answer's ending."""
    with cancel.interrupting():
        reached.append("calling")
        await asyncio.Event().wait()
        reached.append("never")
    reached.append("ending")
    await asyncio.sleep(0)
    reached.append("ended")


async def test_a_stop_ends_the_call_and_the_answer_goes_on_to_its_ending() -> None:
    cancel, reached = Cancel(), []
    answer = asyncio.create_task(streaming(cancel, reached))
    await asyncio.sleep(0)
    cancel.set("stop")
    await answer
    assert reached == ["calling", "ending", "ended"]
    assert cancel.reason == "stop" and not answer.cancelled()


async def test_the_agent_stopping_cancels_the_answer_itself() -> None:
    cancel, reached = Cancel(), []
    answer = asyncio.create_task(streaming(cancel, reached))
    await asyncio.sleep(0)
    answer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await answer
    assert reached == ["calling"]


async def test_a_stop_and_the_agent_stopping_together_still_stop_the_answer() -> None:
    cancel, reached = Cancel(), []
    answer = asyncio.create_task(streaming(cancel, reached))
    await asyncio.sleep(0)
    cancel.set("superseded")
    answer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await answer
    assert reached == ["calling"]


async def test_a_cancel_outside_the_call_leaves_the_task_alone() -> None:
    cancel = Cancel()
    after_the_call = asyncio.Event()

    async def answer() -> str:
        with cancel.interrupting():
            await asyncio.sleep(0)
        after_the_call.set()
        await asyncio.sleep(0.01)  # settling, say: a /stop now must not break it
        return "settled"

    task = asyncio.create_task(answer())
    await after_the_call.wait()
    cancel.set("stop")
    assert await task == "settled"
    assert cancel.event.is_set()

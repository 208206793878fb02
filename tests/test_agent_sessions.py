"""Per-chat scheduling: one answer at a time, merge window, cancel-and-restart or queue, /stop."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timezone

import pytest
from uuid import uuid4

from events import MessageReceived, chat_key
from services.agent.answer import Cancel, Job
from services.agent.sessions import ChatSession


def job(message_id: int, user_id: int = 9) -> Job:
    event = MessageReceived(
        event_id=uuid4(), occurred_at=datetime.now(timezone.utc), partition_key=chat_key(1),
        chat_id=1, update_id=message_id, message_id=message_id, user_id=user_id, chat_type="group", text=f"m{message_id}",
    )
    return Job(event, "s", f"{message_id}-0")


class Answers:
    """Records what each answer covered; an answer lasts until released or cancelled."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], str | None]] = []
        self.release = asyncio.Event()
        self.running = asyncio.Event()

    async def __call__(self, jobs: Sequence[Job], cancel: Cancel) -> bool:
        ids = [j.event.message_id for j in jobs]
        self.running.set()
        waiter = asyncio.create_task(self.release.wait())
        stopper = asyncio.create_task(cancel.event.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel(), stopper.cancel()
        self.calls.append((ids, cancel.reason))
        self.running.clear()
        return cancel.reason == "superseded"


async def test_messages_within_the_window_are_answered_together() -> None:
    answers = Answers()
    answers.release.set()
    session = ChatSession(answers, merge_window_s=0.1, on_new_message="cancel")
    first = asyncio.create_task(session.message(job(1)))
    await asyncio.sleep(0.03)
    second = asyncio.create_task(session.message(job(2)))
    results = await asyncio.gather(first, second)
    assert answers.calls == [([1, 2], None)]
    # Each message's handler gets both entries, to be acked together (one XACK): acked one
    # by one, a crash between the acks would have one answered again on its own.
    assert results == [("1-0", "2-0"), ("1-0", "2-0")]


async def test_zero_window_answers_at_once() -> None:
    answers = Answers()
    answers.release.set()
    session = ChatSession(answers, merge_window_s=0, on_new_message="cancel")
    await session.message(job(1))
    await session.message(job(2))
    assert answers.calls == [([1], None), ([2], None)]


async def second_message_mid_answer(first: Job, second: Job) -> list[tuple[list[int], str | None]]:
    """``first`` is being answered when ``second`` arrives (cancel mode); what each answer covered."""
    answers = Answers()
    session = ChatSession(answers, merge_window_s=0, on_new_message="cancel")
    one = asyncio.create_task(session.message(first))
    await answers.running.wait()
    two = asyncio.create_task(session.message(second))
    await asyncio.sleep(0.05)
    answers.release.set()
    await asyncio.wait_for(asyncio.gather(one, two), 1)
    return answers.calls


async def test_a_new_message_cancels_and_restarts_with_both() -> None:
    assert await second_message_mid_answer(job(1), job(2)) == [([1], "superseded"), ([1, 2], None)]


async def test_queue_mode_waits_for_the_answer_in_progress() -> None:
    answers = Answers()
    session = ChatSession(answers, merge_window_s=0, on_new_message="queue")
    first = asyncio.create_task(session.message(job(1)))
    await answers.running.wait()
    second = asyncio.create_task(session.message(job(2)))
    await asyncio.sleep(0.05)
    assert not first.done()
    answers.release.set()
    await asyncio.gather(first, second)
    assert answers.calls == [([1], None), ([2], None)]


async def test_stop_cancels_the_answer_and_its_message_is_done() -> None:
    answers = Answers()
    session = ChatSession(answers, merge_window_s=0, on_new_message="cancel")
    first = asyncio.create_task(session.message(job(1)))
    await answers.running.wait()
    session.stop()
    await asyncio.wait_for(first, 1)
    assert answers.calls == [([1], "stop")]


async def test_a_failed_answer_fails_its_messages_for_the_consumer_to_retry() -> None:
    async def broken(jobs: Sequence[Job], cancel: Cancel) -> bool:
        raise RuntimeError("boom")

    session = ChatSession(broken, merge_window_s=0, on_new_message="cancel")
    with pytest.raises(RuntimeError):
        await session.message(job(1))
    await asyncio.sleep(0.01)
    assert session.idle  # nothing left running for a message that will be redelivered


async def test_stop_from_someone_else_in_a_group_leaves_the_answer_alone() -> None:
    answers = Answers()
    session = ChatSession(answers, merge_window_s=0, on_new_message="cancel")
    first = asyncio.create_task(session.message(job(1, user_id=9)))
    await answers.running.wait()
    session.stop(user_id=77)
    await asyncio.sleep(0.05)
    assert not first.done()
    session.stop(user_id=9)
    await asyncio.wait_for(first, 1)
    assert answers.calls == [([1], "stop")]


async def test_a_message_stopped_before_its_answer_began_is_still_answered_as_stopped() -> None:
    """A /stop read in the same batch as its message (or with the message's takeover): the message
    must still get an answer, cancelled, so its terminal event is written and a hold placed by an
    agent that died is released; dropping it would ack it with no answer at all."""
    answers = Answers()
    session = ChatSession(answers, merge_window_s=0, on_new_message="cancel")
    first = asyncio.create_task(session.message(job(1)))
    await asyncio.sleep(0)  # handed to the session; its answer has not started
    session.stop()
    await asyncio.wait_for(first, 1)
    assert answers.calls == [([1], "stop")]


def redelivered(message_id: int) -> Job:
    fresh = job(message_id)
    return Job(fresh.event, fresh.stream, fresh.entry_id, deliveries=2)


async def test_a_redelivered_message_is_answered_alone_before_a_fresh_one() -> None:
    """Seen in the chaos run: a takeover got message 12 (answered already, not yet acked when its
    agent died) together with the user's next message 14; merged, 12 was answered a second time."""
    answers = Answers()
    answers.release.set()
    session = ChatSession(answers, merge_window_s=0.05, on_new_message="cancel")
    taken = asyncio.create_task(session.message(redelivered(12)))
    fresh = asyncio.create_task(session.message(job(14)))
    await asyncio.wait_for(asyncio.gather(taken, fresh), 1)
    assert answers.calls == [([12], None), ([14], None)]


async def test_a_fresh_message_does_not_cancel_a_takeovers_answer() -> None:
    # The takeover finishes what the dead agent began; the fresh message is answered after it.
    assert await second_message_mid_answer(redelivered(12), job(14)) == [([12], None), ([14], None)]


async def test_a_redelivered_message_does_not_cancel_a_fresh_answer() -> None:
    """Seen in a Redis-kill run: message 46 was answered, its ack lost to the outage; the user's
    next message 47 was being answered when 46 came back from the pending list. It superseded
    47's answer (cancelled, nothing sent); 46 was then found answered, and 47, its response
    ended, was never answered again."""
    assert await second_message_mid_answer(job(47), redelivered(46)) == [([47], None), ([46], None)]


async def test_a_stop_stops_only_the_messages_before_it() -> None:
    """A /stop whose ack was lost to an outage comes back after the user's next message: it
    must not stop that answer. It stops what came before it, as when it was first read."""
    answers = Answers()
    session = ChatSession(answers, merge_window_s=0, on_new_message="cancel")
    answering = asyncio.create_task(session.message(job(47)))
    await answers.running.wait()
    session.stop(user_id=9, at=("s", "46-1"))  # the /stop of message 46, redelivered
    await asyncio.sleep(0.05)
    assert not answering.done()
    session.stop(user_id=9, at=("s", "48-0"))  # a /stop sent after message 47
    await asyncio.wait_for(answering, 1)
    assert answers.calls == [([47], "stop")]

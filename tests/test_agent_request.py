"""Building the Messages API request from a read-model context."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from uuid import uuid4

from eventbot.views import Context, Turn, UserView
from events import Attachment, MessageReceived, chat_key
from services.agent.request import CACHE, DEFAULT_SYSTEM, build_request, describe

PHOTO = Attachment(kind="photo", file_id="p1", file_unique_id="up1", size=2048)
PDF = Attachment(kind="document", file_id="d1", file_unique_id="ud1", mime_type="application/pdf", name="a.pdf", size=300_000)
ZIP = Attachment(kind="document", file_id="z1", file_unique_id="uz1", mime_type="application/zip", name="x.zip", size=4096)


class Files:
    def __init__(self) -> None:
        self.read_ids: list[str] = []

    async def read(self, a: Attachment) -> bytes | None:
        self.read_ids.append(a.file_id)
        return f"bytes of {a.file_id}".encode()


def message(message_id: int, text: str | None = "now", attachments: tuple[Attachment, ...] = (), caption: str | None = None) -> MessageReceived:
    return MessageReceived(
        event_id=uuid4(), occurred_at=datetime.now(timezone.utc), partition_key=chat_key(5), chat_id=5, update_id=message_id,
        message_id=message_id, user_id=7, chat_type="private", text=text, caption=caption, attachments=attachments,
    )


def context(history: tuple[Turn, ...] = (), model: str | None = None, prompt: str | None = None) -> Context:
    return Context(user=UserView(user_id=7, model=model, prompt=prompt), thread=None, history=history, files=())


async def build(ctx: Context, *answering: MessageReceived, files: Files | None = None, turns: int = 20):  # type: ignore[no-untyped-def]
    return await build_request(
        ctx, answering, models=("claude-haiku-4-5", "claude-opus-4-5"), default_model="claude-haiku-4-5",
        history_turns=turns, files=files or Files(),
    )


async def test_history_alternates_and_ends_with_the_messages_being_answered() -> None:
    history = (
        Turn(role="assistant", text="orphan greeting"),  # the API wants the user first
        Turn(role="user", text="q1", message_id=1),
        Turn(role="assistant", text="a1"),
        Turn(role="user", text="q2", message_id=3),  # unanswered (its answer failed): merged with the next user turn
        Turn(role="user", text="now", message_id=4),  # the message being answered, already in the read model
    )
    req = await build(context(history), message(4))
    assert [m["role"] for m in req.messages] == ["user", "assistant", "user"]
    assert [[b["text"] for b in m["content"]] for m in req.messages] == [["q1"], ["a1"], ["q2", "now"]]


async def test_later_messages_in_the_read_model_are_not_answered_early() -> None:
    history = (Turn(role="user", text="q1", message_id=1), Turn(role="assistant", text="a1"), Turn(role="user", text="later", message_id=9))
    req = await build(context(history), message(4))
    assert [b["text"] for m in req.messages for b in m["content"]] == ["q1", "a1", "now"]


async def test_merged_messages_are_one_user_turn() -> None:
    req = await build(context(), message(4, "first"), message(5, "second"))
    assert req.messages == [{"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]}]


async def test_model_and_system_prompt() -> None:
    assert (await build(context(model="claude-opus-4-5"), message(1))).model == "claude-opus-4-5"
    assert (await build(context(model="gpt-5"), message(1))).model == "claude-haiku-4-5"  # not offered here
    assert (await build(context(prompt="Be a pirate."), message(1))).system[0]["text"] == "Be a pirate."
    assert (await build(context(), message(1))).system == [{"type": "text", "text": DEFAULT_SYSTEM, "cache_control": CACHE}]


async def test_prompt_cache_marks_the_end_of_the_history_not_the_new_message() -> None:
    history = (Turn(role="user", text="q1", message_id=1), Turn(role="assistant", text="a1"))
    req = await build(context(history), message(4))
    assert req.messages[1]["content"][-1]["cache_control"] == CACHE
    assert all("cache_control" not in b for b in req.messages[-1]["content"])


async def test_images_and_pdfs_are_blocks_other_files_described() -> None:
    files = Files()
    req = await build(context(), message(4, None, (PHOTO, PDF, ZIP), caption="look"), files=files)
    blocks = req.messages[0]["content"]
    assert [b["type"] for b in blocks] == ["image", "document", "text"]
    assert blocks[0]["source"] == {"type": "base64", "media_type": "image/jpeg", "data": base64.b64encode(b"bytes of p1").decode()}
    assert blocks[1]["source"]["media_type"] == "application/pdf"
    assert blocks[2]["text"] == describe(ZIP) + "\nlook"
    assert "x.zip" in describe(ZIP) and files.read_ids == ["p1", "d1"]
    assert req.estimated_input_tokens > 1600 + 3000  # an image and a PDF weigh far more than their text


async def test_only_the_newest_media_are_sent_as_blocks() -> None:
    history = tuple(
        t for i in range(4)
        for t in (Turn(role="user", text=f"q{i}", message_id=i, attachments=(PHOTO, PHOTO)), Turn(role="assistant", text=f"a{i}"))
    )
    files = Files()
    req = await build(context(history), message(10, "and this?", (PHOTO,)), files=files)
    kinds = [b["type"] for m in req.messages for b in m["content"]]
    assert kinds.count("image") == 5 and len(files.read_ids) == 5
    assert req.messages[-1]["content"][0]["type"] == "image"  # the newest one is among them
    assert req.messages[0]["content"][0]["text"].startswith("[attached photo")


async def test_history_is_capped() -> None:
    history = tuple(
        t for i in range(30) for t in (Turn(role="user", text=f"q{i}", message_id=i), Turn(role="assistant", text=f"a{i}"))
    )
    req = await build(context(history), message(100), turns=4)
    assert [b["text"] for m in req.messages for b in m["content"]] == ["q28", "a28", "q29", "a29", "now"]

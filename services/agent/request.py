"""Builds the Messages API request for an answer from the read-model context.

Model: the user's choice if this deployment offers it, else the default.
System: the user's own prompt if set, else a default. History: the thread's
recent turns as strictly alternating user/assistant messages (what the API
requires), then the messages being answered. Images and PDFs become content
blocks (the most recent few; older ones are described), other files are
described. Prompt caching marks the stable prefix: the system prompt and the
end of the history, which the next turn repeats verbatim.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Any

import msgspec

from eventbot.views import Context, Turn
from events import Attachment, MessageReceived
from services.agent.files import PDF_TYPE, FileSource, media_type

DEFAULT_SYSTEM = (
    "You are Claude, talking with people in a Telegram chat. Answer helpfully and concisely; "
    "use Markdown sparingly (bold, italics, code, lists), as Telegram shows only those."
)
CACHE = {"type": "ephemeral"}
MAX_MEDIA_BLOCKS = 5

# Rough token estimates for the hold; the charge uses the usage the API reports.
CHARS_PER_TOKEN = 3.5
IMAGE_TOKENS = 1_600  # Anthropic's cap for a ~1.15 megapixel image
PDF_TOKENS_PER_100KB = 3_000
BLOCK_OVERHEAD_TOKENS = 8


class ClaudeRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    system: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    estimated_input_tokens: int

    def params(self, max_tokens: int) -> dict[str, Any]:
        """Keyword arguments of ``messages.stream``."""
        return {"model": self.model, "max_tokens": max_tokens, "system": self.system, "messages": self.messages}


def choose_model(context: Context, models: Sequence[str], default: str) -> str:
    chosen = context.user.model
    return chosen if chosen in models else default


async def build_request(
    context: Context,
    answering: Sequence[MessageReceived],
    *,
    models: Sequence[str],
    default_model: str,
    history_turns: int,
    files: FileSource,
) -> ClaudeRequest:
    answered_ids = {m.message_id for m in answering}
    newest = max(answered_ids)
    past: list[Turn] = []
    for turn in context.history:
        # The read model may already hold the messages being answered (and later ones): they come last, from the events.
        if turn.role == "user" and turn.message_id is not None and (turn.message_id in answered_ids or turn.message_id > newest):
            break
        past.append(turn)
    past = past[-history_turns:]
    current = [Turn(role="user", text=_message_text(m), attachments=m.attachments, message_id=m.message_id) for m in answering]
    turns = past + current

    media_budget = MAX_MEDIA_BLOCKS
    contents: list[list[dict[str, Any]]] = [[] for _ in turns]
    # Newest first, so the media the user is asking about now are the ones sent as blocks.
    for i in range(len(turns) - 1, -1, -1):
        blocks, media_budget = await _blocks(turns[i], files, media_budget)
        contents[i] = blocks

    messages = _alternate([(t.role, c) for t, c in zip(turns, contents)])
    if len(messages) > 1:
        # The end of the history (the message before the newest user turn) is next request's prefix too.
        _mark(messages[-2]["content"][-1])
    system_text = context.user.prompt or DEFAULT_SYSTEM
    system = [{"type": "text", "text": system_text, "cache_control": CACHE}]
    return ClaudeRequest(
        model=choose_model(context, models, default_model),
        system=system,
        messages=messages,
        estimated_input_tokens=estimate_tokens(system, messages),
    )


def _message_text(m: MessageReceived) -> str:
    return m.text if m.text is not None else (m.caption or "")


async def _blocks(turn: Turn, files: FileSource, budget: int) -> tuple[list[dict[str, Any]], int]:
    media: list[dict[str, Any]] = []
    described: list[str] = []
    for a in turn.attachments:
        kind = media_type(a)
        data = await files.read(a) if kind is not None and budget > 0 and turn.role == "user" else None
        if data is None:
            described.append(describe(a))
            continue
        budget -= 1
        source = {"type": "base64", "media_type": kind, "data": base64.b64encode(data).decode()}
        media.append({"type": "document" if kind == PDF_TYPE else "image", "source": source})
    text = "\n".join(described + ([turn.text] if turn.text else []))
    if not text and not media:
        text = "(empty message)"
    return media + ([{"type": "text", "text": text}] if text else []), budget


def describe(a: Attachment) -> str:
    parts = [a.kind]
    if a.name:
        parts.append(f'"{a.name}"')
    if a.mime_type:
        parts.append(a.mime_type)
    if a.size is not None:
        parts.append(f"{max(1, round(a.size / 1024))} KB")
    return f"[attached {', '.join(parts)}; its content is not shown]"


def _alternate(turns: list[tuple[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Merge same-role neighbours and drop a leading assistant turn: the API wants user, assistant, user, ..."""
    out: list[dict[str, Any]] = []
    for role, blocks in turns:
        if not out and role != "user":
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": list(blocks)})
    return out


def _mark(block: dict[str, Any]) -> None:
    block["cache_control"] = CACHE


def estimate_tokens(system: list[dict[str, Any]], messages: list[dict[str, Any]]) -> int:
    chars = sum(len(b.get("text", "")) for b in system)
    tokens = 0
    for m in messages:
        for b in m["content"]:
            tokens += BLOCK_OVERHEAD_TOKENS
            if b["type"] == "text":
                chars += len(b["text"])
            elif b["type"] == "image":
                tokens += IMAGE_TOKENS
            else:
                size = len(b["source"]["data"]) * 3 // 4
                tokens += max(PDF_TOKENS_PER_100KB, math.ceil(size / 100_000 * PDF_TOKENS_PER_100KB))
    return tokens + math.ceil(chars / CHARS_PER_TOKEN)

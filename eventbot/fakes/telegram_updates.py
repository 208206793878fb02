"""Bot API objects as Telegram sends them: users, chats, messages and updates as JSON-ready dicts.

Pure builders with no state; :class:`eventbot.fakes.telegram.FakeTelegram` numbers
updates and messages and keeps the files, then uses these to shape what it sends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

ChatType = Literal["private", "group", "supergroup", "channel"]
FileKind = Literal["photo", "document", "voice", "audio", "video", "video_note", "animation"]

_COMMAND = re.compile(r"^/[A-Za-z0-9_]{1,32}(@[A-Za-z0-9_]{3,32})?")
_MENTION = re.compile(r"(?<![\w@])@[A-Za-z0-9_]{3,32}")


@dataclass(frozen=True)
class TgUser:
    id: int
    first_name: str = "Ada"
    last_name: str | None = None
    username: str | None = None
    language_code: str | None = "en"
    is_premium: bool = False

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "is_bot": False, "first_name": self.first_name}
        for name in ("last_name", "username", "language_code"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.is_premium:
            out["is_premium"] = True
        return out


@dataclass(frozen=True)
class TgChat:
    id: int
    type: ChatType = "private"
    title: str | None = None
    is_forum: bool = False

    @classmethod
    def private(cls, user: TgUser) -> TgChat:
        return cls(id=user.id, type="private")

    @classmethod
    def group(cls, id: int, title: str = "Test group", *, forum: bool = False) -> TgChat:
        # Forums exist only in supergroups; Telegram gives supergroups ids below -10^12.
        return cls(id=id, type="supergroup" if forum or id < -10**12 else "group", title=title, is_forum=forum)

    def to_api(self, user: TgUser | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.type == "private" and user is not None:
            out["first_name"] = user.first_name
            if user.username:
                out["username"] = user.username
        if self.title is not None:
            out["title"] = self.title
        if self.is_forum:
            out["is_forum"] = True
        return out


def entities_of(text: str) -> list[dict[str, Any]]:
    """The entities Telegram would attach: a leading bot command and @mentions.

    Offsets and lengths are in UTF-16 code units, as in the real API.
    """
    found: list[tuple[int, int, str]] = []
    m = _COMMAND.match(text)
    if m:
        found.append((0, m.end(), "bot_command"))
    for m in _MENTION.finditer(text):
        found.append((m.start(), m.end(), "mention"))
    return [
        {"type": kind, "offset": _utf16_len(text[:start]), "length": _utf16_len(text[start:end])}
        for start, end, kind in sorted(found)
    ]


def _utf16_len(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


def message(
    *,
    message_id: int,
    date: int,
    chat: TgChat,
    user: TgUser | None,
    text: str | None = None,
    caption: str | None = None,
    topic_id: int | None = None,
    reply_to: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"message_id": message_id, "date": date, "chat": chat.to_api(user)}
    if user is not None:
        out["from"] = user.to_api()
    if topic_id is not None:
        out["message_thread_id"] = topic_id
        out["is_topic_message"] = True
    if reply_to is not None:
        out["reply_to_message"] = reply_to
    if text is not None:
        out["text"] = text
        if entities := entities_of(text):
            out["entities"] = entities
    if caption is not None:
        out["caption"] = caption
        if entities := entities_of(caption):
            out["caption_entities"] = entities
    out.update(extra or {})
    return out


def file_fields(
    kind: FileKind, *, file_id: str, file_unique_id: str, size: int, name: str | None, mime_type: str | None
) -> dict[str, Any]:
    """The message field(s) that carry a file of ``kind``."""
    base: dict[str, Any] = {"file_id": file_id, "file_unique_id": file_unique_id, "file_size": size}
    if kind == "photo":
        # Telegram sends several sizes, smallest first; the last is the original.
        thumb = {"file_id": f"{file_id}-s", "file_unique_id": f"{file_unique_id}-s", "file_size": min(size, 1024),
                 "width": 90, "height": 90}
        return {"photo": [thumb, {**base, "width": 1280, "height": 960}]}
    if kind == "voice":
        return {"voice": {**base, "duration": 3, "mime_type": mime_type or "audio/ogg"}}
    if kind == "video_note":
        return {"video_note": {**base, "length": 240, "duration": 5}}
    if kind in ("audio", "video", "animation"):
        media = {**base, "duration": 5}
        if kind != "audio":
            media |= {"width": 640, "height": 480}
        if name:
            media["file_name"] = name
        if mime_type:
            media["mime_type"] = mime_type
        return {kind: media}
    document = {**base, **({"file_name": name} if name else {}), **({"mime_type": mime_type} if mime_type else {})}
    return {"document": document}

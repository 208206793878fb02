"""Where the bytes of an attachment come from when Claude must see it.

Images and PDFs go to Claude as base64 content blocks, so the agent downloads
them from Telegram (never handing Claude a file URL: it would carry the bot
token), through the shared Redis file cache, so a photo asked about over
several turns is fetched once.
"""

from __future__ import annotations

from typing import Protocol

from eventbot.files import FileCache, FileTooLarge, FileUnavailable
from events import Attachment

IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
PDF_TYPE = "application/pdf"


def media_type(a: Attachment) -> str | None:
    """The media type Claude accepts as a block for this attachment, or None (describe it instead)."""
    if a.kind == "photo":
        return "image/jpeg"  # Telegram re-encodes photos as JPEG
    if a.mime_type in IMAGE_TYPES or a.mime_type == PDF_TYPE:
        return a.mime_type
    return None


class FileSource(Protocol):
    async def read(self, attachment: Attachment) -> bytes | None:
        """The file's bytes, or None if it can't be had (gone, too large)."""
        ...


class CachedFiles:
    """Bytes from the shared Redis file cache (downloaded from Telegram once, for every agent)."""

    def __init__(self, cache: FileCache) -> None:
        self.cache = cache

    async def read(self, attachment: Attachment) -> bytes | None:
        try:
            return await self.cache.get(attachment)
        except (FileTooLarge, FileUnavailable):
            return None  # described to Claude instead; the answer goes on

"""Splitting an answer into Telegram messages of at most 4096 characters (UTF-16 units).

Cuts at the last paragraph break that fits, else a sentence end, else a line
break, else a space; only a text with none of these is cut mid-word. A code
fence left open by a cut is closed in its chunk and reopened in the next, so
every chunk renders on its own. Splitting is greedy from the start, so once an
answer has grown past a cut, the chunks before it never change: a streaming
presenter can finalise them while the rest is still coming.
"""

from __future__ import annotations

import re

TELEGRAM_LIMIT = 4096

_SENTENCE_END = re.compile(r"[.!?…][)\]\"'»]*\s")
_FENCE_LINE = re.compile(r"^\s*```\s*([\w+#.-]*)\s*$", re.MULTILINE)


def split_text(text: str, limit: int = TELEGRAM_LIMIT) -> list[str]:
    if limit < 32:
        raise ValueError("limit too small to split sensibly")
    chunks: list[str] = []
    rest = text
    reopen = ""
    while units(reopen) + units(rest) > limit:
        # Room for a closing fence, should this chunk end inside code.
        budget = _chars_within(rest, limit - units(reopen) - 4)
        cut = _cut(rest, budget)
        chunk = reopen + rest[:cut].rstrip()
        rest = rest[cut:].lstrip("\n ")
        lang = _open_fence(chunk)
        if lang is not None:
            chunk += "\n```"
            reopen = f"```{lang}\n"
        else:
            reopen = ""
        chunks.append(chunk)
    if rest.strip() or not chunks:
        chunks.append(reopen + rest)
    return chunks


def units(text: str) -> int:
    """Length as Telegram counts it: UTF-16 code units (an emoji outside the BMP is two)."""
    return len(text.encode("utf-16-le")) // 2


def _chars_within(text: str, budget_units: int) -> int:
    """How many leading characters of ``text`` fit in ``budget_units``."""
    if len(text) <= budget_units // 2 or units(text[:budget_units]) <= budget_units:
        return min(len(text), budget_units)
    n = used = 0
    for ch in text:
        used += 2 if ord(ch) > 0xFFFF else 1
        if used > budget_units:
            break
        n += 1
    return n


def _cut(text: str, budget: int) -> int:
    window = text[: budget + 1]  # a boundary right at the limit still counts
    floor = budget // 3  # don't make tiny chunks just to honour a boundary
    para = window.rfind("\n\n")
    if para >= floor:
        return para
    ends = [m.end() for m in _SENTENCE_END.finditer(window) if m.end() <= budget]
    if ends and ends[-1] >= floor:
        return ends[-1]
    for sep in ("\n", " "):
        at = window.rfind(sep)
        if at >= floor:
            return at
    return budget


def _open_fence(chunk: str) -> str | None:
    """The language of a code fence left open at the end of ``chunk`` ("" if none named), else None."""
    open_lang: str | None = None
    for m in _FENCE_LINE.finditer(chunk):
        open_lang = m.group(1) if open_lang is None else None
    return open_lang

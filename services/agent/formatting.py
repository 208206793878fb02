"""Claude's Markdown -> Telegram's HTML subset.

Telegram accepts only a few tags (b, i, s, u, code, pre, a, blockquote) and
rejects a message whose tags don't nest; the caller then resends plain text, so
this converter aims to be right for the common cases rather than complete.
Visible text never grows: markup only disappears, so a chunk within the length
limit as Markdown is within it as HTML too.
"""

from __future__ import annotations

import html
import re

_FENCE = re.compile(r"^\s*```\s*([\w+#.-]*)\s*$")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(?=\S)")
_QUOTE = re.compile(r"^\s{0,3}>\s?(.*)$")
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^\s)]+)\)")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|__(?=\S)(.+?)(?<=\S)__")
_ITALIC = re.compile(r"(?<![\w*])\*(?=[^\s*])([^*\n]+?)(?<=[^\s*])\*(?![\w*])|(?<![\w_])_(?=[^\s_])([^_\n]+?)(?<=[^\s_])_(?![\w_])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_PLACEHOLDER = "\x00{}\x00"


def markdown_to_html(text: str) -> str:
    out: list[str] = []
    prose: list[str] = []
    code: list[str] | None = None
    lang = ""
    for line in text.split("\n"):
        fence = _FENCE.match(line)
        if code is None and fence:
            out.append(_prose(prose))
            prose, code, lang = [], [], fence.group(1)
        elif code is not None and fence and not fence.group(1):
            out.append(_pre(code, lang))
            code = None
        elif code is not None:
            code.append(line)
        else:
            prose.append(line)
    out.append(_prose(prose))
    if code is not None:  # an unclosed fence (a streamed draft, a cut): still code
        out.append(_pre(code, lang))
    return "\n".join(part for part in out if part != "" or len(out) == 1).strip("\n")


def _pre(lines: list[str], lang: str) -> str:
    body = html.escape("\n".join(lines), quote=False)
    if lang:
        return f'<pre><code class="language-{html.escape(lang)}">{body}</code></pre>'
    return f"<pre>{body}</pre>"


def _prose(lines: list[str]) -> str:
    out: list[str] = []
    quote: list[str] = []
    for line in lines:
        q = _QUOTE.match(line)
        if q:
            quote.append(_inline(q.group(1)))
            continue
        if quote:
            out.append("<blockquote>" + "\n".join(quote) + "</blockquote>")
            quote = []
        heading = _HEADING.match(line)
        if heading:
            out.append(f"<b>{_inline(heading.group(1))}</b>")
            continue
        out.append(_BULLET.sub(lambda m: f"{m.group(1)}• ", _inline(line), count=1) if _BULLET.match(line) else _inline(line))
    if quote:
        out.append("<blockquote>" + "\n".join(quote) + "</blockquote>")
    return "\n".join(out)


def _inline(text: str) -> str:
    spans: list[str] = []

    def keep(fragment: str) -> str:
        spans.append(fragment)
        return _PLACEHOLDER.format(len(spans) - 1)

    # Code spans first: nothing inside them is Markdown.
    text = _CODE_SPAN.sub(lambda m: keep(f"<code>{html.escape(m.group(1), quote=False)}</code>"), text)
    text = _LINK.sub(lambda m: keep(f'<a href="{html.escape(m.group(2))}">{_emphasis(html.escape(m.group(1), quote=False))}</a>'), text)
    text = _emphasis(html.escape(text, quote=False))
    return re.sub("\x00(\\d+)\x00", lambda m: spans[int(m.group(1))], text)


def _emphasis(text: str) -> str:
    text = _BOLD.sub(lambda m: f"<b>{m.group(1) or m.group(2)}</b>", text)
    text = _ITALIC.sub(lambda m: f"<i>{m.group(1) or m.group(2)}</i>", text)
    return _STRIKE.sub(lambda m: f"<s>{m.group(1)}</s>", text)


def is_entity_error(message: str) -> bool:
    """Whether Telegram rejected a text for its markup (then resend it plain)."""
    m = message.lower()
    return "can't parse entities" in m or "can't find end" in m or "unsupported start tag" in m or "unclosed" in m

"""Markdown -> Telegram HTML, and splitting long answers at boundaries."""

from __future__ import annotations

import html
import re

from hypothesis import given
from hypothesis import strategies as st

from services.agent.formatting import is_entity_error, markdown_to_html
from services.agent.splitting import TELEGRAM_LIMIT, split_text, units


def visible(h: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", h))


def test_inline_markup() -> None:
    assert markdown_to_html("a **bold** and *it* and _it2_ and ~~gone~~") == (
        "a <b>bold</b> and <i>it</i> and <i>it2</i> and <s>gone</s>"
    )
    assert markdown_to_html("see [docs](https://x.test/a?b=1&c=2)") == 'see <a href="https://x.test/a?b=1&amp;c=2">docs</a>'
    assert markdown_to_html("use `a<b> **not bold**`") == "use <code>a&lt;b&gt; **not bold**</code>"


def test_snake_case_and_arithmetic_stay_plain() -> None:
    assert markdown_to_html("call my_func_name with 2*3*4") == "call my_func_name with 2*3*4"


def test_html_is_escaped() -> None:
    assert markdown_to_html("1 < 2 & <script>") == "1 &lt; 2 &amp; &lt;script&gt;"


def test_blocks() -> None:
    md = "# Title\n- one\n- two\n> quoted\n> more\n\n```python\nx = 1 < 2\n```\nafter"
    assert markdown_to_html(md) == (
        "<b>Title</b>\n• one\n• two\n<blockquote>quoted\nmore</blockquote>\n\n"
        '<pre><code class="language-python">x = 1 &lt; 2</code></pre>\nafter'
    )


def test_unclosed_fence_is_still_code() -> None:
    assert markdown_to_html("x\n```\n**a**") == "x\n<pre>**a**</pre>"


def test_entity_errors_are_recognised() -> None:
    assert is_entity_error("Telegram server says - Bad Request: can't parse entities: Unexpected end tag at byte offset 4")
    assert not is_entity_error("Bad Request: message to edit not found")


@given(st.text(alphabet=st.sampled_from("ab *_`~[]()#>-\n<&"), max_size=300))
def test_markup_never_grows_the_visible_text(md: str) -> None:
    assert len(visible(markdown_to_html(md))) <= len(md)


def test_short_text_is_one_chunk() -> None:
    assert split_text("hello") == ["hello"]
    assert split_text("") == [""]


def test_ten_thousand_characters_of_prose_make_three_chunks_at_boundaries() -> None:
    sentences = [f"Sentence number {i} says something modest." for i in range(250)]
    paragraphs = [" ".join(sentences[i : i + 5]) for i in range(0, 250, 5)]
    text = "\n\n".join(paragraphs)[:10_000]
    chunks = split_text(text)
    assert len(chunks) == 3
    assert all(len(c) <= TELEGRAM_LIMIT for c in chunks)
    assert all(c.endswith(".") for c in chunks[:-1])  # cut after a paragraph or a sentence
    assert "".join(chunks).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")


def test_a_cut_inside_code_closes_and_reopens_the_fence() -> None:
    code = "\n".join(f"line_{i} = {i}" for i in range(600))
    chunks = split_text(f"intro\n```python\n{code}\n```\nend")
    assert len(chunks) >= 2 and all(len(c) <= TELEGRAM_LIMIT for c in chunks)
    assert chunks[0].endswith("\n```") and chunks[1].startswith("```python\n")
    assert all("<pre>" in markdown_to_html(c) or "<pre><code" in markdown_to_html(c) for c in chunks)


@given(st.text(alphabet=st.sampled_from("abc .!?\n`"), min_size=0, max_size=3000), st.integers(40, 400))
def test_chunks_fit_and_earlier_chunks_never_change_as_text_grows(text: str, limit: int) -> None:
    chunks = split_text(text, limit)
    assert all(units(c) <= limit for c in chunks)
    grown = split_text(text + " more words. And more.\n\nEven more.", limit)
    assert grown[: len(chunks) - 1] == chunks[:-1]


def test_limit_counts_utf16_units_like_telegram() -> None:
    text = "😀" * 3000  # 6000 UTF-16 units in 3000 characters
    chunks = split_text(text)
    assert len(chunks) == 2 and all(units(c) <= TELEGRAM_LIMIT for c in chunks)
    assert "".join(chunks) == text

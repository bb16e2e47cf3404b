"""What the signup page says about a series: its parts, its reading time, a taste of part 1."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from markdown_it import MarkdownIt
from markdown_it.token import Token

from newsletter.content.article import WORDS_PER_MINUTE
from newsletter.models import Sequence

# The taste is the opening of part 1, cut at a word near this many characters.
TASTE_CHARS = 320
# Personal touches ({{ first_name }}, {% if first_name %}…{% endif %}) are the reader's own,
# not the series': a conditional goes whole, then any other tag.
_CONDITIONAL = re.compile(r"\{%-?\s*if\b.*?%\}.*?\{%-?\s*endif\s*-?%\}", re.S)
_TEMPLATE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_MARKDOWN = MarkdownIt("commonmark")


@dataclass(frozen=True)
class Overview:
    """A series as the signup page presents it."""

    parts: int
    minutes_per_part: int
    taste: str  # plain text: shown escaped, never as Markdown or HTML


def _text(inline: Token) -> str:
    parts = []
    for child in inline.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return "".join(parts)


def _words(markdown: str) -> list[str]:
    tokens = _MARKDOWN.parse(markdown)
    return " ".join(_text(t) for t in tokens if t.type == "inline").split()


def _taste(markdown: str) -> str:
    """The opening paragraphs of `markdown` as plain text, up to about TASTE_CHARS, cut at a
    word: enough to hear the writer's voice, not a whole part."""
    tokens = _MARKDOWN.parse(markdown)
    taken: list[str] = []
    for index, token in enumerate(tokens[:-1]):
        if sum(len(t) + 1 for t in taken) >= TASTE_CHARS * 2 // 3:
            break
        if token.type == "paragraph_open" and tokens[index + 1].type == "inline":
            text = " ".join(_text(tokens[index + 1]).split())
            if text:
                taken.append(text)
        elif token.type == "heading_open" and taken:
            break  # the opening ends where the first section begins
    text = " ".join(taken)
    if len(text) <= TASTE_CHARS:
        return text
    return text[:TASTE_CHARS].rsplit(" ", 1)[0] + "…"


def _without_touches(source: str) -> str:
    return _TEMPLATE.sub("", _CONDITIONAL.sub("", source))


def overview(
    sequence: Sequence, nameless: Callable[[str], str] = _without_touches
) -> Overview | None:
    """How many parts `sequence` has, their average reading time in whole minutes, and the
    opening of part 1; None for a series without parts.

    `nameless` turns the admin's Markdown into what a reader without a first name gets (the
    mail's own renderer, so `{% if first_name %}…{% endif %}` leaves nothing behind); by
    default personal touches are only cut out.
    """
    steps = list(sequence.steps)
    if not steps:
        return None
    words = sum(len(_words(_without_touches(step.body_md))) for step in steps)
    try:
        opening = nameless(steps[0].body_md)
    except Exception:  # noqa: BLE001 - the page shows a plain cut rather than failing
        opening = _without_touches(steps[0].body_md)
    return Overview(
        parts=len(steps),
        minutes_per_part=max(1, math.ceil(words / WORDS_PER_MINUTE / len(steps))),
        taste=_taste(opening),
    )


# Overviews of the signup pages' series, by their steps' ids and edit times: parsing every
# part's Markdown took more than a page view's other work, for text that rarely changes.
_KEPT: dict[tuple[object, ...], Overview | None] = {}
_KEPT_MAX = 64


def kept_overview(
    sequence: Sequence, nameless: Callable[[str], str] = _without_touches
) -> Overview | None:
    """`overview`, counted again only when the series' parts changed (an edit, a publish)."""
    key = (sequence.id, tuple((step.id, step.updated_at) for step in sequence.steps))
    if key not in _KEPT:
        if len(_KEPT) >= _KEPT_MAX:
            _KEPT.clear()
        _KEPT[key] = overview(sequence, nameless)
    return _KEPT[key]

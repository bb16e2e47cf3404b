"""Split an article into a multi-day email series.

Pure functions (the only I/O is :func:`load_sidecar`).  The article is parsed
into sections (the intro plus one per heading); the "deeper resources" section
is lifted out to become the closing "Keep reading" block of the last part, and
the remaining sections are grouped into parts balanced by reading time.
"""

from __future__ import annotations

import math
import pathlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from newsletter.content.article_parse import (
    Block,
    balanced_partition,
    block_words,
    first_sentence,
    md_to_plain,
    parse_markdown,
    parse_plain,
    render_block,
    strip_boilerplate,
    trim,
)
from newsletter.content.rules import is_safe_url

WORDS_PER_MINUTE = 230
SUBJECT_MAX = 78
PREHEADER_MAX = 120
TITLE_MAX = 60
_RESOURCES_HEADING = re.compile(
    r"deeper|further reading|resources|keep reading|learn more", re.IGNORECASE
)
_MD_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_SIDECAR_KEYS = {"title", "description", "parts", "minutes_per_part", "links"}


class ArticleError(ValueError):
    """The article, the split arguments or the sidecar file are unusable."""


@dataclass(frozen=True)
class ResourceLink:
    """One "Keep reading" link; ``url`` is "" when nobody has supplied it yet."""

    title: str
    blurb: str
    url: str


@dataclass
class Part:
    """One email of the series.  ``body_md`` holds neither "Part k of N" nor the teaser."""

    number: int
    total: int
    headline: str
    subject: str
    preheader: str
    body_md: str
    teaser: str | None
    words: int
    resources: list[ResourceLink] = field(default_factory=list)
    resources_intro: str | None = None
    # Reading-time words of each section in the part (the budget check uses them).
    section_words: list[int] = field(default_factory=list)


@dataclass
class SplitResult:
    """The series: its title, the parts, what was dropped and what needs attention."""

    title: str
    parts: list[Part]
    dropped_boilerplate: list[str]
    warnings: list[str]


@dataclass
class Sidecar:
    """Settings from the ``<article>.toml`` file beside an article."""

    title: str | None = None
    description: str | None = None
    parts: int | None = None
    minutes_per_part: float | None = None
    links: dict[str, str] = field(default_factory=dict)


@dataclass
class _Section:
    heading: Block | None
    blocks: list[Block]

    @property
    def words(self) -> int:
        head = block_words(self.heading) if self.heading else 0
        return head + sum(block_words(b) for b in self.blocks)


def normalize_title(text: str) -> str:
    """Comparison key for link titles: straight quotes, single spaces, case-folded."""
    text = re.sub(r"[‘’‚‛′]", "'", re.sub(r"[“”„‟″]", '"', text))
    return " ".join(text.split()).casefold()


def _check_url(where: str, url: str) -> str:
    if url and not is_safe_url(url):
        raise ArticleError(f"{where}: url must be empty, https:// or mailto:, got {url!r}")
    return url


def load_sidecar(path: pathlib.Path) -> Sidecar:
    """Read and validate the TOML sidecar; a missing file gives the default Sidecar."""
    if not path.exists():
        return Sidecar()
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ArticleError(f"{path}: cannot read sidecar TOML: {exc}") from exc
    # Unknown keys are refused: a misspelt "minutes_per_parts" must not be silently ignored.
    if unknown := sorted(set(data) - _SIDECAR_KEYS):
        raise ArticleError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(_SIDECAR_KEYS)}")
    for key in ("title", "description"):
        if not isinstance(data.get(key, ""), str):
            raise ArticleError(f"{path}: {key} must be a string")
    parts = data.get("parts")
    if parts is not None and (type(parts) is not int or parts < 1):
        raise ArticleError(f"{path}: parts must be an integer >= 1, got {parts!r}")
    minutes = data.get("minutes_per_part")
    if minutes is not None and (
        type(minutes) not in (int, float) or not math.isfinite(minutes) or minutes <= 0
    ):
        raise ArticleError(f"{path}: minutes_per_part must be a number > 0, got {minutes!r}")
    raw_links = data.get("links", [])
    if not isinstance(raw_links, list):
        raise ArticleError(f"{path}: links must be an array of tables ([[links]])")
    links: dict[str, str] = {}
    for i, entry in enumerate(raw_links, 1):
        where = f"{path}: links entry {i}"
        if not isinstance(entry, dict) or set(entry) - {"title", "url"}:
            raise ArticleError(f"{where}: must be a table with only 'title' and 'url'")
        title, url = entry.get("title"), entry.get("url", "")
        if not isinstance(title, str) or not title.strip() or not isinstance(url, str):
            raise ArticleError(f"{where}: title must be a non-empty string and url a string")
        if normalize_title(title) in {normalize_title(t) for t in links}:
            raise ArticleError(f"{where}: duplicate title {title!r}")
        links[title] = _check_url(where, url.strip())
    return Sidecar(
        title=data.get("title", "").strip() or None,
        description=data.get("description", "").strip() or None,
        parts=parts,
        minutes_per_part=float(minutes) if minutes is not None else None,
        links=links,
    )


def _sections(blocks: list[Block], markdown: bool) -> tuple[list[_Section], str | None]:
    """Group blocks into sections; also return the article's own title, if it has one."""
    title = blocks[0].plain if blocks and blocks[0].kind == "heading" else None
    # A lone leading "# Title" names the article; it is not a section of it.
    if (
        markdown
        and blocks
        and blocks[0].kind == "heading"
        and blocks[0].level == 1
        and not any(b.kind == "heading" and b.level == 1 for b in blocks[1:])
    ):
        blocks = blocks[1:]
    levels = [b.level for b in blocks if b.kind == "heading"]
    top = min(levels, default=2)  # deeper headings stay inside their section
    sections = [_Section(None, [])]
    for block in blocks:
        if block.kind == "heading" and block.level == top:
            sections.append(_Section(block, []))
        else:
            sections[-1].blocks.append(block)
    return [s for s in sections if s.heading or s.blocks], title


def _resources(
    section: _Section, markdown: bool, known: set[str]
) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(title, blurb, url) triples and leftover intro texts of the resources section.

    A line ending in ":" is a lead-in: it becomes the blurb of the link that
    follows (in plain text, the next line IS the link's title).  A plain line
    whose text is a ``known`` sidecar title is a link even without a lead-in.
    """
    found: list[tuple[str, str, str]] = []
    intro: list[str] = []
    lead: str | None = None
    units: list[tuple[str, str, bool]] = []  # (md, plain, is_list_item)
    for block in section.blocks:
        if block.kind == "list":
            units += [(md, plain, True) for md, plain in block.items]
        else:
            units.append((block.md, block.plain, False))
    for md, plain, in_list in units:
        links = _MD_LINK.findall(md) if markdown else []
        if links:
            rest = md_to_plain(_MD_LINK.sub("", md)).strip(" :-–—")
            if lead is not None and rest:
                intro.append(lead)  # the link brings its own blurb; keep the lead-in as text
            blurb, lead = rest or lead or "", None
            found += [(md_to_plain(t), blurb, url.strip()) for t, url in links]
            continue
        if (lead is not None and not markdown and not in_list) or normalize_title(plain) in known:
            found.append((plain, lead or "", ""))
            lead = None
            continue
        if lead is not None:
            intro.append(lead)
            lead = None
        if in_list and not markdown:
            found.append((plain, "", ""))  # a bulleted reading list: each item is a title
        elif plain.endswith(":"):
            lead = plain
        else:
            intro.append(plain)
    if lead is not None:
        intro.append(lead)
    return found, intro


def _make_part(sections: list[_Section], title: str) -> Part:
    heading = sections[0].heading
    headline = heading.plain if heading else title
    body: list[str] = []
    for section in sections:
        if section.heading:
            body.append(f"## {section.heading.md}")
        body += [render_block(b) for b in section.blocks]
    blocks = [b for s in sections for b in s.blocks if b.kind != "heading"]
    paras = [b.plain for b in blocks if b.kind == "para"] + [
        plain for b in blocks for _, plain in b.items
    ]
    lead = first_sentence(paras[0]) if paras else headline
    return Part(
        number=0,
        total=0,
        headline=headline,
        subject=trim(headline, SUBJECT_MAX),
        preheader=trim(lead, PREHEADER_MAX, "…"),
        body_md="\n\n".join(body),
        teaser=None,
        words=sum(s.words for s in sections),
        section_words=[s.words for s in sections],
    )


def split_article(
    text: str,
    *,
    markdown: bool = False,
    title: str | None = None,
    parts: int | None = None,
    minutes_per_part: float = 2.5,
    links: Mapping[str, str] | None = None,
    sidecar_name: str = "the article's .toml sidecar",
) -> SplitResult:
    """Split an article into a balanced email series.

    ``parts`` fixes the number of parts (clamped to the number of sections);
    otherwise parts are sized to ``minutes_per_part`` of reading time at
    230 wpm.  ``links`` maps resource link titles to URLs (from the sidecar);
    ``sidecar_name`` is only used to make warnings actionable.
    """
    if parts is not None and parts < 1:
        raise ArticleError(f"parts must be >= 1, got {parts}")
    if not minutes_per_part > 0:
        raise ArticleError(f"minutes_per_part must be > 0, got {minutes_per_part}")
    body, dropped = strip_boilerplate(text)
    blocks = parse_markdown(body) if markdown else parse_plain(body)
    if not any(block_words(b) for b in blocks):
        raise ArticleError("article is empty")
    sections, own_title = _sections(blocks, markdown)
    warnings: list[str] = []
    wanted = {normalize_title(t): u.strip() for t, u in (links or {}).items()}

    deeper = [s for s in sections if s.heading and _RESOURCES_HEADING.search(s.heading.plain)]
    found: list[tuple[str, str, str]] = []
    intro: list[str] = []
    if deeper:
        # The last match: "further reading" sits at the end, never in the middle.
        sections.remove(deeper[-1])
        found, intro = _resources(deeper[-1], markdown, set(wanted))
    else:
        warnings.append(
            "no deeper-resources section found (a heading like 'Further reading'):"
            " the last part has no Keep reading block"
        )
    if not sections:
        raise ArticleError("article has no text besides its title and deeper-resources section")

    resources: list[ResourceLink] = []
    for link_title, blurb, url in found:
        key = normalize_title(link_title)
        url = url or wanted.get(key, "")  # the article's own URL wins over the sidecar's
        resources.append(ResourceLink(link_title, blurb, url))
        if not url:
            warnings.append(
                f"resource link '{trim(link_title, 40, '…')}' has no URL: set it in {sidecar_name}"
            )
    for link_title in links or {}:
        if normalize_title(link_title) not in {normalize_title(r.title) for r in resources}:
            warnings.append(
                f"sidecar link '{trim(link_title, 40, '…')}' matches no link"
                " in the deeper-resources section"
            )

    if not title or not title.strip():
        first = next(t for b in blocks for t in [b.plain, *(p for _, p in b.items)] if t)
        title = own_title or trim(first_sentence(first), TITLE_MAX, "…")
    title = " ".join(title.split())

    weights = [s.words for s in sections]
    if parts is not None:
        count = min(parts, len(sections))
        if count < parts:
            warnings.append(
                f"parts={parts} reduced to {count}: the article has only {count} sections"
            )
        target = sum(weights) / count
    else:
        target = minutes_per_part * WORDS_PER_MINUTE
        count = min(max(1, math.ceil(sum(weights) / target - 1e-9)), len(sections))

    result: list[Part] = []
    start = 0
    for size in balanced_partition(weights, count, target):
        result.append(_make_part(sections[start : start + size], title))
        start += size
    for number, part in enumerate(result, 1):
        part.number, part.total = number, len(result)
        if number < len(result):
            part.teaser = f"Tomorrow: {result[number].headline}"
    result[-1].resources = resources
    result[-1].resources_intro = "\n\n".join(intro) or None
    return SplitResult(title=title, parts=result, dropped_boilerplate=dropped, warnings=warnings)

"""Parsing helpers for :mod:`newsletter.content.article`.

Pure functions, no I/O: they turn an article (plain text or a small Markdown
subset) into blocks, detect headings and trailing blog boilerplate, and hold
the text helpers (escaping, sentence extraction, trimming) the splitter needs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

BlockKind = Literal["heading", "para", "list"]


@dataclass
class Block:
    """One block of an article.

    ``md`` is Markdown-ready inline text (escaped when the source was plain
    text); ``plain`` is the same text without markup, used for word counts,
    sentences and title matching.  Lists keep their items in ``items`` as
    ``(md, plain)`` pairs.
    """

    kind: BlockKind
    md: str = ""
    plain: str = ""
    items: list[tuple[str, str]] = field(default_factory=list)
    level: int = 2


# Words that stay lowercase in Title Case ("Why Emotional Distance Is a
# Regulation Response").  "is" is deliberately absent: in a title it is
# capitalised, and a lowercase "is" is a strong sign of an ordinary sentence.
MINOR_WORDS = frozenset(
    {
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "nor",
        "so",
        "yet",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "by",
        "vs",
        "vs.",
        "via",
        "with",
        "as",
        "from",
        "into",
        "onto",
        "per",
        "off",
        "up",
        "than",
    }
)
# A line ending in one of these is a sentence, a lead-in or a continuation.
_SENTENCE_END = ".!?:;,…-–—"
_CLOSERS = "\"'”’»)]"
_OPENERS = "\"'“‘«(["
_BULLET = re.compile(r"^\s*[-*•]\s+(.*)$")
_MD_BULLET = re.compile(r"^\s*[-*•+]\s+(.*)$")  # Markdown also allows "+" bullets
_MD_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:\s+(.*?))?(?:\s+#+)?\s*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")

_BOILERPLATE = re.compile(
    r"""^(?:
      leave\ a\ (?:reply|comment)(?:\ cancel\ reply)?
    | share\ this(?:\ (?:post|article|story))?:?
    | share\ on\ \w+.*
    | like\ this:?
    | (?:like\ )?loading(?:\.+|…)?
    | related(?:\ (?:posts|articles|stories))?:?
    | you\ (?:may|might)\ also\ like:?
    | (?:posted|filed)\ (?:in|under)\b.*
    | (?:tags|tagged|categories|category)\b:?.*
    | (?:\d+|no)\ (?:comments?|responses?|replies)(?:\ yet)?
    | comments?
    | click\ to\ (?:share|email|print)\b.*
    )$""",
    re.IGNORECASE | re.VERBOSE,
)


def is_boilerplate(line: str) -> bool:
    """True if ``line`` is a blog-footer line such as "Leave a Reply" or "Tags: x"."""
    # Markdown exports wrap footers in headings or emphasis; look through that.
    core = re.sub(r"^#+\s*", "", line.strip()).strip("*_ ")
    return bool(core) and bool(_BOILERPLATE.match(" ".join(core.split())))


def strip_boilerplate(text: str) -> tuple[str, list[str]]:
    """Drop trailing boilerplate lines; return the remaining text and the dropped lines.

    Only the END of the article is scanned (over blank and boilerplate lines),
    so a heading like "Related" in the middle of the article is left alone.
    """
    lines = text.splitlines()
    end = len(lines)
    dropped: list[str] = []
    while end and (not lines[end - 1].strip() or is_boilerplate(lines[end - 1])):
        if lines[end - 1].strip():
            dropped.append(lines[end - 1].strip())
        end -= 1
    return "\n".join(lines[:end]), dropped[::-1]


def is_heading_line(line: str) -> bool:
    """Heuristic for plain text: a short Title Case line without closing punctuation."""
    text = line.strip()
    words = text.split()
    if not words or len(text) > 70 or len(words) > 10 or _BULLET.match(text):
        return False
    # Look through closing quotes/brackets: 'He Said “No.”' is a sentence.
    if text.rstrip(_CLOSERS)[-1:] in tuple(_SENTENCE_END) or not re.search(r"[^\W\d_]", text):
        return False
    for index, word in enumerate(words):
        core = word.lstrip(_OPENERS)
        if not core or not core[0].isalnum():
            continue  # "—", "&" and the like carry no case
        if index and word.lower() in MINOR_WORDS:
            continue
        if not (core[0].isupper() or core[0].isdigit()):
            return False
    return True


def escape_md(text: str) -> str:
    """Escape Markdown syntax in plain text where it would change the meaning.

    The text stays readable as plain text, because mail clients show body_md
    raw in the text/plain part: only characters that would start emphasis,
    code, links, HTML or a block construct get a backslash.
    """
    s = re.sub(r"\\(?=[!-/:-@\[-`{-~])", r"\\\\", text)
    s = re.sub(r"([`*])", r"\\\1", s)
    s = re.sub(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])", r"\\_", s)  # snake_case is safe
    s = re.sub(r"\[(?=[^\]]*\])", r"\\[", s)
    s = re.sub(r"<(?=[A-Za-z/!?])", r"\\<", s)
    s = re.sub(r"&(?=#?\w+;)", r"\\&", s)
    s = s.replace("~~", "\\~\\~")
    # Block constructs only matter at the start of the line: headings, quotes,
    # bullets, thematic breaks ("---") and ordered lists ("1." / "1)").
    s = re.sub(r"^(#|>|[-+](?=\s|-|$))", r"\\\1", s)
    return re.sub(r"^(\d{1,9})([.)])(?=\s|$)", r"\1\\\2", s)


def md_to_plain(text: str) -> str:
    """Strip the inline Markdown this project uses, keeping the visible text."""
    s = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    s = re.sub(r"<((?:https?|mailto):[^>\s]+)>", r"\1", s)
    # An underscore inside a word is no emphasis (CommonMark), so first_name keeps its own.
    s = re.sub(r"(?<![^\W_])(__|_)(?=\S)(.+?)(?<=\S)\1(?![^\W_])", r"\2", s)
    s = re.sub(r"(\*\*|\*|`+|~~)(?=\S)(.+?)(?<=\S)\1", r"\2", s)
    s = re.sub(r"(?m)^\s*(?:>\s?|\d{1,9}[.)]\s+)", "", s)
    s = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", s)
    return " ".join(s.split())


def count_words(plain: str) -> int:
    """Words for reading time: whitespace tokens with at least one letter or digit."""
    return sum(1 for token in plain.split() if re.search(r"\w", token))


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (all of it when there is no sentence end)."""
    for match in re.finditer(r"[.!?…]+[\"'”’)\]]*(?=\s|$)", text):
        after = text[match.end() :].lstrip()
        # "vs. feeling" or "e.g. this": a lowercase continuation is no new sentence.
        if after and after[0].islower():
            continue
        return text[: match.end()].strip()
    return text.strip()


def trim(text: str, limit: int, ellipsis: str = "") -> str:
    """Cut ``text`` to at most ``limit`` chars at a word boundary, adding ``ellipsis``."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - len(ellipsis)]
    if text[len(cut)] != " " and " " in cut:
        cut = cut.rsplit(" ", 1)[0]  # never end in the middle of a word
    return cut.rstrip(" ,;:-–—") + ellipsis


def parse_plain(text: str) -> list[Block]:
    """Plain text: one line = one paragraph; consecutive bullet lines = one list."""
    blocks: list[Block] = []
    for line in text.splitlines():
        bullet = _BULLET.match(line)
        plain = " ".join(line.split())
        if bullet and bullet.group(1).strip():
            item = " ".join(bullet.group(1).split())
            if not (blocks and blocks[-1].kind == "list" and blocks[-1].items):
                blocks.append(Block("list"))
            blocks[-1].items.append((escape_md(item), item))
        elif plain:
            # The line after a lead-in ("…goes deeper:") continues it, so it is
            # never a heading even when it looks like one (a Title Case link text).
            after_lead = bool(blocks) and blocks[-1].plain.endswith(":")
            kind: BlockKind = "heading" if is_heading_line(plain) and not after_lead else "para"
            blocks.append(Block(kind, md=escape_md(plain), plain=plain))
        elif blocks and blocks[-1].kind == "list":
            blocks.append(Block("para"))  # a blank line ends the list; marker removed below
    return [b for b in blocks if b.kind != "para" or b.plain]


def _flush_markdown(chunk: list[str], blocks: list[Block]) -> None:
    """Turn one blank-line separated Markdown chunk into paragraph/list blocks."""
    para: list[str] = []
    items: list[list[str]] = []

    def emit_para() -> None:
        if para:
            md = "\n".join(line.rstrip() for line in para)
            blocks.append(Block("para", md=md, plain=md_to_plain(md)))
            para.clear()

    def emit_list() -> None:
        if items:
            pairs = [(" ".join(i), md_to_plain(" ".join(i))) for i in items]
            blocks.append(Block("list", items=pairs))
            items.clear()

    for line in chunk:
        bullet = _MD_BULLET.match(line)
        if bullet:
            emit_para()
            items.append([bullet.group(1).strip()])
        elif items:
            items[-1].append(line.strip())  # indented or lazy continuation of the item
        else:
            para.append(line)
    emit_para()
    emit_list()


def parse_markdown(text: str) -> list[Block]:
    """Markdown subset: ATX headings, blank-line paragraphs, bullet lists, code fences."""
    blocks: list[Block] = []
    chunk: list[str] = []
    fence: str | None = None
    for line in text.splitlines():
        if fence is not None:
            chunk.append(line)
            if line.strip().startswith(fence):
                # Fences keep their blank lines, so they are one verbatim block.
                md = "\n".join(chunk)
                blocks.append(Block("para", md=md, plain=" ".join(chunk[1:-1])))
                chunk, fence = [], None
            continue
        opening = _FENCE.match(line)
        heading = _MD_HEADING.match(line)
        if opening or heading or not line.strip():
            _flush_markdown(chunk, blocks)
            chunk = []
        if opening:
            fence, chunk = opening.group(1), [line]
        elif heading and heading.group(2):
            plain = md_to_plain(heading.group(2))
            blocks.append(
                Block("heading", md=heading.group(2), plain=plain, level=len(heading.group(1)))
            )
        elif line.strip() and not heading:
            chunk.append(line)
    if fence is not None:  # unterminated fence: keep the text rather than lose it
        blocks.append(Block("para", md="\n".join(chunk), plain=" ".join(chunk[1:])))
    else:
        _flush_markdown(chunk, blocks)
    return blocks


def render_block(block: Block) -> str:
    """Markdown for one block (section headings are rendered by the caller)."""
    if block.kind == "list":
        return "\n".join(f"- {md}" for md, _ in block.items)
    if block.kind == "heading":
        return f"{'#' * max(block.level, 3)} {block.md}"
    return block.md


def block_words(block: Block) -> int:
    """Reading-time words of a block."""
    if block.kind == "list":
        return sum(count_words(plain) for _, plain in block.items)
    return count_words(block.plain)


def balanced_partition(weights: Sequence[int], n: int, target: float) -> list[int]:
    """Sizes of ``n`` consecutive groups of ``weights``.

    Minimises the largest group, then the sum of squares (so the other groups
    are balanced too), subject to: a group minus its largest member never
    exceeds ``target``, i.e. no group is over target by more than one section.
    """
    m = len(weights)
    pre = [0]
    for w in weights:
        pre.append(pre[-1] + w)

    # ok[i][j]: weights[i:j] minus its largest member fits the target (running max: O(m²)).
    ok = [[False] * (m + 1) for _ in range(m + 1)]
    for i in range(m):
        top = 0
        for j in range(i + 1, m + 1):
            top = max(top, weights[j - 1])
            ok[i][j] = pre[j] - pre[i] - top <= target + 1e-9

    def solve(cap: float, cost: Callable[[float, float], float]) -> tuple[float, list[list[int]]]:
        inf = math.inf
        best = [[inf] * (m + 1) for _ in range(n + 1)]
        back = [[0] * (m + 1) for _ in range(n + 1)]
        best[0][0] = 0
        for k in range(1, n + 1):
            for j in range(k, m - (n - k) + 1):
                for i in range(k - 1, j):
                    seg = pre[j] - pre[i]
                    if best[k - 1][i] == inf or seg > cap or not ok[i][j]:
                        continue
                    value = cost(best[k - 1][i], seg)
                    if value < best[k][j]:
                        best[k][j], back[k][j] = value, i
        return best[n][m], back

    largest, _ = solve(math.inf, max)
    _, back = solve(largest, lambda acc, seg: acc + seg * seg)
    sizes, j = [], m
    for k in range(n, 0, -1):
        sizes.append(j - back[k][j])
        j = back[k][j]
    return sizes[::-1]

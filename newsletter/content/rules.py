"""Rules every mail body must meet before it can be sent: safe links and described images.

Checked when an article is imported, so a part that would fail in an inbox (a plain-http
link, an image a screen reader cannot describe) is refused with a clear message instead:
on the Markdown source, and on the HTML each sample subscriber would get.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from markdown_it import MarkdownIt
from markdown_it.token import Token

# An https URL with a host, or a mailto: address. Plain http is refused: mailbox providers
# flag it, and it sends a reader's click across the network unencrypted.
_SAFE_URL = re.compile(r"^(?:https://[^\s/?#]+[^\s]*|mailto:[^\s@]+@[^\s@]+)$", re.IGNORECASE)

_markdown = MarkdownIt("commonmark", {"html": False})


def is_safe_url(url: str) -> bool:
    """True for an https:// URL with a host, or a mailto: address."""
    return bool(_SAFE_URL.match(url))


def _inline_tokens(tokens: list[Token]) -> list[Token]:
    found: list[Token] = []
    for token in tokens:
        found.append(token)
        if token.children:  # an inline run, or an image's alt text
            found.extend(_inline_tokens(token.children))
    return found


def body_problems(source: str) -> list[str]:
    """What is wrong with a Markdown body's links and images; empty when it may be sent."""
    problems: list[str] = []
    for token in _inline_tokens(_markdown.parse(source)):
        if token.type == "link_open":
            href = str(token.attrGet("href") or "")
            if not is_safe_url(href):
                problems.append(f"link {href!r} must be an https:// or mailto: URL")
        elif token.type == "image":
            src = str(token.attrGet("src") or "")
            if not src.lower().startswith("https://"):
                problems.append(f"image {src!r} must be an https:// URL")
            if not token.content.strip():
                problems.append(f"image {src!r} needs alt text: ![what it shows]({src})")
    return problems


class _LinksAndImages(HTMLParser):
    """Every <a href> and every <img> of a document, with their attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.images: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "a" and "href" in values:
            self.links.append(values["href"])
        elif tag == "img":
            self.images.append(values)


def html_problems(html: str, own_site: str | None = None) -> list[str]:
    """What is wrong with rendered HTML's links and images; empty when it may be sent.

    The same rules as for the Markdown source, on what a reader gets: every link https or
    mailto (or under `own_site`, the product's own pages), every image with alt text and an
    https source.
    """
    found = _LinksAndImages()
    found.feed(html)
    found.close()
    problems: list[str] = []
    for href in found.links:
        if not (is_safe_url(href) or (own_site and href.startswith(own_site.rstrip("/") + "/"))):
            problems.append(f"link {href!r} must be an https:// or mailto: URL")
    for image in found.images:
        src = image.get("src", "")
        if not src.lower().startswith("https://"):
            problems.append(f"image {src!r} must be an https:// URL")
        if not image.get("alt", "").strip():
            problems.append(f"image {src!r} needs alt text")
    return problems

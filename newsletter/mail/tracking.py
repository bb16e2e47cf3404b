"""Tracked mails: which links of a step can be followed through us, and their stand-ins.

A step's links are numbered once, from its stored content: the body's Markdown links (as
markdown-it writes them into the HTML) in order of first appearance, then the "Keep reading"
URLs. A tracked mail names a link by that number, never by its address, so the redirect can
only ever lead to a URL the step itself holds (no open redirect).

While a step is rendered, each link becomes a stand-in carrying its number and the open image
one without; a subscriber's copy swaps in tokens signed for their delivery (`Composer`).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from markdown_it import MarkdownIt
from markdown_it.token import Token

from newsletter.models import Step

# Plain ASCII, like the composer's other stand-ins, so escaping and CSS inlining keep them.
CLICK_STANDIN = "NLSUBSTCLICK7d1c"
OPEN_STANDIN = "NLSUBSTOPEN7d1c"
# A click stand-in ends with "x" so that link 1 never reads as the start of link 12.
CLICK = re.compile(f"{CLICK_STANDIN}([0-9]+)x")
_PARSER = MarkdownIt("commonmark", {"html": False, "typographer": False})


def _hrefs(tokens: list[Token]) -> list[Token]:
    found: list[Token] = []
    for token in tokens:
        if token.type == "link_open":
            found.append(token)
        if token.children:
            found.extend(_hrefs(token.children))
    return found


def body_links(tokens: list[Token]) -> list[Token]:
    """The link_open tokens of a parsed Markdown body, in order."""
    return _hrefs(tokens)


def step_links(step: Step) -> list[str]:
    """The URLs a tracked mail of `step` may lead to, numbered by their place in this list."""
    found = [str(token.attrGet("href") or "") for token in body_links(_PARSER.parse(step.body_md))]
    found += [resource.get("url") or "" for resource in step.resources or []]
    links: list[str] = []
    for url in found:
        # Only web addresses: a mailto: or tel: link is not followed through a web page.
        if url.lower().startswith(("https://", "http://")) and url not in links:
            links.append(url)
    return links


def normalised(url: str) -> str:
    """A URL as markdown-it writes it into an href (what `step_links` holds)."""
    return str(_PARSER.normalizeLink(url))


def click_standin(links: list[str], site_url: str) -> Callable[[str], str | None]:
    """url -> the stand-in address of that link in a tracked mail; None for a URL not listed."""
    numbers = {url: i for i, url in enumerate(links)}

    def standin(url: str) -> str | None:
        number = numbers.get(url)
        return None if number is None else f"{site_url}/c/{CLICK_STANDIN}{number}x"

    return standin


def open_url(site_url: str) -> str:
    """The stand-in address of a tracked mail's open image."""
    return f"{site_url}/o/{OPEN_STANDIN}.gif"

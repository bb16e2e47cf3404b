"""Every shipped mail's HTML, as it arrived over SMTP, checked as a mail client and a phone see it.

Two kinds of check:
- the markup a mail client gets (parsed with Python's HTML parser): language, preheader,
  layout tables, inlined CSS, a system font stack, the 600 px card, dark-mode rules;
- the page a reader sees, in headless Chromium at 320, 375, 600 and 1024 px, light and dark:
  no sideways scroll, text of at least 14 px at a contrast of at least 4.5:1 (WCAG AA),
  one centred column, every image described and every link https or mailto.

The same browser takes the README's screenshots of part 1 and checks them; it writes them to
docs/screenshots/ only when asked (UPDATE_SCREENSHOTS=1), so a test run never changes tracked
files.
"""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page
from sqlalchemy import select

from newsletter import clock
from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.mail.transport import SmtpTransport
from newsletter.models import Sequence, Step, Subscriber
from tests.helpers.apps import base_env, make_app, runtime_of
from tests.helpers.env import ROOT
from tests.helpers.mailparse import html_of
from tests.helpers.shipped import part_mails, send_shipped_mails
from tests.helpers.smtp import running_sink

WIDTHS = (320, 375, 600, 1024)
CARD_MAX = 600
MIN_FONT_PX = 14
MIN_CONTRAST = 4.5
GMAIL_CLIP_BYTES = 102 * 1024
PREVIEW_FILLER = "\u034f\u200c\u00a0"  # combining grapheme joiner, ZWNJ, no-break space
SYSTEM_FONTS = ("-apple-system", "BlinkMacSystemFont", "Segoe UI", "Roboto", "sans-serif")

# Markdown an author may use beyond what the seed article needs: every block the renderer
# makes, a long unbroken URL and a long code line (the usual causes of sideways scroll).
RICH_BODY = """# A first heading

Some text with *emphasis*, **strength**, `inline code` and [a link](https://example.org/a).

## A second heading

### A third heading

1. first
2. second
   - nested
   - items

> A quotation that runs on for a while so that it wraps across lines on a phone.

    a_code_block_line_that_is_much_longer_than_any_phone_is_wide_and_never_breaks_by_itself()

---

https://example.org/a/very/long/path/that/has/no/spaces/anywhere/in/it/and/keeps/going/on/and/on

![A chart of replies per day](https://example.org/chart.png)
"""


@dataclass(frozen=True)
class Mail:
    """One shipped mail: its name, the HTML part as received, and its expected preheader."""

    name: str
    html: str
    preheader: str
    closes_series: bool = False


def html_part(raw: bytes) -> str:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return html_of(message)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> list[Mail]:
    """The confirmation, every part of the seed series and one part using every Markdown block.

    Sent through the real composer to a real SMTP server; the HTML is taken from what arrived.
    """
    tmp = tmp_path_factory.mktemp("shipped")
    with running_sink() as sink:
        app = make_app(base_env(tmp, f"sqlite:///{tmp / 'newsletter.db'}", sink))
        try:
            with db.transaction() as session:
                ensure_seed(session)
            send_shipped_mails(app, sink)
            with db.transaction() as session:
                # A one-part series written with every Markdown block, to check that the
                # layout holds for what other articles will contain.
                session.add(Sequence(slug="every-block", title="Every block", steps=[rich_step()]))
            with db.session() as session:
                seed, rich = session.scalars(select(Sequence).order_by(Sequence.id)).all()
                title = seed.title
                parts = [(step.preheader, bool(step.resources)) for step in seed.steps]
                rt = runtime_of(app)
                subscriber = session.scalars(select(Subscriber)).one()
                (mail,) = part_mails(rt.composer, subscriber, rich, clock.now())
                SmtpTransport(rt.settings).send_data(mail.sender, mail.recipients, mail.data)
            raws = list(sink.handler.raw)
        finally:
            db.dispose()
    mails = [Mail("confirmation", html_part(raws[0]), f"One click to start {title}.")]
    for number, (raw, (preheader, closes)) in enumerate(zip(raws[1:-1], parts, strict=True), 1):
        mails.append(Mail(f"part-{number}", html_part(raw), preheader, closes))
    mails.append(Mail("every-block", html_part(raws[-1]), rich_step().preheader))
    return mails


def rich_step() -> Step:
    return Step(
        position=1,
        day_offset=0,
        subject="Every block",
        preheader="A part using every Markdown block.",
        body_md=RICH_BODY,
        teaser="",
        resources=[],
        resources_intro="",
    )


# -- the markup a mail client gets ---------------------------------------------------------------


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""

    @property
    def classes(self) -> list[str]:
        return self.attrs.get("class", "").split()

    @property
    def style(self) -> str:
        return self.attrs.get("style", "")


@dataclass
class Markup(HTMLParser):
    """The start tags of a document in order, each with its direct text, and its <style> text."""

    elements: list[Element] = field(default_factory=list)
    style_text: str = ""
    _open: list[Element] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(convert_charrefs=True)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(element)
        if tag not in ("br", "meta", "img", "hr", "link", "input"):
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._open:
            if self._open[-1].tag == "style":
                self.style_text += data
            self._open[-1].text += data

    def all(self, tag: str) -> list[Element]:
        return [e for e in self.elements if e.tag == tag]

    def with_class(self, name: str) -> list[Element]:
        return [e for e in self.elements if name in e.classes]


def parse(html: str) -> Markup:
    markup = Markup()
    markup.feed(html)
    markup.close()
    return markup


# Tags that look wrong without their stylesheet; a client that drops <style> (many webmails
# do, for some accounts) must still find their look inline.
STYLED_TAGS = {"p", "h1", "h2", "h3", "ul", "ol", "li", "a", "blockquote", "pre", "hr", "img"}


def test_markup_is_built_for_mail_clients(shipped: list[Mail]) -> None:
    assert [m.name for m in shipped] == [
        "confirmation",
        "part-1",
        "part-2",
        "part-3",
        "part-4",
        "every-block",
    ]
    for mail in shipped:
        doc = parse(mail.html)
        where = mail.name
        # Gmail cuts a message whose HTML passes 102 KB behind a "View entire message" link.
        assert len(mail.html.encode()) < GMAIL_CLIP_BYTES, f"{where}: Gmail would clip it"
        (html,) = doc.all("html")
        assert html.attrs.get("lang") == "en", f"{where}: <html> has no lang"
        # Webmail drops <html>: the mail's own wrapper keeps the language and names the mail.
        articles = [d for d in doc.all("div") if d.attrs.get("role") == "article"]
        assert len(articles) == 1, f"{where}: no role=article wrapper"
        assert articles[0].attrs.get("lang") == "en", where
        assert articles[0].attrs.get("aria-roledescription") == "email", where
        (title,) = doc.all("title")
        assert articles[0].attrs.get("aria-label") == title.text.strip() != "", where
        metas = {m.attrs.get("name", ""): m.attrs.get("content", "") for m in doc.all("meta")}
        assert metas.get("viewport", "").startswith("width=device-width"), where
        assert "dark" in metas.get("color-scheme", ""), f"{where}: no color-scheme meta"
        assert "@media (prefers-color-scheme: dark)" in doc.style_text, where
        assert re.search(r"@media \(max-width: \d+px\)", doc.style_text), where
        # Nothing fetched to render the mail: no web fonts, stylesheets or scripts.
        assert not doc.all("link") and not doc.all("script"), where
        assert "@import" not in doc.style_text and "@font-face" not in doc.style_text, where

        # The preheader is the first thing in the body, hidden, and says what the step says.
        body_at = doc.elements.index(doc.all("body")[0])
        first = doc.elements[body_at + 1]
        assert "preheader" in first.classes, f"{where}: body starts with <{first.tag}>"
        # Then invisible filler, so an inbox preview does not run on into the mail's text.
        assert first.text.rstrip(PREVIEW_FILLER) == mail.preheader, where
        assert first.text.count("\u200c") >= 40, f"{where}: no filler after the preheader"
        assert "display: none" in first.style, f"{where}: the preheader would show"

        tables = doc.all("table")
        assert tables, where
        assert all(t.attrs.get("role") == "presentation" for t in tables), (
            f"{where}: a layout table without role=presentation"
        )
        (card,) = doc.with_class("card")
        assert f"max-width: {CARD_MAX}px" in card.style, f"{where}: card is not {CARD_MAX}px"
        # Outlook for Windows ignores max-width; a table only it reads holds the column.
        assert f'<!--[if mso]><table role="presentation" width="{CARD_MAX}"' in mail.html, where
        for cell in doc.with_class("content") + doc.with_class("footer"):
            family = re.search(r"font-family: ([^;]+)", cell.style)
            assert family, f"{where}: .{cell.classes[0]} has no inline font-family"
            names = [n.strip(" '\"") for n in family.group(1).split(",")]
            assert names[0] == SYSTEM_FONTS[0] and names[-1] == SYSTEM_FONTS[-1], names
            assert set(names) <= set(SYSTEM_FONTS) | {"Helvetica", "Arial"}, names

        # CSS is inlined: each styled element and each classed element carries its look.
        body = doc.elements[body_at:]
        bare = [
            f"<{e.tag} class={e.attrs.get('class', '')!r}>"
            for e in body
            if (e.tag in STYLED_TAGS or e.classes) and not e.style
        ]
        assert bare == [], f"{where}: elements without inline style: {bare[:5]}"

        # The last part closes on the "Keep reading" block, set apart from the text.
        blocks = doc.with_class("resources")
        if mail.closes_series:
            (block,) = blocks
            assert "border-left: 4px solid" in block.style, block.style
            assert "background:" in block.style, block.style
            headings = [e.text.strip() for e in body if e.tag == "h2"]
            assert headings[-1] == "Keep reading", headings
        else:
            assert blocks == [], f"{where}: a Keep reading block before the last part"
    assert [m.closes_series for m in shipped].count(True) == 1


# -- the page a reader sees ----------------------------------------------------------------------

MEASURE = """
() => {
  const opaque = c => c && c !== 'transparent' && !/rgba\\(.*, 0\\)$/.test(c);
  const background = el => {
    for (let e = el; e; e = e.parentElement) {
      const c = getComputedStyle(e).backgroundColor;
      if (opaque(c)) return c;
    }
    return 'rgb(255, 255, 255)';
  };
  const texts = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!n.textContent.trim() || !el.checkVisibility({opacityProperty: true})) continue;
    const cs = getComputedStyle(el);
    texts.push({text: n.textContent.trim().slice(0, 50), tag: el.tagName.toLowerCase(),
                size: parseFloat(cs.fontSize), color: cs.color, background: background(el)});
  }
  const box = el => { const r = el.getBoundingClientRect(); return [r.left, r.width]; };
  const card = document.querySelector('.card');
  const resources = document.querySelector('.resources');
  return {
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    texts,
    images: [...document.images].map(i => [i.getAttribute('src'), i.getAttribute('alt')]),
    links: [...document.querySelectorAll('a')].map(a => a.getAttribute('href')),
    card: box(card),
    cells: [...card.querySelectorAll('td')].map(box),
    overflowing: [...document.body.querySelectorAll('*')]
      .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
      .map(e => e.tagName.toLowerCase() + '.' + e.className),
    resources: resources && {
      box: box(resources),
      border: parseFloat(getComputedStyle(resources).borderLeftWidth),
      background: getComputedStyle(resources).backgroundColor,
      card: getComputedStyle(card).backgroundColor,
    },
  };
}
"""


def rgb(css: str) -> tuple[float, float, float]:
    """An rgb()/rgba() colour from getComputedStyle, as 0..1 channels."""
    match = re.match(r"rgba?\((\d+), (\d+), (\d+)", css)
    assert match, f"unexpected colour {css!r}"
    r, g, b = (int(v) / 255 for v in match.groups())
    return r, g, b


def luminance(css: str) -> float:
    """Relative luminance as WCAG 2 defines it."""
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb(css)]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@dataclass
class Seen:
    """What the pages at one width showed: the problems, and the extremes for the report."""

    problems: list[str] = field(default_factory=list)
    smallest_px: float = float("inf")
    lowest_contrast: float = float("inf")
    widest_px: int = 0


def problems_at(page: Page, mail: Mail, width: int, scheme: str, seen_all: Seen) -> list[str]:
    """Everything a reader at this width and colour scheme would trip over, as sentences."""
    page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
    page.set_content(mail.html, wait_until="load")
    seen: dict[str, Any] = page.evaluate(MEASURE)
    where = f"{mail.name} at {width}px ({scheme})"
    found: list[str] = []
    if seen["innerWidth"] != width:
        found.append(f"{where}: laid out {seen['innerWidth']}px wide (viewport meta?)")
    if seen["scrollWidth"] > seen["innerWidth"]:
        found.append(
            f"{where}: scrolls sideways ({seen['scrollWidth']}px of content), "
            f"too wide: {sorted(set(seen['overflowing']))[:6]}"
        )
    seen_all.widest_px = max(seen_all.widest_px, seen["scrollWidth"])
    for text in seen["texts"]:
        seen_all.smallest_px = min(seen_all.smallest_px, text["size"])
        seen_all.lowest_contrast = min(
            seen_all.lowest_contrast, contrast(text["color"], text["background"])
        )
        if text["size"] < MIN_FONT_PX:
            found.append(f"{where}: {text['size']}px text in <{text['tag']}>: {text['text']!r}")
        ratio = contrast(text["color"], text["background"])
        if ratio < MIN_CONTRAST:
            found.append(
                f"{where}: contrast {ratio:.2f} ({text['color']} on {text['background']}) "
                f"for {text['text']!r}"
            )
    for src, alt in seen["images"]:
        if not (alt or "").strip():
            found.append(f"{where}: image {src} has no alt text")
    for href in seen["links"]:
        if not re.match(r"(https://|mailto:)", href or ""):
            found.append(f"{where}: link {href!r} is not https or mailto")
    # One column, centred: the card is 600 px or the whole width, and every cell spans it.
    left, card_width = seen["card"]
    if abs(card_width - min(width, CARD_MAX)) > 1 or abs(left - (width - card_width) / 2) > 1:
        found.append(f"{where}: card {card_width}px wide at x={left}")
    for cell_left, cell_width in seen["cells"]:
        if abs(cell_left - left) > 1 or abs(cell_width - card_width) > 1:
            found.append(f"{where}: a {cell_width}px cell at x={cell_left}: a second column")
    block = seen["resources"]
    if mail.closes_series:
        if not block or block["border"] < 3 or block["background"] == block["card"]:
            found.append(f"{where}: Keep reading block not set apart: {block}")
    if scheme == "dark" and luminance(seen["texts"][0]["background"]) > 0.05:
        found.append(f"{where}: stays light in dark mode ({seen['texts'][0]['background']})")
    return found


@pytest.mark.browser
@pytest.mark.parametrize("width", WIDTHS)
def test_every_mail_reads_well_at_this_width(
    browser: Browser, shipped: list[Mail], width: int, report_line: Callable[[str], None]
) -> None:
    context = browser.new_context(
        viewport={"width": width, "height": 800}, is_mobile=width < CARD_MAX, has_touch=True
    )
    try:
        page = context.new_page()
        seen = Seen()
        for mail in shipped:
            for scheme in ("light", "dark"):
                seen.problems += problems_at(page, mail, width, scheme, seen)
    finally:
        context.close()
    report_line(
        f"[mail render] {width}px, {len(shipped)} mails, light and dark: content at most "
        f"{seen.widest_px}px wide, smallest text {seen.smallest_px:g}px, "
        f"lowest contrast {seen.lowest_contrast:.2f}:1"
    )
    assert seen.problems == [], "\n".join(seen.problems)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


SHOTS = (
    # name, viewport, device scale, colour scheme
    ("part-1-phone", (375, 740), 2, "light"),
    ("part-1-phone-dark", (375, 740), 2, "dark"),
    ("part-1-desktop", (1024, 760), 1, "light"),
)


# What a screenshot shows, measured in the browser: its mean luminance (0 black, 1 white) and
# how many colours it has (a blank or one-colour image has a handful; text has many shades).
PICTURE = """
async (src) => {
  const image = new Image();
  image.src = src;
  await image.decode();
  const canvas = document.createElement('canvas');
  canvas.width = image.width;
  canvas.height = image.height;
  const context = canvas.getContext('2d');
  context.drawImage(image, 0, 0);
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let sum = 0;
  const colours = new Set();
  for (let i = 0; i < data.length; i += 4) {
    sum += 0.2126 * data[i] + 0.7152 * data[i + 1] + 0.0722 * data[i + 2];
    colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
  }
  return {luminance: sum / (data.length / 4) / 255, colours: colours.size};
}
"""
MIN_COLOURS = 50


@pytest.mark.browser
def test_readme_screenshots_of_part_one(
    browser: Browser, shipped: list[Mail], screenshot_dir: Path
) -> None:
    part_one = next(m for m in shipped if m.name == "part-1")
    for name, (width, height), scale, scheme in SHOTS:
        context = browser.new_context(
            viewport={"width": width, "height": height},
            device_scale_factor=scale,
            is_mobile=width < CARD_MAX,
            color_scheme=scheme,  # type: ignore[arg-type]
        )
        try:
            page = context.new_page()
            page.set_content(part_one.html, wait_until="load")
            path = screenshot_dir / f"{name}.png"
            page.screenshot(path=str(path))
            data = base64.b64encode(path.read_bytes()).decode()
            seen: dict[str, float] = page.evaluate(PICTURE, f"data:image/png;base64,{data}")
        finally:
            context.close()
        assert png_size(path) == (width * scale, height * scale), name
        # The picture shows the mail in its colour scheme: light on white, or dark.
        if scheme == "dark":
            assert seen["luminance"] < 0.3, f"{name} is not dark: {seen}"
        else:
            assert seen["luminance"] > 0.7, f"{name} is not light: {seen}"
        assert seen["colours"] >= MIN_COLOURS, f"{name} looks blank: {seen}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name, *_ in SHOTS:
        assert f"docs/screenshots/{name}.png" in readme, f"README does not show {name}"

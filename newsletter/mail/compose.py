"""Builds the messages: Jinja2 layouts from `emails/`, Markdown bodies, inlined CSS, headers."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from email.utils import format_datetime, make_msgid, parseaddr
from importlib.resources import files
from pathlib import Path
from typing import Any, Protocol

import css_inline
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup, escape

from newsletter.config import Settings
from newsletter.mail.addresses import wire_address
from newsletter.mail.dkim_signing import DkimSigner
from newsletter.mail.mime import (
    HeaderError,
    Outgoing,
    assemble,
    checked_header,
    encode_address,
    encode_value,
    new_boundary,
)
from newsletter.mail.sandbox import (
    TOKEN_START,
    VALUE_TOKEN,
    AdminTemplateError,
    AdminTemplates,
    fill_values,
    token_value,
)
from newsletter.mail.tracking import CLICK, OPEN_STANDIN, click_standin, normalised, open_url
from newsletter.mail.tracking import body_links as _body_links
from newsletter.mail.tracking import step_links as _step_links
from newsletter.models import Sequence, Step
from newsletter.tokens import Tokens

__all__ = ["Composer", "HeaderError", "Outgoing", "Recipient", "Rendered", "checked_header"]

log = logging.getLogger(__name__)

# The top-level emails/ folder, shipped inside the package (see pyproject.toml), so that it is
# found the same way in a checkout, an editable install and a plain one.
EMAILS_DIR = Path(str(files("newsletter.emails")))
STEP_CACHE_SIZE = 256
# Stand-ins for the per-subscriber parts of a rendered step; plain ASCII so that escaping and
# CSS inlining leave them intact. Values from admin text have tokens of their own, which carry
# the value (sandbox.value_token).
_NAME_TOKEN = "NLSUBSTFIRSTNAME7d1c"
_URL_TOKEN = "NLSUBSTUNSUBURL7d1c"
_READER_TOKEN = "NLSUBSTREADER7d1c"
_PREFERENCES_TOKEN = "NLSUBSTPREFS7d1c"
_MD_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
# The name's stand-in or an admin value's token: both filled in one pass, last. Written with
# their common prefix outside the alternation, so that the regex engine looks for that literal
# as fast as str.find; an alternation at the top scans a whole mail 30 times slower.
_SHARED = os.path.commonprefix([_NAME_TOKEN, TOKEN_START])
_PERSONAL = re.compile(
    f"{_SHARED}(?:({_NAME_TOKEN[len(_SHARED) :]})|{VALUE_TOKEN.pattern[len(_SHARED) :]})"
)
_MARKDOWN = MarkdownIt("commonmark", {"html": False, "typographer": False})


# A link's address in a tracked mail (its stand-in), or None to leave it as it is.
Rewrite = Callable[[str], str | None]


def body_html(source: str, rewrite: Rewrite | None = None) -> str:
    """A Markdown body as HTML, its value tokens left in place for the caller to fill.

    A token in a link's or an image's address would let a subscriber's value choose where a
    click or a fetch goes, so that is refused (AdminTemplateError): values are text only.
    `rewrite` gives a tracked mail's links their stand-in addresses.
    """
    tokens = _MARKDOWN.parse(source)
    if TOKEN_START in source:
        for token in _inline_tokens(tokens):
            address = token.attrGet("href") if token.type == "link_open" else token.attrGet("src")
            if address is not None and TOKEN_START in str(address):
                raise AdminTemplateError(
                    "a personal value cannot be part of a link or an image's address"
                )
    # After the check, so that it always sees the addresses as written.
    if rewrite is not None:
        for link in _body_links(tokens):
            tracked = rewrite(str(link.attrGet("href") or ""))
            if tracked is not None:
                link.attrSet("href", tracked)
    return str(_MARKDOWN.renderer.render(tokens, _MARKDOWN.options, {}))


def sample_bodies(templates: AdminTemplates, source: str) -> Iterator[tuple[str, str]]:
    """(sample, body HTML with its values filled in) for each sample subscriber of the sandbox.

    What the checks at import look at: the HTML a reader would get, not only the source.
    A body without template tags is the same for everyone and is rendered once.
    """
    if "{" not in source:
        yield "any name", body_html(source)
        return
    for sample in templates.sample_renders(source):
        try:
            html = body_html(sample.output)
        except AdminTemplateError as exc:
            raise AdminTemplateError(f"for a subscriber with {sample.label}: {exc}") from None
        yield sample.label, fill_values(html, _html_text)


def _inline_tokens(tokens: list[Token]) -> Iterator[Token]:
    for token in tokens:
        yield token
        if token.children:  # an inline run, or an image's alt text
            yield from _inline_tokens(token.children)


def markdown_to_text(source: str, rewrite: Rewrite | None = None) -> str:
    """Readable plain text from Markdown: headings underlined, lists as dashes, links numbered.

    A link reads "its text [1]" in the flow, and the URLs follow as a numbered list, so the
    text part stays readable and every address is there to copy. `rewrite` as in body_html.
    """
    lines: list[str] = []
    urls: list[str] = []

    def number(match: re.Match[str]) -> str:
        url = match.group(2)
        if url not in urls:
            urls.append(url)
        return f"{match.group(1)} [{urls.index(url) + 1}]"

    for line in source.splitlines():
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        if heading:
            title = heading.group(2).strip()
            # Underlined to the length the reader sees, once values replace their tokens.
            underline = "=" if len(heading.group(1)) == 1 else "-"
            lines.extend([title, underline * len(fill_values(title))])
            continue
        line = re.sub(r"^(\s*)[*+]\s+", r"\1- ", line)
        line = _MD_LINK.sub(number, line)
        line = re.sub(r"\\([\\`*_{}\[\]()#+\-.!>])", r"\1", line)
        lines.append(line)
    text = "\n".join(lines).strip() + "\n"
    if urls:
        if rewrite is not None:
            urls = [rewrite(normalised(url)) or url for url in urls]
        text += "\nLinks:\n" + "".join(f"[{i}] {url}\n" for i, url in enumerate(urls, 1))
    return text


def _is_templated(step: Step) -> bool:
    return any("{" in text for text in (step.body_md, step.subject, step.preheader))


@dataclass(frozen=True)
class _Draft:
    """A rendered step with stand-ins for everything personal; `values`: it has value tokens."""

    rendered: Rendered
    values: bool
    # Its links and open image are stand-ins for a delivery's tracking tokens.
    tracked: bool = False


def _fill_personal(text: str, name: str, values: bool, convert: Callable[[str], str]) -> str:
    """`text` with the name's stand-in and every value token replaced, in one pass.

    One pass, so that a name or value that itself looks like a stand-in stays as it is.
    """
    if not values:
        return text.replace(_NAME_TOKEN, convert(name))
    return _PERSONAL.sub(lambda m: convert(name if m.group(1) else token_value(m.group(2))), text)


def _html_text(value: str) -> str:
    return str(escape(value))


@dataclass(frozen=True)
class _Tracking:
    """One delivery's tracking tokens, for a tracked draft's stand-ins."""

    tokens: Tokens
    delivery_id: int
    # Each link's token is signed once per mail: the HTML and the text part share it.
    signed: dict[str, str] = field(default_factory=dict)

    def click(self, match: re.Match[str]) -> str:
        token = self.signed.get(match.group(1))
        if token is None:
            token = self.tokens.click_token(self.delivery_id, int(match.group(1)))
            self.signed[match.group(1)] = token
        return token

    def fill(self, html: str, text: str) -> tuple[str, str]:
        html = html.replace(OPEN_STANDIN, self.tokens.open_token(self.delivery_id))
        return CLICK.sub(self.click, html), CLICK.sub(self.click, text)


def _fill(
    draft: _Draft,
    name: str,
    url: str,
    reader: str,
    preferences: str,
    tracking: _Tracking | None = None,
) -> Rendered:
    """One subscriber's copy of a draft: values escaped in the HTML, as they are in the text."""
    # The links first: they are ours and hold no stand-ins. The name and values last, so
    # nothing a subscriber typed is scanned again.
    html = draft.rendered.html.replace(_URL_TOKEN, str(escape(url)))
    text = draft.rendered.text.replace(_URL_TOKEN, url)
    html, text = html.replace(_READER_TOKEN, reader), text.replace(_READER_TOKEN, reader)
    html = html.replace(_PREFERENCES_TOKEN, preferences)
    text = text.replace(_PREFERENCES_TOKEN, preferences)
    if tracking is not None:
        html, text = tracking.fill(html, text)
    return Rendered(
        subject=draft.rendered.subject,
        html=_fill_personal(html, name, draft.values, _html_text),
        text=_fill_personal(text, name, draft.values, str),
    )


class Recipient(Protocol):
    """What composing needs of a subscriber (a Subscriber row, or a plain record of one)."""

    @property
    def id(self) -> int: ...
    @property
    def email(self) -> str: ...
    @property
    def first_name(self) -> str | None: ...


@dataclass(frozen=True)
class Addressee:
    """A Recipient as a plain value: a batch's subscriber, a test send's addressee."""

    id: int
    email: str
    first_name: str | None


@dataclass(frozen=True)
class Rendered:
    """A subject and both bodies of one mail."""

    subject: str
    text: str
    html: str


class Composer:
    """Renders system mails and sequence steps into wire-ready messages."""

    def __init__(self, settings: Settings, tokens: Tokens, emails_dir: Path = EMAILS_DIR) -> None:
        self.settings = settings
        self.tokens = tokens
        self.layouts = Environment(
            loader=FileSystemLoader(emails_dir),
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        # Text written by admins goes through the sandbox: no attribute access to internals,
        # no config, no environment, no loops, bounded size and time.
        self.admin_text = AdminTemplates()
        self.inliner = css_inline.CSSInliner(keep_style_tags=True)
        self._step_cache: dict[tuple[object, ...], _Draft] = {}
        self._from_header = self._encode_from(settings.mail_from)
        self._envelope_from = parseaddr(settings.mail_from)[1]
        self._message_id_key = hashlib.sha256(
            b"message-id:" + settings.secret_key.encode()
        ).digest()
        self._reply_to = (
            self._encode_from(settings.reply_to, "Reply-To") if settings.reply_to else None
        )
        # Loaded at start, so a missing or unreadable key fails the process, naming the setting.
        self.signer: DkimSigner | None = None
        if settings.dkim_selector and settings.dkim_private_key_file:
            self.signer = DkimSigner.from_file(
                settings.dkim_domain or settings.mail_from_domain,
                settings.dkim_selector,
                settings.dkim_private_key_file,
            )

    @staticmethod
    def _encode_from(value: str, name: str = "From") -> str:
        display, address = parseaddr(checked_header(name, value))
        return encode_address(name, display, address)

    # -- pieces -----------------------------------------------------------------------------

    def _page(self, name: str, context: dict[str, Any]) -> tuple[str, str]:
        html = self.layouts.get_template(f"{name}.html").render(**context)
        text = self.layouts.get_template(f"{name}.txt").render(**context)
        return self.inliner.inline(html), text.strip() + "\n"

    def _common(self, subscriber: Recipient) -> dict[str, Any]:
        return {
            "site_url": self.settings.site_url,
            "postal_address": self.settings.postal_address,
            "first_name": subscriber.first_name or "",
        }

    def unsubscribe_url(self, subscriber_id: int) -> str:
        """The one-click unsubscribe URL for a subscriber."""
        return (
            f"{self.settings.site_url}/unsubscribe/{self.tokens.unsubscribe_token(subscriber_id)}"
        )

    def preferences_url(self, subscriber_id: int) -> str:
        """The link to a subscriber's preferences page."""
        token = self.tokens.preferences_token(subscriber_id)
        return f"{self.settings.site_url}/preferences/{token}"

    def reader_url(self, subscriber_id: int, step_id: int | None = None) -> str:
        """The web archive of a subscriber's received parts, or one part in it."""
        base = f"{self.settings.site_url}/read/{self.tokens.reader_token(subscriber_id)}"
        return base if step_id is None else f"{base}/{step_id}"

    def confirm_url(self, subscriber: Recipient) -> str:
        """The signed confirmation URL for a pending subscriber."""
        token = self.tokens.confirm_token(subscriber.id, subscriber.email)
        return f"{self.settings.site_url}/confirm/{token}"

    def personalise(self, source: str, subscriber: Recipient) -> str:
        """Admin-written plain text (a subject) with the subscriber's values, as they are."""
        if "{" not in source:
            return source
        return self.admin_text.render(source, first_name=subscriber.first_name or "")

    def _marked(self, source: str, name: str) -> str:
        """Admin-written text with a value token for each output, to be filled after Markdown."""
        if "{" not in source:
            return source
        return self.admin_text.render_marked(source, first_name=name)

    # -- messages ---------------------------------------------------------------------------

    def confirmation(self, subscriber: Recipient, sequence: Sequence | None) -> Rendered:
        """The double opt-in mail."""
        title = sequence.title if sequence else "the newsletter"
        context = self._common(subscriber) | {
            "confirm_url": self.confirm_url(subscriber),
            "sequence_title": title,
            "preheader": f"One click to start {title}.",
            "valid_days": max(1, self.settings.confirm_max_age_seconds // 86400),
        }
        html, text = self._page("system/confirm", context)
        return Rendered(subject=f"Confirm your subscription to {title}", text=text, html=html)

    def step(
        self,
        subscriber: Recipient,
        step: Step,
        sequence: Sequence,
        total: int,
        *,
        unsubscribe_url: str | None = None,
        cache: bool = True,
        delivery_id: int | None = None,
    ) -> Rendered:
        """One part of a series, with its Part k of N header, teaser and closing resources.

        The step is rendered once (Markdown, layout, CSS inlining) with stand-ins for the name
        and the personal links, and cached; each subscriber's copy only swaps in their own.
        Steps whose text uses template tags are rendered per subscriber, their values as
        tokens that are filled in the same way. Either way the name is text, never markup.
        `cache=False` is for a step that is not a stored row (a draft being edited): its id
        and update time say nothing about its text. A mail of a delivery (`delivery_id`) of a
        sequence that tracks gets tracked links and the open image; nothing else does.
        """
        url = unsubscribe_url or self.unsubscribe_url(subscriber.id)
        name = subscriber.first_name or ""
        reader = self.tokens.reader_token(subscriber.id)
        tracked = bool(sequence.tracking) and delivery_id is not None
        if _is_templated(step) or not cache:
            draft = self._render_step(step, sequence, total, name, tracked=tracked)
        else:
            key = (step.id, step.updated_at, total, sequence.title, bool(name), tracked)
            cached = self._step_cache.get(key)
            if cached is None:
                if len(self._step_cache) >= STEP_CACHE_SIZE:
                    self._step_cache.clear()
                cached = self._render_step(step, sequence, total, name, tracked=tracked)
                self._step_cache[key] = cached
            draft = cached
        tracking = (
            _Tracking(self.tokens, delivery_id)
            if draft.tracked and delivery_id is not None
            else None
        )
        return _fill(
            draft, name, url, reader, self.tokens.preferences_token(subscriber.id), tracking
        )

    def web_page(self, subscriber: Recipient, step: Step, sequence: Sequence) -> str:
        """A received part as a web page (the archive), without the "view in browser" link."""
        name = subscriber.first_name or ""
        draft = self._render_step(step, sequence, len(sequence.steps), name, in_browser=True)
        url = self.unsubscribe_url(subscriber.id)
        reader = self.tokens.reader_token(subscriber.id)
        preferences = self.tokens.preferences_token(subscriber.id)
        return _fill(draft, name, url, reader, preferences).html

    def _render_step(
        self,
        step: Step,
        sequence: Sequence,
        total: int,
        name: str,
        *,
        in_browser: bool = False,
        tracked: bool = False,
    ) -> _Draft:
        """A step with stand-ins for the name and personal links, admin values as tokens.

        `name` fills the admin text (a templated step is rendered per subscriber); the
        layout's greeting gets a stand-in, so the returned draft holds no subscriber text.
        `tracked`: the step's own links (never ours) and an open image get stand-ins too.
        """
        body_md = self._marked(step.body_md, name)
        subject = self._marked(step.subject, name)
        resources = [dict(r) for r in (step.resources or [])]
        rewrite = click_standin(_step_links(step), self.settings.site_url) if tracked else None
        if rewrite is not None:
            for resource in resources:
                url = resource.get("url") or ""
                resource["url"] = rewrite(url) or url
        for resource in resources:
            if not resource.get("url"):
                log.warning(
                    "sending %s step %d with a resource link that has no URL: %r",
                    sequence.slug,
                    step.position,
                    resource.get("title"),
                )
        context = {
            "site_url": self.settings.site_url,
            "postal_address": self.settings.postal_address,
            "first_name": _NAME_TOKEN if name else "",
            "subject": subject,
            "preheader": self._marked(step.preheader, name),
            "sequence_title": sequence.title,
            "part": step.position,
            "total": total,
            "body_html": Markup(body_html(body_md, rewrite)),
            "body_text": markdown_to_text(body_md, rewrite),
            "teaser": step.teaser,
            "resources": resources,
            "resources_intro": step.resources_intro,
            "unsubscribe_url": _URL_TOKEN,
            "view_url": f"{self.settings.site_url}/read/{_READER_TOKEN}/{step.id}",
            "archive_url": f"{self.settings.site_url}/read/{_READER_TOKEN}",
            "preferences_url": f"{self.settings.site_url}/preferences/{_PREFERENCES_TOKEN}",
            "in_browser": in_browser,
            "tracking": tracked,
            "open_url": open_url(self.settings.site_url) if tracked else None,
        }
        html, text = self._page("layouts/step", context)
        # The subject is a header, not HTML: its values go in as they are.
        rendered = Rendered(subject=fill_values(subject), text=text, html=html)
        return _Draft(rendered, values=TOKEN_START in html or TOKEN_START in text, tracked=tracked)

    def part(
        self,
        recipient: Recipient,
        step: Step,
        sequence: Sequence,
        now: datetime,
        *,
        message_id: str | None = None,
        subject_prefix: str = "",
        total: int | None = None,
        cache: bool = True,
        delivery_id: int | None = None,
    ) -> Outgoing:
        """One part of a series as wire bytes, with its List-Id and one-click unsubscribe.

        `total` is the number of parts when it is not the live sequence's (a draft's step);
        `delivery_id` names the delivery a tracked mail counts opens and clicks for.
        """
        url = self.unsubscribe_url(recipient.id)
        count = len(sequence.steps) if total is None else total
        rendered = self.step(
            recipient,
            step,
            sequence,
            count,
            unsubscribe_url=url,
            cache=cache,
            delivery_id=delivery_id,
        )
        if subject_prefix:
            rendered = replace(rendered, subject=subject_prefix + rendered.subject)
        return self.wire(
            rendered,
            recipient,
            now,
            list_id=self.list_id(sequence),
            unsubscribe_url=url,
            message_id=message_id,
        )

    def message_id(self, delivery_id: int, created_at: datetime) -> str:
        """The Message-ID of a delivery: the same on every attempt, unique per deployment.

        Derived, not random, so a retry carries the ID of a copy that may have arrived, without
        a write before each send; keyed, so it reveals neither the id nor the list's size.
        """
        stamp = f"{delivery_id}.{created_at.timestamp():.6f}".encode()
        digest = hmac.new(self._message_id_key, stamp, hashlib.sha256).hexdigest()[:32]
        return f"<{digest}@{self.settings.mail_from_domain}>"

    def wire(
        self,
        rendered: Rendered,
        subscriber: Recipient,
        now: datetime,
        *,
        list_id: str | None = None,
        unsubscribe_url: str | None = None,
        message_id: str | None = None,
    ) -> Outgoing:
        """The mail as wire bytes, with checked headers; `message_id` keeps a retry's ID."""
        message_id = message_id or make_msgid(domain=self.settings.mail_from_domain)
        # The stored address may have a Unicode domain; SMTP and the header carry its xn-- form.
        address = wire_address(subscriber.email)
        headers = [
            ("From", self._from_header),
            ("To", encode_address("To", subscriber.first_name or "", address)),
            ("Subject", encode_value("Subject", rendered.subject)),
            ("Date", format_datetime(now)),
            ("Message-ID", checked_header("Message-ID", message_id)),
        ]
        if self._reply_to:
            headers.append(("Reply-To", self._reply_to))
        if list_id:
            headers.append(("List-Id", encode_value("List-Id", list_id)))
        if unsubscribe_url:
            headers.append(("List-Unsubscribe", self._list_unsubscribe(unsubscribe_url)))
            headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
        data = assemble(headers, rendered.text, rendered.html, new_boundary())
        if self.signer is not None:
            data = self.signer.sign(data)
        return Outgoing(self._envelope_from, (address,), data, message_id)

    def _list_unsubscribe(self, url: str) -> str:
        """The https one-click link, and a mailto whose subject carries the same token."""
        value = f"<{url}>"
        mailto = self.settings.unsubscribe_mailto
        if mailto:
            token = url.rsplit("/", 1)[-1]
            value += f", <mailto:{mailto}?subject=unsubscribe%20{token}>"
        return checked_header("List-Unsubscribe", value)

    def list_id(self, sequence: Sequence) -> str:
        """The List-Id of a sequence: its title and `<slug.domain>`."""
        title = sequence.title.replace('"', "'")
        return f'"{title}" <{sequence.slug}.{self.settings.mail_from_domain}>'

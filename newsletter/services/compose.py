"""Builds the messages: Jinja2 layouts from `emails/`, Markdown bodies, inlined CSS, headers."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass, replace
from datetime import datetime
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from typing import Any, Protocol

import css_inline
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup, escape

from newsletter.config import Settings
from newsletter.models import Sequence, Step
from newsletter.services.addresses import wire_address
from newsletter.services.admin_templates import AdminTemplates
from newsletter.services.dkim_sign import DkimSigner
from newsletter.services.mime import (
    HeaderError,
    Outgoing,
    assemble,
    checked_header,
    encode_address,
    encode_value,
    new_boundary,
)
from newsletter.services.tokens import Tokens

__all__ = ["Composer", "HeaderError", "Outgoing", "Recipient", "Rendered", "checked_header"]

log = logging.getLogger(__name__)

EMAILS_DIR = Path(__file__).resolve().parents[2] / "emails"
STEP_CACHE_SIZE = 256
# Stand-ins for the per-subscriber parts of a cached step; plain ASCII so that escaping and
# CSS inlining leave them intact.
_NAME_TOKEN = "NLSUBSTFIRSTNAME7d1c"
_URL_TOKEN = "NLSUBSTUNSUBURL7d1c"
_READER_TOKEN = "NLSUBSTREADER7d1c"
_MD_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def markdown_to_text(source: str) -> str:
    """Readable plain text from Markdown: headings underlined, lists as dashes, links numbered.

    A link reads "its text [1]" in the flow, and the URLs follow as a numbered list, so the
    text part stays readable and every address is there to copy.
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
            lines.extend([title, ("=" if len(heading.group(1)) == 1 else "-") * len(title)])
            continue
        line = re.sub(r"^(\s*)[*+]\s+", r"\1- ", line)
        line = _MD_LINK.sub(number, line)
        line = re.sub(r"\\([\\`*_{}\[\]()#+\-.!>])", r"\1", line)
        lines.append(line)
    text = "\n".join(lines).strip() + "\n"
    if urls:
        text += "\nLinks:\n" + "".join(f"[{i}] {url}\n" for i, url in enumerate(urls, 1))
    return text


class Recipient(Protocol):
    """What composing needs of a subscriber (a Subscriber row, or a plain record of one)."""

    @property
    def id(self) -> int: ...
    @property
    def email(self) -> str: ...
    @property
    def first_name(self) -> str | None: ...


@dataclass(frozen=True)
class Reader:
    """A Recipient without a database row: a test send's addressee, a benchmark's reader."""

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
        self.markdown = MarkdownIt("commonmark", {"html": False, "typographer": False})
        self.inliner = css_inline.CSSInliner(keep_style_tags=True)
        self._step_cache: dict[tuple[object, ...], Rendered] = {}
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

    def reader_url(self, subscriber_id: int, step_id: int | None = None) -> str:
        """The web archive of a subscriber's received parts, or one part in it."""
        base = f"{self.settings.site_url}/read/{self.tokens.reader_token(subscriber_id)}"
        return base if step_id is None else f"{base}/{step_id}"

    def confirm_url(self, subscriber: Recipient) -> str:
        """The signed confirmation URL for a pending subscriber."""
        token = self.tokens.confirm_token(subscriber.id, subscriber.email)
        return f"{self.settings.site_url}/confirm/{token}"

    def personalise(self, source: str, subscriber: Recipient) -> str:
        """Fill admin-written text with the subscriber's fields, inside the sandbox."""
        if "{" not in source:
            return source
        return self.admin_text.render(source, first_name=subscriber.first_name or "")

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
    ) -> Rendered:
        """One part of a series, with its Part k of N header, teaser and closing resources.

        The step is rendered once (Markdown, layout, CSS inlining) and cached; each subscriber's
        copy only swaps in their name and unsubscribe link. Steps whose text uses template
        tags are rendered per subscriber.
        """
        url = unsubscribe_url or self.unsubscribe_url(subscriber.id)
        name = subscriber.first_name or ""
        reader = self.tokens.reader_token(subscriber.id)
        if any("{" in text for text in (step.body_md, step.subject, step.preheader)):
            return self._render_step(step, sequence, total, name, url, reader, subscriber)
        key = (step.id, step.updated_at, total, sequence.title, bool(name))
        template = self._step_cache.get(key)
        if template is None:
            if len(self._step_cache) >= STEP_CACHE_SIZE:
                self._step_cache.clear()
            token_name = _NAME_TOKEN if name else ""
            template = self._render_step(
                step, sequence, total, token_name, _URL_TOKEN, _READER_TOKEN, subscriber
            )
            self._step_cache[key] = template
        html = template.html.replace(_NAME_TOKEN, str(escape(name)))
        text = template.text.replace(_NAME_TOKEN, name)
        return Rendered(
            subject=template.subject,
            html=html.replace(_URL_TOKEN, str(escape(url))).replace(_READER_TOKEN, reader),
            text=text.replace(_URL_TOKEN, url).replace(_READER_TOKEN, reader),
        )

    def web_page(self, subscriber: Recipient, step: Step, sequence: Sequence) -> str:
        """A received part as a web page (the archive), without the "view in browser" link."""
        return self._render_step(
            step,
            sequence,
            len(sequence.steps),
            subscriber.first_name or "",
            self.unsubscribe_url(subscriber.id),
            self.tokens.reader_token(subscriber.id),
            subscriber,
            in_browser=True,
        ).html

    def _render_step(
        self,
        step: Step,
        sequence: Sequence,
        total: int,
        first_name: str,
        unsubscribe_url: str,
        reader: str,
        subscriber: Recipient,
        *,
        in_browser: bool = False,
    ) -> Rendered:
        body_md = self.personalise(step.body_md, subscriber)
        resources = [dict(r) for r in (step.resources or [])]
        for resource in resources:
            if not resource.get("url"):
                log.warning(
                    "sending %s step %d with a resource link that has no URL: %r",
                    sequence.slug,
                    step.position,
                    resource.get("title"),
                )
        context = self._common(subscriber) | {
            "first_name": first_name,
            "subject": self.personalise(step.subject, subscriber),
            "preheader": self.personalise(step.preheader, subscriber),
            "sequence_title": sequence.title,
            "part": step.position,
            "total": total,
            "body_html": Markup(self.markdown.render(body_md)),
            "body_text": markdown_to_text(body_md),
            "teaser": step.teaser,
            "resources": resources,
            "resources_intro": step.resources_intro,
            "unsubscribe_url": unsubscribe_url,
            "view_url": f"{self.settings.site_url}/read/{reader}/{step.id}",
            "archive_url": f"{self.settings.site_url}/read/{reader}",
            "in_browser": in_browser,
        }
        html, text = self._page("layouts/step", context)
        return Rendered(subject=context["subject"], text=text, html=html)

    def part(
        self,
        recipient: Recipient,
        step: Step,
        sequence: Sequence,
        now: datetime,
        *,
        message_id: str | None = None,
        subject_prefix: str = "",
    ) -> Outgoing:
        """One part of a series as wire bytes, with its List-Id and one-click unsubscribe."""
        url = self.unsubscribe_url(recipient.id)
        rendered = self.step(recipient, step, sequence, len(sequence.steps), unsubscribe_url=url)
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

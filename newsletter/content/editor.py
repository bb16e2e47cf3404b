"""What the sequence editor shows and what its publish button adds to `publishing.publish`.

The editor works on a sequence's draft when one is open, and otherwise shows the published
steps (the first edit opens the draft). A publish is refused, naming the step and the link,
while any "Keep reading" link has no URL: the import may leave one empty (the shipped
article's links were lost), but nobody should receive a part that says "[link coming soon]"
because an editor did not notice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from newsletter.content import drafts, publishing
from newsletter.content.drafts import DraftError
from newsletter.content.preview import StepFields
from newsletter.models import Sequence, SequenceVersion
from newsletter.schedule import REAL_DAY


@dataclass(frozen=True)
class EditorView:
    """The steps in the editor, in order (snapshot entries with their keys), and the draft."""

    steps: list[dict[str, Any]]
    settings: dict[str, Any]
    draft: SequenceVersion | None

    def index_of(self, key: str) -> int | None:
        """Where the step `key` is (0 is first), or None when there is no such step."""
        for index, step in enumerate(self.steps):
            if step["key"] == key:
                return index
        return None

    def fields(self, index: int) -> StepFields:
        """The editable fields of the step at `index`."""
        return StepFields.of(self.steps[index])


def editor_view(session: Session, sequence: Sequence) -> EditorView:
    """The sequence as the editor shows it: its open draft, else its published steps."""
    draft = drafts.open_draft(session, sequence)
    snapshot = draft.snapshot if draft is not None else drafts.snapshot_of(sequence)
    steps = list(snapshot.get("steps", []))
    settings = dict(snapshot.get("settings", {}))
    return EditorView(steps=steps, settings=settings, draft=draft)


def unfilled_links(steps: list[dict[str, Any]]) -> list[str]:
    """A sentence for every "Keep reading" link without a URL, naming its step and title."""
    return [
        f"Part {number}: the link “{link.get('title') or '(no title)'}” has no URL."
        for number, step in enumerate(steps, start=1)
        for link in step.get("resources") or []
        if not str(link.get("url") or "").strip()
    ]


def publish(
    session: Session,
    sequence: Sequence,
    actor_email: str,
    *,
    now: datetime | None = None,
    day_seconds: float = REAL_DAY,
) -> SequenceVersion:
    """Publish the sequence's draft (publishing.publish), refusing while a link has no URL.

    Raises DraftError naming the field ("resources") and the part, PublishBusy while mails of
    the sequence are being sent; nothing is written then.
    """
    draft = drafts.open_draft(session, sequence)
    if draft is None:
        raise DraftError("version", "There is no draft to publish.")
    missing = unfilled_links(drafts.draft_steps(draft))
    if missing:
        raise DraftError("resources", " ".join(missing) + " Fill it in before publishing.")
    return publishing.publish(session, sequence, actor_email, now=now, day_seconds=day_seconds)

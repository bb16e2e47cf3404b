"""Forms of the sequence pages (Flask-WTF: a CSRF token on every one).

They parse and bound what a browser sends; the rules of the text itself (the sandbox, https
links, alt text) are the content room's, checked when the form is saved or previewed.
"""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import (
    BooleanField,
    EmailField,
    FieldList,
    Form,
    FormField,
    IntegerField,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional
from wtforms.widgets import CheckboxInput, ListWidget

from newsletter.content.catalogue import TITLE_MAX, WEEKDAYS
from newsletter.content.drafts import DAY_OFFSET_MAX, PREHEADER_MAX, SUBJECT_MAX, TEASER_MAX
from newsletter.content.preview import (
    MAX_RESOURCES,
    RESOURCE_BLURB_MAX,
    RESOURCE_TITLE_MAX,
    RESOURCE_URL_MAX,
    sample_labels,
)
from newsletter.content.proposal import MAX_ARTICLE_CHARS, MAX_PARTS
from newsletter.mail.sandbox import MAX_SOURCE_CHARS

SLUG_HINT = "Lower-case letters, digits and dashes; it names the series in signup links."


class NewSequenceForm(FlaskForm):  # type: ignore[misc]
    """An empty sequence: its title and slug."""

    title = StringField(
        "Title", validators=[DataRequired(message="Enter a title."), Length(max=TITLE_MAX)]
    )
    slug = StringField(
        "Slug (the name in links)",
        validators=[DataRequired(message="Enter a slug."), Length(max=100)],
    )


class ImportForm(FlaskForm):  # type: ignore[misc]
    """An article (uploaded or pasted), how many parts, and the new sequence's names or the
    sequence whose draft it becomes."""

    article = FileField("Upload an article (.txt or .md)")
    text = TextAreaField("Or paste its text", validators=[Length(max=MAX_ARTICLE_CHARS)])
    markdown = BooleanField("The text is Markdown")
    parts = IntegerField(
        "Number of parts (empty: sized by reading time)",
        validators=[
            Optional(),
            NumberRange(min=1, max=MAX_PARTS, message=f"From 1 to {MAX_PARTS}."),
        ],
    )
    title = StringField("Title of the series", validators=[Length(max=TITLE_MAX)])
    slug = StringField("Slug (the name in links)", validators=[Length(max=100)])
    # The choices are the sequences (`proposal.draft_targets`), set by the view; 0 is none.
    into = SelectField("Sequence", coerce=int, validate_choice=True, default=0)


class SettingsForm(FlaskForm):  # type: ignore[misc]
    """The title, the send window and whether its mails count opens and clicks."""

    title = StringField(
        "Title", validators=[DataRequired(message="Enter a title."), Length(max=TITLE_MAX)]
    )
    send_hour = SelectField(
        "Send from (local hour)",
        coerce=int,
        choices=[SelectChoice(h, f"{h:02d}:00") for h in range(24)],
        validators=[InputRequired()],
    )
    send_end_hour = SelectField(
        "Until (local hour)",
        coerce=int,
        choices=[SelectChoice(h, f"{h:02d}:00") for h in range(1, 25)],
        validators=[InputRequired()],
    )
    send_days = SelectMultipleField(
        "Days",
        coerce=int,
        choices=[SelectChoice(n, day) for n, day in enumerate(WEEKDAYS, start=1)],
        widget=ListWidget(prefix_label=False),
        option_widget=CheckboxInput(),
    )
    tracking = BooleanField("Track clicks and opens")


class TestSendForm(FlaskForm):  # type: ignore[misc]
    """Which part, to which address, greeting which name."""

    __test__ = False  # not a pytest test class, whatever its name

    step = SelectField("Part", choices=[], validate_choice=True)
    email = EmailField(
        "Send to",
        validators=[DataRequired(message="Enter an email address."), Length(max=320)],
    )
    first_name = StringField("Greet them as (optional)", validators=[Length(max=100)])


class ResourceForm(Form):  # type: ignore[misc]
    """One "Keep reading" link (no CSRF token of its own: it lives inside StepForm)."""

    title = StringField("Link text", validators=[Length(max=RESOURCE_TITLE_MAX)])
    blurb = StringField("Blurb (optional)", validators=[Length(max=RESOURCE_BLURB_MAX)])
    url = StringField("URL (https://)", validators=[Length(max=RESOURCE_URL_MAX)])


class StepForm(FlaskForm):  # type: ignore[misc]
    """Every field of a step, as the editor shows it."""

    subject = StringField("Subject", validators=[Length(max=SUBJECT_MAX)])
    preheader = StringField(
        "Preheader (the inbox preview line)", validators=[Length(max=PREHEADER_MAX)]
    )
    day_offset = IntegerField(
        "Day (0 is the day they confirm)",
        validators=[
            InputRequired(message="Enter a day."),
            NumberRange(min=0, max=DAY_OFFSET_MAX, message=f"A day from 0 to {DAY_OFFSET_MAX}."),
        ],
    )
    body_md = TextAreaField("Body (Markdown)", validators=[Length(max=MAX_SOURCE_CHARS)])
    teaser = StringField("Teaser of the next part", validators=[Length(max=TEASER_MAX)])
    resources_intro = TextAreaField(
        "Introduction to the links (optional)", validators=[Length(max=MAX_SOURCE_CHARS)]
    )
    resources = FieldList(FormField(ResourceForm), max_entries=MAX_RESOURCES)
    sample = SelectField(
        "Preview for a subscriber with",
        coerce=int,
        choices=[SelectChoice(n, label) for n, label in enumerate(sample_labels())],
        default=0,
    )

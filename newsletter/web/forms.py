"""Forms of the public pages (Flask-WTF: CSRF protection and field validation)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from flask_wtf import FlaskForm
from wtforms import (
    EmailField,
    HiddenField,
    RadioField,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, Optional

from newsletter.audience.subscriptions import LEAVING_DETAIL_MAX, LEAVING_REASONS


class SignupForm(FlaskForm):  # type: ignore[misc]
    """Address, optional first name, and the time zone the browser reports."""

    email = EmailField(
        "Email address",
        validators=[DataRequired(message="Enter your email address."), Length(max=320)],
    )
    first_name = StringField("First name (optional)", validators=[Optional(), Length(max=100)])
    time_zone = HiddenField(validators=[Optional(), Length(max=64)])
    # The defences (newsletter.web.defences) read these two from the posted form themselves.
    homepage = StringField("Leave this field empty")
    stamp = HiddenField()


class EmbedSignupForm(SignupForm):
    """The signup form pasted on another site: no CSRF token (it cannot carry our cookie); the
    Origin check and the defences stand in for it."""

    class Meta:
        csrf = False


class ResendForm(FlaskForm):  # type: ignore[misc]
    """ "Send the confirmation again": the address, and the honeypot."""

    email = EmailField(
        "Email address",
        validators=[DataRequired(message="Enter your email address."), Length(max=320)],
    )
    homepage = StringField("Leave this field empty")


SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
MAX_SLUG_LENGTH = 100  # the width of the columns they land in (consent form, sequence slug)
SIGNUP_LINK_PARAMETERS = ("form", "sequence")


def signup_link_args(args: Mapping[str, str]) -> dict[str, str]:
    """The signup link's own query parameters (which form, which series), validated.

    Only these two, and only slug-shaped: anything else in the query string is ignored, so it
    can never reach url_for (where `_external`, `_scheme` or `_method` would change the URL).
    Raises ValueError naming the bad parameter.
    """
    chosen = {}
    for name in SIGNUP_LINK_PARAMETERS:
        value = args.get(name, "")
        if not value:
            continue
        if len(value) > MAX_SLUG_LENGTH or not SLUG.fullmatch(value):
            raise ValueError(
                f"The signup link's {name!r} must be lower-case letters, digits and dashes "
                f"(at most {MAX_SLUG_LENGTH})."
            )
        chosen[name] = value
    return chosen


class UnsubscribeForm(FlaskForm):  # type: ignore[misc]
    """A button; the token in the URL is the credential."""


class LeavingReasonForm(FlaskForm):  # type: ignore[misc]
    """Why someone left: one of the offered reasons, and their own words if they like."""

    reason = RadioField(
        "Why did you leave? (optional)",
        choices=[SelectChoice(key, label) for key, label in LEAVING_REASONS.items()],
        validators=[DataRequired(message="Choose one of the reasons.")],
    )
    detail = TextAreaField(
        "Anything you would like to add? (optional)",
        validators=[Optional(), Length(max=LEAVING_DETAIL_MAX)],
    )


class ConfirmForm(FlaskForm):  # type: ignore[misc]
    """A button; the token in the URL is the credential, the click is the consent."""


class TimingForm(FlaskForm):  # type: ignore[misc]
    """The reader's time zone and preferred send hour ("" for when the window opens)."""

    time_zone = SelectField("Time zone", validate_choice=False)
    send_hour = SelectField("Preferred send hour", validate_choice=False)


class CourseForm(FlaskForm):  # type: ignore[misc]
    """A button acting on one of the reader's series (pause, resume, restart)."""

    enrollment = HiddenField()
    mode = HiddenField()  # resume: "left-off" or "catch-up"


class SequenceForm(FlaskForm):  # type: ignore[misc]
    """Another series to join, or to switch to from one of theirs (`leaving`)."""

    sequence = SelectField("Series", validate_choice=False)
    leaving = HiddenField()


class ButtonForm(FlaskForm):  # type: ignore[misc]
    """A button; the token in the URL is the credential (leave, download, delete)."""

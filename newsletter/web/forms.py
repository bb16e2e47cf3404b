"""Forms of the public pages (Flask-WTF: CSRF protection and field validation)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import EmailField, HiddenField, StringField
from wtforms.validators import DataRequired, Length, Optional


class SignupForm(FlaskForm):  # type: ignore[misc]
    """Address, optional first name, and the time zone the browser reports."""

    email = EmailField(
        "Email address",
        validators=[DataRequired(message="Enter your email address."), Length(max=320)],
    )
    first_name = StringField("First name (optional)", validators=[Optional(), Length(max=100)])
    time_zone = HiddenField(validators=[Optional(), Length(max=64)])


class UnsubscribeForm(FlaskForm):  # type: ignore[misc]
    """A button; the token in the URL is the credential."""


class ConfirmForm(FlaskForm):  # type: ignore[misc]
    """A button; the token in the URL is the credential, the click is the consent."""

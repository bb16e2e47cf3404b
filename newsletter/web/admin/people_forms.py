"""Forms of the subscribers and imports pages (Flask-WTF: a CSRF token on every one)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import BooleanField, RadioField, SelectField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, InputRequired

from newsletter.audience.csv_import import FIELD_LABELS


class EraseForm(FlaskForm):  # type: ignore[misc]
    """The second step of an erasure: the admin says they mean it."""

    confirm = BooleanField(
        "Yes, erase this person's personal data for good",
        validators=[DataRequired(message="Tick the box to confirm the erasure.")],
    )


class UploadForm(FlaskForm):  # type: ignore[misc]
    """A CSV file of people."""

    file = FileField(
        "CSV file (UTF-8, with a header row)",
        validators=[FileRequired(message="Choose a CSV file.")],
    )


CONSENT_CHOICES = [
    SelectChoice(
        "confirm", "Send confirmation mails: they start once they confirm (double opt-in)"
    ),
    SelectChoice(
        "attest",
        "I attest they already consented: they start at once, and the consent is recorded "
        "as imported by me",
    ),
]


class MappingForm(FlaskForm):  # type: ignore[misc]
    """Which column holds each field, and how the people come in."""

    # The columns are checked by csv_import.configure, which says what is wrong beside the field.
    email = SelectField(FIELD_LABELS["email"], validate_choice=False)
    first_name = SelectField(FIELD_LABELS["first_name"], validate_choice=False)
    time_zone = SelectField(FIELD_LABELS["time_zone"], validate_choice=False)
    consent = RadioField(
        "How do they come in?",
        choices=CONSENT_CHOICES,
        validators=[InputRequired(message="Choose how these people come in.")],
    )

    def offer(self, header: list[str]) -> None:
        """The file's columns as the choices of each field."""
        columns = [
            (str(i), f"Column {i + 1}: {name or '(no name)'}") for i, name in enumerate(header)
        ]
        self.email.choices = [("", "Choose a column")] + columns
        self.first_name.choices = [("", "None")] + columns
        self.time_zone.choices = [("", "None (UTC)")] + columns


class StepForm(FlaskForm):  # type: ignore[misc]
    """A step of the person's sequence, for "move to a step" and "resend a step"."""

    # The domain refuses a step that does not fit (audience/moves.py), with its reason.
    step = SelectField("Step", validate_choice=False, validators=[InputRequired()])

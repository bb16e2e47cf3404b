"""Forms of the admin pages (Flask-WTF: a CSRF token on every one)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length

from newsletter.admins.accounts import MAX_EMAIL, MAX_PASSWORD


class SignInForm(FlaskForm):  # type: ignore[misc]
    """Address and password."""

    email = EmailField(
        "Email address",
        validators=[DataRequired(message="Enter your email address."), Length(max=MAX_EMAIL)],
    )
    password = PasswordField(
        "Password",
        validators=[DataRequired(message="Enter your password."), Length(max=MAX_PASSWORD)],
    )


class CodeForm(FlaskForm):  # type: ignore[misc]
    """The six digits of an authenticator app."""

    code = StringField(
        "Code from your authenticator app",
        validators=[DataRequired(message="Enter the six-digit code."), Length(max=12)],
    )


class ChangePasswordForm(FlaskForm):  # type: ignore[misc]
    """The current password (unless it is a one-time password) and the new one, twice."""

    current = PasswordField("Current password", validators=[Length(max=MAX_PASSWORD)])
    new = PasswordField(
        "New password (at least 12 characters)",
        validators=[DataRequired(message="Enter a new password."), Length(max=MAX_PASSWORD)],
    )
    confirm = PasswordField(
        "New password again",
        validators=[
            DataRequired(message="Enter the new password again."),
            Length(max=MAX_PASSWORD),
        ],
    )


class ButtonForm(FlaskForm):  # type: ignore[misc]
    """A button whose only field is the CSRF token (sign out, deactivate, ...)."""


ROLE_CHOICES = [
    SelectChoice("editor", "Editor: content and subscribers"),
    SelectChoice("owner", "Owner: everything"),
]


class AddAccountForm(FlaskForm):  # type: ignore[misc]
    """A new account: its address and role (the password is a one-time one, shown once)."""

    email = EmailField(
        "Email address",
        validators=[DataRequired(message="Enter an email address."), Length(max=MAX_EMAIL)],
    )
    role = SelectField("Role", choices=ROLE_CHOICES, default="editor")


class RoleForm(FlaskForm):  # type: ignore[misc]
    """A new role for one account."""

    role = SelectField(
        "Role", choices=[SelectChoice("editor", "Editor"), SelectChoice("owner", "Owner")]
    )

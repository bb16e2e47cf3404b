"""The signup page and one signup from a posted form, shared by the signup page and the
embedded form."""

from __future__ import annotations

from flask import render_template, request

from newsletter import clock
from newsletter.audience import subscriptions
from newsletter.content.overview import kept_overview
from newsletter.content.sequences import sequence_for
from newsletter.db import db
from newsletter.mail import addresses
from newsletter.mail.deliverability import UNDELIVERABLE
from newsletter.runtime import runtime
from newsletter.tasks import kick
from newsletter.web import defences
from newsletter.web.forms import SignupForm


def _domain_refused(email: str) -> bool:
    try:
        domain = addresses.normalise(email).rpartition("@")[2]
    except addresses.AddressError:
        return False  # the signup itself says what is wrong with it
    return not runtime().deliverability().receives_mail(domain)


def submit(form: SignupForm, link: dict[str, str], default_form: str) -> bool:
    """Sign up with a validated form's values. True means answer "check your inbox": the
    signup was taken, or ignored without a word (a known address, or a script caught by the
    defences). False means the form now carries the error to show beside its field."""
    settings = runtime().settings
    if defences.looks_automated(settings.signup_min_fill_seconds):
        return True
    email = form.email.data or ""
    if settings.check_deliverability and _domain_refused(email):
        form.email.errors = [*form.email.errors, UNDELIVERABLE]
        return False
    req = subscriptions.SignupRequest(
        email=email,
        first_name=form.first_name.data,
        time_zone=form.time_zone.data,
        ip=request.remote_addr,
        user_agent=request.user_agent.string,
        form=link.get("form", default_form),
        sequence_slug=link.get("sequence"),
    )
    try:
        with db.transaction() as session:
            subscriptions.signup(session, req, clock.now())
    except subscriptions.SignupError as exc:
        field = getattr(form, exc.field, None)
        if field is not None:
            field.errors = [*field.errors, str(exc)]
        else:
            form.form_errors.append(str(exc))
        return False
    kick()
    return True


def _nameless(source: str) -> str:
    """Admin text as a reader without a first name gets it (the mail's own renderer)."""
    return runtime().composer.admin_text.render(source, first_name="") if "{" in source else source


def page(form: SignupForm, link: dict[str, str]) -> str:
    """The signup page for the series the link names (or the default one), with `form`."""
    with db.session() as session:
        sequence = sequence_for(session, link.get("sequence"))
        about = kept_overview(sequence, _nameless) if sequence else None
        return render_template(
            "signup.html", form=form, sequence=sequence, overview=about, link=link
        )

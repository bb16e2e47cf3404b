"""Operator commands: `flask --app web init | import-article | create-admin | status | …`."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click
from flask import Flask
from flask.cli import with_appcontext

from newsletter.content import sequences
from newsletter.content.article import ArticleError
from newsletter.content.results import PERIODS
from newsletter.db import db
from newsletter.runtime import runtime

MAX_UNSUBSCRIBE_MAIL_BYTES = 1_000_000


def _print_report(report: sequences.ImportReport) -> None:
    seq = report.sequence
    click.echo(f"sequence {seq.slug!r}: {seq.title} ({report.parts} parts)")
    for step in seq.steps:
        click.echo(f"  part {step.position} (day {step.day_offset}): {step.subject}")
    for dropped in report.dropped:
        click.echo(f"  dropped boilerplate: {dropped!r}")
    for warning in report.warnings:
        click.secho(f"  warning: {warning}", fg="yellow", err=True)


@click.command("init")
@with_appcontext
def init_command() -> None:
    """Create or upgrade the database schema and import the shipped sequence if none exists."""
    from newsletter.migrate import upgrade

    upgrade(runtime().settings.database_url)
    with db.transaction() as session:
        report = sequences.ensure_seed(session)
    if report is None:
        click.echo("database is up to date; sequences already present")
    else:
        _print_report(report)


@click.command("import-article")
@with_appcontext
@click.argument("path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--slug", help="URL name of the sequence (default: from the file name).")
@click.option(
    "--parts", type=click.IntRange(min=1), help="Number of parts (default: by reading time)."
)
@click.option(
    "--replace", is_flag=True, help="Rebuild an existing sequence that has sent nothing yet."
)
@click.option(
    "--publish",
    is_flag=True,
    help="With --replace, on a sequence that has sent mail: publish the article as its next "
    "version (part N over step N; people in progress move forward).",
)
def import_article_command(
    path: Path, slug: str | None, parts: int | None, replace: bool, publish: bool
) -> None:
    """Turn a plain-text or Markdown article into a sequence."""
    from newsletter.content.publishing import PublishBusy

    try:
        with db.transaction() as session:
            report = sequences.import_article(
                session,
                path,
                slug=slug,
                parts=parts,
                replace=replace or publish,
                publish=publish,
                day_seconds=runtime().settings.drip_day_seconds,
            )
            _print_report(report)
    except (ArticleError, PublishBusy) as exc:
        raise click.ClickException(str(exc)) from None


@click.command("create-admin")
@with_appcontext
@click.argument("email")
@click.option(
    "--role",
    type=click.Choice(["owner", "editor"]),
    default="owner",
    show_default=True,
    help="owner: everything, accounts included; editor: content and subscribers.",
)
@click.option(
    "--generate",
    is_flag=True,
    help="Print a generated one-time password (changed at the first sign-in) instead of asking.",
)
def create_admin_command(email: str, role: str, generate: bool) -> None:
    """Add an admin account who signs in at /admin/ with EMAIL."""
    from newsletter import clock
    from newsletter.admins import accounts

    if generate:
        password = accounts.generate_password()
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        with db.transaction() as session:
            admin = accounts.create(session, email, password, role, clock.now(), one_time=generate)
    except accounts.AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{admin.role.value} {admin.email} can sign in at {_admin_url()}")
    if generate:
        click.echo(f"one-time password (changed at the first sign-in): {password}")


def _admin_url() -> str:
    return f"{runtime().settings.site_url}/admin/"


@click.command("dispatch")
@with_appcontext
def dispatch_command() -> None:
    """Run one dispatch tick now (claims due mail and queues it for the workers)."""
    from newsletter.tasks import dispatch_due

    click.echo(f"dispatched {dispatch_due.run()} deliveries")


@click.command("status")
@with_appcontext
def status_command() -> None:
    """Show deliveries by state, the due backlog, uncertain sends and recent failures."""
    from newsletter import clock
    from newsletter.delivery.status import engine_status

    with db.session() as session:
        report = engine_status(session, clock.now())
    for state, count in sorted(report.by_state.items(), key=lambda item: item[0].value):
        click.echo(f"{state.value:>10}: {count}")
    oldest = report.oldest_due.isoformat() if report.oldest_due else "-"
    click.echo(f"due now: {report.due_now} (oldest due {oldest})")
    paused = ", ".join(report.paused_sequences) or "none"
    click.echo(f"held (paused): {report.held}; paused sequences: {paused}")
    click.echo(f"sending: {_sending_state()}")
    click.echo(f"uncertain sends (may have been delivered twice): {report.uncertain}")
    for failure in report.recent_failures:
        click.echo(
            f"  #{failure.delivery_id} {failure.email} {failure.state.value} "
            f"after {failure.attempts} attempts: {failure.last_error}"
        )


def _sending_state() -> str:
    """Whether mail is going out, and if not, why and until when."""
    from newsletter import clock
    from newsletter.delivery.status import brake

    with db.session() as session:
        current = brake(session, runtime().flow().pause())
        return current.describe(clock.now())


@click.command("resume")
@with_appcontext
def resume_command() -> None:
    """Resume sending after the bounce breaker tripped (and end any pause now)."""
    from newsletter import clock
    from newsletter.delivery import breaker

    with db.transaction() as session:
        trip = breaker.resume(session, clock.now())
    runtime().flow().resume()
    if trip is None:
        click.echo("sending was not held; any pause is lifted")
    else:
        click.echo(f"sending resumes (held since {trip.tripped_at.isoformat()}: {trip.reason})")


def _moment(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not a time like 2026-11-29T10:00: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@click.group("suppressions")
def suppressions_group() -> None:
    """The suppression list: addresses never mailed again (bounces, complaints)."""


@suppressions_group.command("list")
@with_appcontext
@click.option("--since", help="Only those suppressed at or after this time (ISO 8601, UTC).")
@click.option("--reason", help="Only this reason (bounce, complaint, ...).")
def suppressions_list_command(since: str | None, reason: str | None) -> None:
    """List suppressed addresses with when and why."""
    from newsletter.audience import suppressions

    with db.session() as session:
        found = suppressions.listed(session, since=_moment(since), reason=reason)
    for entry in found:
        detail = " ".join((entry.detail or "").split())[:160]
        email = entry.email or "(erased)"
        click.echo(f"{entry.created_at.isoformat()}  {entry.reason:<9} {email}  {detail}")
    click.echo(f"{len(found)} suppressed")


@suppressions_group.command("lift")
@with_appcontext
@click.argument("emails", nargs=-1)
@click.option("--since", help="Lift every bounce suppressed at or after this time instead.")
def suppressions_lift_command(emails: tuple[str, ...], since: str | None) -> None:
    """Take addresses off the list; subscribers a bounce stopped go on where they were."""
    from newsletter import clock
    from newsletter.audience import suppressions

    if bool(emails) == bool(since):
        raise click.UsageError("name the addresses, or give --since (not both)")
    with db.transaction() as session:
        if since:
            # An erased person's entry has no address to name, and is never lifted.
            emails = tuple(
                s.email
                for s in suppressions.listed(session, since=_moment(since), reason="bounce")
                if s.email is not None
            )
        try:
            for email in emails:
                subscriber = suppressions.lift(session, email, clock.now())
                state = subscriber.status.value if subscriber else "no subscriber"
                click.echo(f"lifted {email} ({state})")
        except suppressions.LiftError as exc:
            raise click.ClickException(f"{exc}; nothing was changed") from None
    click.echo(f"{len(emails)} lifted")


@click.command("results")
@with_appcontext
@click.option("--sequence", "slug", help="Only this sequence (default: every sequence).")
@click.option(
    "--period",
    type=click.Choice(list(PERIODS)),
    default="all",
    show_default=True,
    help="Only the readers who enrolled in the last 7, 30 or 90 days (a cohort).",
)
def results_command(slug: str | None, period: str) -> None:
    """Show each sequence's readers and every part's results (sent, to go, left after it;
    opened and clicked where the sequence tracks)."""
    from sqlalchemy import select

    from newsletter import clock
    from newsletter.content.results import sequence_results, since_of
    from newsletter.models import EnrollmentStatus, Sequence

    with db.session() as session:
        if slug:
            found = sequences.sequence_for(session, slug)
            if found is None:
                raise click.ClickException(f"no sequence {slug!r}")
            chosen = [found]
        else:
            chosen = list(session.scalars(select(Sequence).order_by(Sequence.id)))
        since = since_of(period, clock.now())
        results = [
            (sequence_results(session, sequence, since), sequence.tracking) for sequence in chosen
        ]
    for result, tracking in results:
        click.echo(f"{result.slug}: {result.title}")
        readers = ", ".join(
            f"{result.readers.get(status, 0)} {status.value}" for status in EnrollmentStatus
        )
        click.echo(f"  readers: {readers}")
        # Opens and clicks only where they can exist: a sequence that tracks, or tracked once.
        tracked = tracking or any(part.opened or part.clicked for part in result.parts)
        extra = f" {'opened':>7} {'clicked':>7}" if tracked else ""
        click.echo(
            f"  {'part':>4} {'sent':>7} {'to go':>7} {'failed':>7} {'skipped':>8} "
            f"{'left after':>10}{extra}  subject"
        )
        for part in result.parts:
            extra = f" {part.opened:>7} {part.clicked:>7}" if tracked else ""
            click.echo(
                f"  {part.position:>4} {part.sent:>7} {part.to_go:>7} {part.failed:>7} "
                f"{part.skipped:>8} {part.left_after:>10}{extra}  {part.subject}"
            )


@click.command("mailcatcher")
@with_appcontext
@click.option("--port", default=1025, show_default=True)
@click.option("--dir", "folder", type=click.Path(path_type=Path), help="Maildir to keep mail in.")
def mailcatcher_command(port: int, folder: Path | None) -> None:
    """Run the development SMTP catcher on 127.0.0.1 until interrupted."""
    from newsletter import mailcatcher

    folder = folder or runtime().settings.instance_dir / "mail"
    controller = mailcatcher.start(folder, port=port)
    click.echo(f"catching mail on 127.0.0.1:{port} into {folder}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        controller.stop()


@click.command("dev")
@with_appcontext
@click.option("--port", default=5000, show_default=True, help="Web port on 127.0.0.1.")
def dev_command(port: int) -> None:
    """Run the whole product on this machine: web, worker, beat, embedded broker, mail catcher."""
    from newsletter import devserver

    raise SystemExit(devserver.run(runtime().settings, port=port))


@click.command("dkim-record")
@with_appcontext
def dkim_record_command() -> None:
    """Print the DNS TXT record that publishes the DKIM public key."""
    signer = runtime().composer.signer
    if signer is None:
        raise click.ClickException("DKIM is off: set DKIM_SELECTOR and DKIM_PRIVATE_KEY_FILE")
    click.echo(signer.dns_record())


@click.command("unsubscribe-mail")
@with_appcontext
def unsubscribe_mail_command() -> None:
    """Unsubscribe the sender of a mailto unsubscribe request read from standard input.

    For the mailbox named in UNSUBSCRIBE_MAILTO: have the mail server pipe each message to this
    command (Postfix: an alias `"|flask --app web unsubscribe-mail"`).
    """
    from newsletter import clock
    from newsletter.audience import subscriptions

    raw = sys.stdin.buffer.read(MAX_UNSUBSCRIBE_MAIL_BYTES)
    try:
        subscriber_id = subscriptions.mailto_unsubscribe_target(raw, runtime().tokens)
    except subscriptions.UnsubscribeError as exc:
        raise click.ClickException(str(exc)) from None
    with db.transaction() as session:
        found = subscriptions.unsubscribe(session, subscriber_id, clock.now(), "mailto")
    if not found:
        raise click.ClickException("that subscriber no longer exists")
    click.echo(f"unsubscribed subscriber {subscriber_id}")


@click.command("send-test")
@with_appcontext
@click.argument("address")
@click.option("--sequence", "slug", help="Slug of the sequence (default: the default sequence).")
@click.option("--part", type=int, help="Only this part (default: every part).")
@click.option("--name", "first_name", help="First name to greet the reader with.")
@click.option("--confirmation", is_flag=True, help="Send the confirmation mail too.")
def send_test_command(
    address: str, slug: str | None, part: int | None, first_name: str | None, confirmation: bool
) -> None:
    """Send the parts of a sequence to ADDRESS now, as subscribers get them, marked [Test]."""
    from newsletter import clock
    from newsletter.content.send_test import TestSendError, build_test_mails
    from newsletter.mail.transport import SendError, SmtpTransport

    rt = runtime()
    try:
        with db.session() as session:
            mails = build_test_mails(
                session,
                rt.composer,
                address,
                clock.now(),
                slug=slug,
                part=part,
                first_name=first_name,
                confirmation=confirmation,
            )
    except TestSendError as exc:
        raise click.ClickException(str(exc)) from None
    transport = SmtpTransport(rt.settings)
    try:
        for test_mail in mails:
            mail = test_mail.mail
            label = f"part {test_mail.part}" if test_mail.part else "confirmation"
            try:
                transport.send_data(mail.sender, mail.recipients, mail.data)
            except SendError as exc:
                raise click.ClickException(f"{label} not sent: {exc}") from None
            click.echo(f"sent {label}: {test_mail.subject}")
    finally:
        transport.close()


def register(app: Flask) -> None:
    """Attach the commands to the app's CLI."""
    for command in (
        status_command,
        resume_command,
        suppressions_group,
        results_command,
        init_command,
        import_article_command,
        create_admin_command,
        dispatch_command,
        mailcatcher_command,
        dev_command,
        dkim_record_command,
        unsubscribe_mail_command,
        send_test_command,
    ):
        app.cli.add_command(command)

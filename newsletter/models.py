"""The data model: typed SQLAlchemy 2.x tables with explicit lifecycle states.

All times are stored as timezone-aware UTC. Enum states are stored as short strings with a
CHECK constraint so that the same schema works on SQLite and PostgreSQL.
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    and_,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from newsletter.schedule import SendWindow


def utcnow() -> datetime:
    """The wall clock in UTC, for column defaults; services pass `newsletter.clock`'s time."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A DateTime that always comes back timezone-aware in UTC.

    SQLite has no time zone type, so values are stored naive-in-UTC and re-tagged on load.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where an aware UTC time is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    """Declarative base with a naming convention so migrations get stable constraint names."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime()}


class SubscriberStatus(enum.StrEnum):
    """A subscriber's lifecycle, and the step that makes each move:

    ```
    (none) ──signup────────► pending       audience/subscriptions.signup (a confirmation row)
    pending ─confirm───────► active        audience/subscriptions.confirm (part 1 due now)
    active, pending ─unsubscribe─► unsubscribed   audience/subscriptions.unsubscribe
    unsubscribed ─signup───► pending       a fresh double opt-in
    active, pending ─bounce─► bounced      delivery/recording (a mailbox refusal)
    bounced ─lift──────────► active | pending     audience/suppressions.lift
    ```

    Leaving (unsubscribe, bounce) ends the subscriber's enrollments in the same transaction,
    with a `StopReason`, and skips every open delivery. `complained` is reserved for
    feedback-loop reports: nothing sets it yet, and a signup treats it as it treats bounced.
    """

    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


class EnrollmentStatus(enum.StrEnum):
    """pending (until confirmed) → active ⇄ paused → completed (the last part sent) | stopped.

    An admin pauses and resumes one person (`audience/moves.py`); a paused enrollment keeps
    its place, its next part held. It stops when its subscriber leaves, or when an admin
    restarts it (a new enrollment begins at part 1).
    """

    PENDING = "pending"
    ACTIVE = "active"
    COMPLETED = "completed"
    STOPPED = "stopped"
    PAUSED = "paused"


# The enrollments that still have a way to go: at most one per (subscriber, sequence), which
# a partial unique index holds (its condition is written out once, here).
OPEN_ENROLLMENT_STATUSES = (
    EnrollmentStatus.PENDING,
    EnrollmentStatus.ACTIVE,
    EnrollmentStatus.PAUSED,
)
_OPEN_VALUES = ", ".join(f"'{status.value}'" for status in OPEN_ENROLLMENT_STATUSES)
OPEN_ENROLLMENTS_SQL = f"status IN ({_OPEN_VALUES})"


class SequenceStatus(enum.StrEnum):
    """draft (not offered to signups) → active ⇄ paused (keeps its people, sends nothing)."""

    DRAFT = "draft"
    ACTIVE = "active"
    PAUSED = "paused"


class DeliveryState(enum.StrEnum):
    """Where one mail is; every legal move, and the module that makes it:

    ```
    scheduled ─claim──────────► claimed          dispatch: due, oldest first (claims.claim)
    retry ─────claim──────────► claimed          the same, when a retry is due
    claimed ───accepted───────► sent             the server said 250 (recording.record)
    claimed ───transient──────► retry            4xx, no connection, no reply; a relay
                                                 refusing us (due at once; sending pauses)
    claimed ───refused/bounce─► failed           a mailbox or message refusal, given up,
                                                 unbuildable, or a worker stopped on it
                                                 MAX_REAPS times (recording, claims)
    claimed ───last look fails► skipped          the subscriber left or is suppressed
                                                 (loading, recording.mark)
    claimed ───release────────► scheduled        unsent, back as if never tried: a pause, a
                                                 hold, an expiring claim, a broker away
    claimed ───reaped─────────► retry            its claim expired (claims.give_back)
    claimed ───catch-up───────► scheduled        too late or outside the send window: due at
                                                 the next opening (loading)
    scheduled, retry, claimed, held ─unsubscribe/bounce/restart─► skipped  (planning.skip_open)
    failed ────suppression lifted─► scheduled    the part that bounced (audience.suppressions)
    scheduled, retry ─pause───► held             its sequence or enrollment paused (holds.hold)
    held ──────resume─────────► scheduled        due no sooner than now (holds.release)
    claimed ───paused─────────► held             loaded after a pause: it waits (loading)
    ```

    A part planned while its sequence or enrollment is paused is created held
    (`planning.schedule_next`, `planning.move_on`, `planning.start_enrollment`).
    A row is *waiting* while it can be claimed, *open* until it is settled, *final* after; a
    held row is open but not waiting, so the claim passes it by.
    Its sending *has begun* when a worker marked its attempt within the current claim
    (`Delivery.sending_begun`): from then on the mail may be on the wire.
    """

    SCHEDULED = "scheduled"
    CLAIMED = "claimed"
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"
    SKIPPED = "skipped"
    HELD = "held"


# The state sets the engine, its status report and the results speak of.
WAITING_STATES = frozenset({DeliveryState.SCHEDULED, DeliveryState.RETRY})
OPEN_STATES = WAITING_STATES | {DeliveryState.CLAIMED, DeliveryState.HELD}
FINAL_STATES = frozenset({DeliveryState.SENT, DeliveryState.FAILED, DeliveryState.SKIPPED})


class StopReason(enum.StrEnum):
    """Why an enrollment stopped (`Enrollment.stop_reason`)."""

    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    RESTARTED = "restarted"
    SWITCHED = "switched"  # the reader chose another sequence instead


class DeliveryKind(enum.StrEnum):
    """What a delivery carries: a step of a sequence, a system mail, or an admin's resend.

    A resend carries a step the person already had (`step_id` set, `enrollment_id` NULL): it
    is built like that step's mail, and it never moves an enrollment on.
    """

    STEP = "step"
    CONFIRM = "confirm"
    RESEND = "resend"


class Subscriber(Base):
    """A person on the list, with their lifecycle state and consent record."""

    __tablename__ = "subscribers"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    first_name: Mapped[str | None] = mapped_column(String(100))
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC")
    # The local hour (0-23) the reader wants parts at, set on their preferences page; None:
    # when the sequence's send window opens (see `SendWindow.send_hour`).
    send_hour: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[SubscriberStatus] = mapped_column(
        _enum(SubscriberStatus, "subscriber_status"), default=SubscriberStatus.PENDING
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    confirmed_at: Mapped[datetime | None]
    unsubscribed_at: Mapped[datetime | None]
    # Consent record: when, from where and through which form the address was given.
    consent_at: Mapped[datetime | None]
    consent_ip: Mapped[str | None] = mapped_column(String(45))
    consent_user_agent: Mapped[str | None] = mapped_column(String(512))
    consent_form: Mapped[str | None] = mapped_column(String(100))
    # When an admin erased the person: the personal fields above are gone, the rows stay.
    erased_at: Mapped[datetime | None]

    enrollments: Mapped[list[Enrollment]] = relationship(back_populates="subscriber")


class Sequence(Base):
    """A drip series: ordered steps sent on their day offsets."""

    __tablename__ = "sequences"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(100), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    # The send window, in each subscriber's zone: later steps go out when it opens
    # (send_hour), and nothing goes out after send_end_hour or on days not in send_days.
    send_hour: Mapped[int] = mapped_column(Integer, default=9)
    send_end_hour: Mapped[int] = mapped_column(Integer, default=21, server_default="21")
    send_days: Mapped[str] = mapped_column(String(7), default="1234567", server_default="1234567")
    status: Mapped[SequenceStatus] = mapped_column(
        _enum(SequenceStatus, "sequence_status"),
        default=SequenceStatus.ACTIVE,
        server_default=SequenceStatus.ACTIVE.value,
    )
    # Whether its mails count opens and link clicks (off unless an owner or editor turns it
    # on): a direct setting, not part of a version, so turning it off holds from the next mail.
    tracking: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    # The live steps only: a step removed by a published version keeps its row (deliveries
    # and results point at it) but leaves every walk through the sequence.
    steps: Mapped[list[Step]] = relationship(
        back_populates="sequence",
        primaryjoin="and_(Sequence.id == Step.sequence_id, Step.removed_at.is_(None))",
        order_by="Step.position",
        cascade="all, delete-orphan",
    )

    @property
    def window(self) -> SendWindow:
        """The send window as a value the scheduler understands."""
        return SendWindow(self.send_hour, self.send_end_hour, SendWindow.parse_days(self.send_days))


def new_step_key() -> str:
    """A stable key for a new step: it names the step across versions of its sequence."""
    return uuid.uuid4().hex


class Step(Base):
    """One mail of a sequence; the body is Markdown rendered into the shared layout.

    Live steps have positions 1..n. A step removed by a published version keeps its row with
    `removed_at` set and the position minus its id, out of the way of the live numbering.
    """

    __tablename__ = "steps"
    __table_args__ = (
        UniqueConstraint("sequence_id", "position"),
        UniqueConstraint("sequence_id", "key", name="uq_steps_sequence_id_key"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sequence_id: Mapped[int] = mapped_column(ForeignKey("sequences.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(32), default=new_step_key)
    position: Mapped[int]
    day_offset: Mapped[int]
    subject: Mapped[str] = mapped_column(String(200))
    preheader: Mapped[str] = mapped_column(String(300), default="")
    body_md: Mapped[str] = mapped_column(Text)
    teaser: Mapped[str | None] = mapped_column(String(300))
    # The closing "Keep reading" block: [{"title", "blurb", "url"}], last step only.
    resources: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    resources_intro: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    removed_at: Mapped[datetime | None]

    sequence: Mapped[Sequence] = relationship(back_populates="steps")


class Enrollment(Base):
    """A subscriber's way through one sequence."""

    __tablename__ = "enrollments"
    __table_args__ = (
        # One open enrollment per (subscriber, sequence); a restart stops the old one (its
        # history stays) and opens another.
        Index(
            "uq_enrollments_open",
            "subscriber_id",
            "sequence_id",
            unique=True,
            sqlite_where=text(OPEN_ENROLLMENTS_SQL),
            postgresql_where=text(OPEN_ENROLLMENTS_SQL),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    sequence_id: Mapped[int] = mapped_column(ForeignKey("sequences.id", ondelete="CASCADE"))
    status: Mapped[EnrollmentStatus] = mapped_column(
        _enum(EnrollmentStatus, "enrollment_status"), default=EnrollmentStatus.PENDING
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    # Why a stopped enrollment stopped ("unsubscribed", "bounced", ...), so that lifting a
    # suppression made by mistake can restart exactly the enrollments the bounce stopped.
    stop_reason: Mapped[str | None] = mapped_column(String(32))
    # The number of the published version of the sequence this enrollment follows.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")

    subscriber: Mapped[Subscriber] = relationship(back_populates="enrollments")
    sequence: Mapped[Sequence] = relationship()


class Delivery(Base):
    """One mail that will be (or was) sent: it exists before any task is queued for it."""

    __tablename__ = "deliveries"
    __table_args__ = (
        # One row per (enrollment, step): the database refuses a second copy of a part.
        UniqueConstraint("enrollment_id", "step_id"),
        # Serves the due claim: WHERE state IN (scheduled, retry) AND due_at <= now ORDER BY due_at.
        Index("ix_deliveries_state_due", "state", "due_at"),
        # Serves the reaper: WHERE state = claimed AND claimed_at < cutoff.
        Index("ix_deliveries_state_claimed", "state", "claimed_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[DeliveryKind] = mapped_column(_enum(DeliveryKind, "delivery_kind"))
    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), index=True
    )
    enrollment_id: Mapped[int | None] = mapped_column(
        ForeignKey("enrollments.id", ondelete="CASCADE")
    )
    step_id: Mapped[int | None] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"))
    due_at: Mapped[datetime]
    # When the mail was first due; retries move due_at, the give-up age counts from here.
    first_due_at: Mapped[datetime | None]
    state: Mapped[DeliveryState] = mapped_column(
        _enum(DeliveryState, "delivery_state"), default=DeliveryState.SCHEDULED
    )
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_at: Mapped[datetime | None]
    # When a worker began the SMTP conversation for the current claim.
    attempted_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    message_id: Mapped[str | None] = mapped_column(String(255))
    # How many times the reaper (or a redelivered task) took this row back from a worker that
    # stopped while holding it; a row that keeps stopping workers fails instead of looping.
    reaps: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    subscriber: Mapped[Subscriber] = relationship()
    enrollment: Mapped[Enrollment | None] = relationship()
    step: Mapped[Step | None] = relationship()

    @hybrid_property
    def sending_begun(self) -> bool:
        """A worker began this mail's attempt within its current claim: it may be on the wire."""
        return begun(self.attempted_at, self.claimed_at)

    @sending_begun.inplace.expression
    @classmethod
    def _sending_begun_expression(cls) -> ColumnElement[bool]:
        return and_(cls.attempted_at.is_not(None), cls.attempted_at >= cls.claimed_at)


def begun(attempted_at: datetime | None, claimed_at: datetime | None) -> bool:
    """The rule behind `Delivery.sending_begun`, for rows read without the ORM."""
    return attempted_at is not None and claimed_at is not None and attempted_at >= claimed_at


class Event(Base):
    """An append-only record of what happened to a subscriber (the timeline)."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_subscriber_created", "subscriber_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE")
    )
    delivery_id: Mapped[int | None] = mapped_column(
        ForeignKey("deliveries.id", ondelete="SET NULL")
    )
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def address_hash(stored: str) -> str:
    """SHA-256 (hex) of an address in its stored form: what the suppression list matches on.

    An erased person's address is kept only as this digest, so that they are refused forever
    without the address itself being held.
    """
    return hashlib.sha256(stored.encode("utf-8")).hexdigest()


def _hash_of_email(context: Any) -> str | None:
    email = context.get_current_parameters().get("email")
    return None if email is None else address_hash(email)


class Suppression(Base):
    """An address that must never be mailed again (hard bounce, complaint, operator's choice)."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    # None once the person was erased: then only the hash of the address remains.
    email: Mapped[str | None] = mapped_column(String(320), unique=True)
    # SHA-256 of the normalised address (`mail.addresses.address_hash`): signup, import and
    # every send match by it, so an erased address stays refused without being kept.
    email_hash: Mapped[str | None] = mapped_column(String(64), index=True, default=_hash_of_email)
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BreakerTrip(Base):
    """A time the bounce breaker stopped all sending; it holds until an operator resumes."""

    __tablename__ = "breaker_trips"

    id: Mapped[int] = mapped_column(primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    tripped_at: Mapped[datetime] = mapped_column(default=utcnow)
    resumed_at: Mapped[datetime | None]


# -- admins: the people who run the product, and the audit log of what they did (issue 11) ----


class AdminRole(enum.StrEnum):
    """What an admin may do: an owner everything, an editor content and subscribers."""

    OWNER = "owner"
    EDITOR = "editor"


class Admin(Base):
    """A person who signs in to the admin; never mailed, so the address is only a name.

    The Flask-Login attributes (`is_authenticated`, `get_id`, ...) are plain properties here so
    that the data model needs no web import. `session_epoch` is part of the session's user id:
    raising it (new password, deactivation, role change) signs out every open session.
    """

    __tablename__ = "admins"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[AdminRole] = mapped_column(_enum(AdminRole, "admin_role"))
    # The confirmed second factor (base32); NULL when the account signs in with a password only.
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    # A secret shown during enrolment, kept until a code from it confirms it.
    totp_pending_secret: Mapped[str | None] = mapped_column(String(64))
    # The last TOTP time step accepted, so a code cannot be used twice within its window.
    totp_last_step: Mapped[int | None]
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # A one-time password (create-admin --generate, the embedded run's first owner) must be
    # replaced at the first sign-in.
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    session_epoch: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_sign_in_at: Mapped[datetime | None]

    @property
    def is_owner(self) -> bool:
        """True for an owner."""
        return self.role == AdminRole.OWNER

    @property
    def is_authenticated(self) -> bool:
        """Flask-Login: a loaded admin is signed in."""
        return True

    @property
    def is_active(self) -> bool:
        """Flask-Login: a deactivated account cannot sign in."""
        return self.active

    @property
    def is_anonymous(self) -> bool:
        """Flask-Login: never anonymous."""
        return False

    def get_id(self) -> str:
        """Flask-Login's session id: the row id and the session epoch."""
        return f"{self.id}.{self.session_epoch}"


class AuditEntry(Base):
    """One admin action that changed something: who, what, on what, before and after.

    The actor's address is kept beside the link, so an entry still names its author after the
    account is gone; `actor_id` is NULL for the system (commands, the embedded run) and for
    sign-in attempts on unknown accounts.
    """

    __tablename__ = "audit_entries"
    __table_args__ = (
        # Serve the audit page: newest first, keyset over (created_at, id), optionally
        # filtered by action or by actor.
        Index("ix_audit_entries_created", "created_at", "id"),
        Index("ix_audit_entries_action_created", "action", "created_at", "id"),
        Index("ix_audit_entries_actor_created", "actor_id", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("admins.id", ondelete="SET NULL"))
    actor_email: Mapped[str | None] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(400))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    ip: Mapped[str | None] = mapped_column(String(45))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# -- versions (issue 11, live edits) -------------------------------------------------------------


class VersionState(enum.StrEnum):
    """draft (being edited, at most one per sequence) → published (kept for good)."""

    DRAFT = "draft"
    PUBLISHED = "published"


class SequenceVersion(Base):
    """One version of a sequence: a snapshot of its steps in order and its send settings.

    The newest published version is what the live steps are; a draft is edited freely and
    changes nothing until `content/publishing.publish` applies it.
    """

    __tablename__ = "sequence_versions"
    __table_args__ = (
        UniqueConstraint("sequence_id", "number"),
        Index(
            "ix_sequence_versions_one_draft",
            "sequence_id",
            unique=True,
            sqlite_where=text("state = 'draft'"),
            postgresql_where=text("state = 'draft'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sequence_id: Mapped[int] = mapped_column(ForeignKey("sequences.id", ondelete="CASCADE"))
    number: Mapped[int]
    state: Mapped[VersionState] = mapped_column(
        _enum(VersionState, "version_state"), default=VersionState.DRAFT
    )
    # {"steps": [{key, subject, preheader, day_offset, body_md, teaser, resources,
    #   resources_intro}, ...] in order, "settings": {send_hour, send_end_hour, send_days}}
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None]
    published_by: Mapped[str | None] = mapped_column(String(320))
    # The dry run's numbers at publish (content/publishing.PublishPlan.summary).
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    sequence: Mapped[Sequence] = relationship()


# -- The dashboard: the dispatcher's heartbeat and cached figures ---------------------------------


class Heartbeat(Base):
    """The last time a periodic job ran (one row per job, e.g. "dispatch"), overwritten."""

    __tablename__ = "heartbeats"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    at: Mapped[datetime]


class CachedFigures(Base):
    """Figures that are too costly to count on every page view, and when they were counted.

    `key` names what was counted ("dashboard", "funnel:3:30"); `data` is its JSON form.
    """

    __tablename__ = "cached_figures"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    computed_at: Mapped[datetime]
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


# The per-day counts of the dashboard read a month of rows through these, never the whole table.
Index("ix_subscribers_created_at", Subscriber.created_at)
Index("ix_subscribers_confirmed_at", Subscriber.confirmed_at)
Index("ix_deliveries_sent_at", Delivery.sent_at)
# The funnel's cohort: a sequence's enrollments begun in the chosen period, and their
# deliveries' states and steps read from the index alone.
Index("ix_enrollments_sequence_created", Enrollment.sequence_id, Enrollment.created_at)
Index("ix_deliveries_enrollment_state", Delivery.enrollment_id, Delivery.state, Delivery.step_id)
# The uncertain sends of the engine's health: a few rows among millions of events.
Index("ix_events_kind", Event.kind)
# -- People: the subscribers table, erasure and CSV imports (the admin's subscribers area) -------


class ImportStatus(enum.StrEnum):
    """A CSV import's way: uploaded → queued (mapped, consent chosen) → running → done | failed."""

    UPLOADED = "uploaded"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class ImportConsent(enum.StrEnum):
    """How imported people come in: a confirmation mail each, or consent the admin attests."""

    CONFIRM = "confirm"
    ATTEST = "attest"


class SubscriberImport(Base):
    """A CSV file of people being added: its mapping, consent choice, progress and report."""

    __tablename__ = "imports"

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[ImportStatus] = mapped_column(
        _enum(ImportStatus, "import_status"), default=ImportStatus.UPLOADED
    )
    # The name the admin's file had (outsider text, shown escaped) and the stored file's name
    # under the instance's imports folder; the file goes once the import ends.
    filename: Mapped[str] = mapped_column(String(255))
    stored_name: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(default=0)
    header: Mapped[list[str]] = mapped_column(JSON, default=list)
    # {"email": column index, "first_name": index or None, "time_zone": index or None}
    mapping: Mapped[dict[str, int | None]] = mapped_column(JSON, default=dict)
    consent: Mapped[ImportConsent | None] = mapped_column(_enum(ImportConsent, "import_consent"))
    sequence_id: Mapped[int | None] = mapped_column(ForeignKey("sequences.id", ondelete="SET NULL"))
    created_by: Mapped[str] = mapped_column(String(320))
    rows_read: Mapped[int] = mapped_column(default=0)
    added: Mapped[int] = mapped_column(default=0)
    duplicates: Mapped[int] = mapped_column(default=0)
    suppressed: Mapped[int] = mapped_column(default=0)
    invalid: Mapped[int] = mapped_column(default=0)
    # The first problems, [{"line", "kind", "reason"}]; the counts above hold them all.
    problems: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


# The subscribers table's keyset orders and filters (audience/directory.py), each served by an
# index: newest first overall or within a state, the address order, and "who is waiting on step
# N" / "who is in sequence S".
Index("ix_subscribers_created", Subscriber.created_at, Subscriber.id)
Index("ix_subscribers_status_created", Subscriber.status, Subscriber.created_at, Subscriber.id)
Index("ix_subscribers_status_email", Subscriber.status, Subscriber.email)
Index(
    "ix_subscribers_email_prefix",
    Subscriber.email,
    postgresql_ops={"email": "varchar_pattern_ops"},
)
Index("ix_deliveries_step_state", Delivery.step_id, Delivery.state, Delivery.subscriber_id)
Index("ix_enrollments_sequence_subscriber", Enrollment.sequence_id, Enrollment.subscriber_id)


class Click(Base):
    """The first click on one link of one tracked mail: the link by its index in the step.

    One row per (delivery, link), which the database holds: a second click records nothing.
    """

    __tablename__ = "clicks"
    __table_args__ = (UniqueConstraint("delivery_id", "link", name="uq_clicks_delivery_id_link"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"))
    link: Mapped[int] = mapped_column(Integer)
    clicked_at: Mapped[datetime] = mapped_column(default=utcnow)


class Open(Base):
    """The first time a tracked mail's image was loaded: one row per delivery."""

    __tablename__ = "opens"

    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), primary_key=True
    )
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)


def table_of(model: type[Base]) -> Table:
    """The Core table of a model, for statements the hot paths build once and reuse."""
    return cast(Table, model.__table__)

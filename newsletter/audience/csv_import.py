"""CSV import of subscribers: upload, column mapping, preview, and the run a worker does.

The upload is streamed to a file in the instance's imports folder (the web and the workers
share it); an `imports` row tracks it. The run reads that file with the csv module one row
at a time and commits in batches, so its memory does not grow with the file. Within a batch,
addresses are checked against the database and the suppression list in one query each; a
row repeating an address an earlier batch of the same file added is told apart from one
already there by the consent record the import wrote ("import #N ...").

Existing subscribers are never changed, suppressed addresses are never added, and every row
that is not added says why, with its line number (the first MAX_PROBLEMS of them are kept;
the counts hold them all). The file is deleted when the run ends.
"""

from __future__ import annotations

import csv
import enum
import logging
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.content.sequences import sequence_for
from newsletter.delivery import planning
from newsletter.mail import addresses
from newsletter.models import (
    DeliveryKind,
    Enrollment,
    Event,
    ImportConsent,
    ImportStatus,
    Subscriber,
    SubscriberImport,
    SubscriberStatus,
    Suppression,
    address_hash,
)
from newsletter.schedule import known_time_zones

log = logging.getLogger(__name__)

IMPORTS_FOLDER = "imports"
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
CHUNK_BYTES = 64 * 1024
BATCH_ROWS = 500
MAX_PROBLEMS = 1000
PREVIEW_ROWS = 5
# A cell longer than this is not a name, address or zone; the csv module refuses beyond it.
MAX_CELL = 10_000
FIELDS = ("email", "first_name", "time_zone")
FIELD_LABELS = {"email": "Email address", "first_name": "First name", "time_zone": "Time zone"}
# Header words that name each field, compared lower-case with spaces, dashes and underscores
# taken out.
_GUESSES = {
    "email": ("email", "emailaddress", "mail", "address", "courriel"),
    "first_name": ("firstname", "first", "givenname", "name", "forename", "vorname", "prenom"),
    "time_zone": ("timezone", "tz", "zone", "tzname"),
}


class ImportFormError(ValueError):
    """Input an import step refuses, with the form field it belongs beside."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Problem(enum.StrEnum):
    """Why a row was not added."""

    INVALID = "invalid"
    DUPLICATE = "duplicate"
    EXISTING = "existing"
    SUPPRESSED = "suppressed"


def folder(instance_dir: Path) -> Path:
    """The imports folder under the instance folder (made if missing, private to this user)."""
    path = instance_dir / IMPORTS_FOLDER
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _squash(word: str) -> str:
    return "".join(c for c in word.lower() if c.isalnum())


def guess_mapping(header: list[str]) -> dict[str, int | None]:
    """Which column holds each field, guessed from the header; None where nothing fits."""
    squashed = [_squash(cell) for cell in header]
    mapping: dict[str, int | None] = {}
    taken: set[int] = set()
    for field_name in FIELDS:
        found = None
        for word in _GUESSES[field_name]:
            for index, cell in enumerate(squashed):
                if index not in taken and (cell == word or (len(word) > 4 and word in cell)):
                    found = index
                    break
            if found is not None:
                break
        if found is not None:
            taken.add(found)
        mapping[field_name] = found
    return mapping


def _reader(handle: IO[str]) -> Iterator[list[str]]:
    return csv.reader(handle)


def _open(path: Path) -> IO[str]:
    # utf-8-sig: a byte-order mark (as spreadsheets write one) is not part of the first name.
    return open(path, encoding="utf-8-sig", newline="")


def receive(
    session: Session,
    stream: IO[bytes],
    filename: str,
    imports_folder: Path,
    created_by: str,
    now: datetime,
    *,
    max_bytes: int = MAX_UPLOAD_BYTES,
) -> SubscriberImport:
    """Store an uploaded CSV file chunk by chunk and record it, with a guessed mapping.

    ImportFormError (field "file") for an empty, oversized or unreadable file; nothing stays.
    """
    stored_name = f"{secrets.token_hex(16)}.csv"
    path = imports_folder / stored_name
    size = 0
    try:
        with open(path, "xb") as out:
            while chunk := stream.read(CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise ImportFormError(
                        "file", f"The file is larger than {max_bytes // (1024 * 1024)} MB."
                    )
                out.write(chunk)
        if size == 0:
            raise ImportFormError("file", "The file is empty.")
        header = read_header(path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    entry = SubscriberImport(
        status=ImportStatus.UPLOADED,
        filename=(filename or "upload.csv")[:255],
        stored_name=stored_name,
        size_bytes=size,
        header=header,
        mapping=guess_mapping(header),
        created_by=created_by,
        created_at=now,
        problems=[],
    )
    session.add(entry)
    session.flush()
    return entry


def read_header(path: Path) -> list[str]:
    """The first row of a CSV file; ImportFormError if it is not UTF-8 CSV with a header."""
    try:
        with _open(path) as handle:
            header = next(_reader(handle), [])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ImportFormError("file", f"The file is not UTF-8 CSV: {exc}") from None
    header = [cell.strip()[:200] for cell in header]
    if not any(header):
        raise ImportFormError("file", "The first line must name the columns (a header row).")
    return header


def preview(
    entry: SubscriberImport, imports_folder: Path, rows: int = PREVIEW_ROWS
) -> list[list[str]]:
    """The first rows after the header, for the mapping page (cells cut to 200 characters)."""
    found: list[list[str]] = []
    try:
        with _open(imports_folder / entry.stored_name) as handle:
            reader = _reader(handle)
            next(reader, None)
            for row in reader:
                if not row:
                    continue
                found.append([cell[:200] for cell in row])
                if len(found) >= rows:
                    break
    except (UnicodeDecodeError, csv.Error, OSError):
        return found
    return found


def configure(
    session: Session, entry: SubscriberImport, form: Mapping[str, str], consent: str
) -> None:
    """Set the column mapping and the consent choice, and queue the import.

    `form` maps each field to a column index as text ("" for none). ImportFormError names
    the field at fault; nothing changes then.
    """
    if entry.status is not ImportStatus.UPLOADED:
        raise ImportFormError("consent", "This import has already been started.")
    mapping: dict[str, int | None] = {}
    used: set[int] = set()
    for field_name in FIELDS:
        raw = (form.get(field_name) or "").strip()
        if not raw:
            mapping[field_name] = None
            continue
        if not raw.isascii() or not raw.isdigit() or int(raw) >= len(entry.header):
            raise ImportFormError(field_name, "Choose a column of the file.")
        index = int(raw)
        if index in used:
            raise ImportFormError(field_name, "That column is already used for another field.")
        used.add(index)
        mapping[field_name] = index
    if mapping["email"] is None:
        raise ImportFormError("email", "Choose the column that holds the email addresses.")
    try:
        choice = ImportConsent(consent)
    except ValueError:
        raise ImportFormError(
            "consent", "Choose whether to send confirmation mails or attest prior consent."
        ) from None
    sequence = sequence_for(session, None)
    if sequence is None:
        raise ImportFormError("consent", "There is no sequence to enroll people in yet.")
    entry.mapping = mapping
    entry.consent = choice
    entry.sequence_id = sequence.id
    entry.status = ImportStatus.QUEUED


def unqueue(session: Session, import_id: int) -> None:
    """Put a queued import back to "uploaded" (its task could not be queued)."""
    entry = session.get(SubscriberImport, import_id, with_for_update=True)
    if entry is not None and entry.status is ImportStatus.QUEUED:
        entry.status = ImportStatus.UPLOADED


@dataclass(frozen=True)
class _Row:
    line: int
    email: str
    first_name: str | None
    time_zone: str


class _Report:
    """The counts and the first problems of a run, written to the row after each batch."""

    def __init__(self, entry: SubscriberImport) -> None:
        self.counts = {
            "rows_read": entry.rows_read,
            "added": entry.added,
            "duplicates": entry.duplicates,
            "suppressed": entry.suppressed,
            "invalid": entry.invalid,
        }
        self.problems: list[dict[str, Any]] = list(entry.problems)

    def problem(self, line: int, kind: Problem, reason: str) -> None:
        counter = {
            Problem.INVALID: "invalid",
            Problem.DUPLICATE: "duplicates",
            Problem.EXISTING: "duplicates",
            Problem.SUPPRESSED: "suppressed",
        }[kind]
        self.counts[counter] += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append({"line": line, "kind": kind.value, "reason": reason})

    def write(self, entry: SubscriberImport) -> None:
        for name, value in self.counts.items():
            setattr(entry, name, value)
        entry.problems = list(self.problems)


def _cell(row: list[str], index: int | None) -> str:
    if index is None or index >= len(row):
        return ""
    return row[index].strip()


def _shown(value: str) -> str:
    return value if len(value) <= 80 else value[:79] + "…"


def _parse(
    line: int,
    row: list[str],
    mapping: Mapping[str, int | None],
    zones: frozenset[str],
    report: _Report,
) -> _Row | None:
    raw_email = _cell(row, mapping.get("email"))
    if not raw_email:
        report.problem(line, Problem.INVALID, "no email address")
        return None
    try:
        email = addresses.normalise(raw_email)
    except addresses.AddressError as exc:
        report.problem(line, Problem.INVALID, f"“{_shown(raw_email)}”: {exc}")
        return None
    try:
        first_name = addresses.clean_name(_cell(row, mapping.get("first_name")) or None)
    except addresses.NameRefused as exc:
        report.problem(line, Problem.INVALID, f"first name: {exc}")
        return None
    zone_name = _cell(row, mapping.get("time_zone"))
    if zone_name and zone_name not in zones:
        report.problem(line, Problem.INVALID, f"unknown time zone “{_shown(zone_name)}”")
        return None
    return _Row(line=line, email=email, first_name=first_name, time_zone=zone_name or "UTC")


def _lines(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """(the line a record starts on, its cells) after the header, blank lines left out.

    A quoted cell may span lines, so a record's first line is the one after where the
    previous record ended (the csv reader's line_num).
    """
    previous_end = reader.line_num
    for row in reader:
        start = previous_end + 1
        previous_end = reader.line_num
        if row and any(cell.strip() for cell in row):
            yield start, row


def consent_record(entry: SubscriberImport) -> str:
    """The consent form text of someone this import added (the import, its choice, by whom)."""
    if entry.consent is ImportConsent.ATTEST:
        how = f"consent attested by {entry.created_by}"
    else:
        how = "confirmation mail sent"
    return f"import #{entry.id} ({how})"[:100]


def _add_batch(
    session: Session,
    entry: SubscriberImport,
    rows: list[_Row],
    report: _Report,
    now: datetime,
    day_seconds: float,
) -> None:
    ours = f"import #{entry.id} "
    existing = {
        email: form
        for email, form in session.execute(
            select(Subscriber.email, Subscriber.consent_form).where(
                Subscriber.email.in_({r.email for r in rows})
            )
        )
    }
    hashes = {address_hash(r.email) for r in rows}
    suppressed = set(
        session.scalars(select(Suppression.email_hash).where(Suppression.email_hash.in_(hashes)))
    )
    seen: dict[str, int] = {}
    fresh: list[tuple[_Row, Subscriber]] = []
    attest = entry.consent is ImportConsent.ATTEST
    record = consent_record(entry)
    for row in rows:
        if address_hash(row.email) in suppressed:
            report.problem(row.line, Problem.SUPPRESSED, "on the suppression list: never re-added")
        elif row.email in seen:
            report.problem(row.line, Problem.DUPLICATE, f"repeats line {seen[row.email]}")
        elif row.email in existing:
            form = existing[row.email] or ""
            if form.startswith(ours):
                report.problem(row.line, Problem.DUPLICATE, "repeats an earlier line")
            else:
                report.problem(row.line, Problem.EXISTING, "already a subscriber (left unchanged)")
        else:
            seen[row.email] = row.line
            subscriber = Subscriber(
                email=row.email,
                first_name=row.first_name,
                time_zone=row.time_zone,
                status=SubscriberStatus.ACTIVE if attest else SubscriberStatus.PENDING,
                created_at=now,
                confirmed_at=now if attest else None,
                consent_at=now,
                consent_form=record,
            )
            session.add(subscriber)
            fresh.append((row, subscriber))
    if not fresh:
        return
    session.flush()
    enrollments = [
        Enrollment(subscriber_id=s.id, sequence_id=entry.sequence_id, created_at=now)
        for _, s in fresh
    ]
    session.add_all(enrollments)
    session.flush()
    for (_, subscriber), enrollment in zip(fresh, enrollments, strict=True):
        if attest:
            planning.start_enrollment(session, enrollment, now, day_seconds)
        else:
            planning.add_delivery(session, DeliveryKind.CONFIRM, subscriber.id, now, now)
        session.add(
            Event(
                subscriber_id=subscriber.id,
                kind="import",
                data={
                    "import": entry.id,
                    "consent": entry.consent.value if entry.consent else None,
                    "by": entry.created_by,
                },
                created_at=now,
            )
        )
    report.counts["added"] += len(fresh)


def run(
    sessions: Callable[[], Session],
    import_id: int,
    imports_folder: Path,
    clock: Callable[[], datetime],
    day_seconds: float,
    *,
    batch_rows: int = BATCH_ROWS,
) -> ImportStatus | None:
    """Import a queued file, committing each batch of rows with the report so far.

    An import found running is resumed after its last committed batch: its task was delivered
    again because the worker running it died (the task is acknowledged only once it ends), and
    the rows read so far are in the database with their counts. Returns the final status, or
    None when there was nothing to do (an unknown id, an import already ended, or one that
    another delivery of the task is carrying on).
    """
    with sessions() as session, session.begin():
        entry = session.get(SubscriberImport, import_id, with_for_update=True)
        if entry is None or entry.status not in (ImportStatus.QUEUED, ImportStatus.RUNNING):
            return None
        if entry.status is ImportStatus.RUNNING:
            log.warning("import %d resumes after row %d", import_id, entry.rows_read)
        entry.status = ImportStatus.RUNNING
        entry.started_at = entry.started_at or clock()
        done = entry.rows_read
    path = imports_folder / entry.stored_name
    zones = known_time_zones()
    try:
        with _open(path) as handle:
            reader = _reader(handle)
            next(reader, None)
            batch: list[tuple[int, list[str]]] = []
            for index, (line, cells) in enumerate(_lines(reader)):
                if index < done:
                    continue  # committed before the worker that read it died
                batch.append((line, cells))
                if len(batch) >= batch_rows:
                    _commit_batch(sessions, import_id, batch, zones, clock(), day_seconds, done)
                    done += len(batch)
                    batch = []
            _commit_batch(sessions, import_id, batch, zones, clock(), day_seconds, done, last=True)
        status: ImportStatus | None = ImportStatus.DONE
    except _Overtaken:
        # Another delivery of the task is ahead: it carries on, and it removes the file.
        log.warning("import %d is being run by another task; this one stops", import_id)
        return None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        status = _fail(sessions, import_id, clock(), "The file could not be read", exc)
    except Exception as exc:  # noqa: BLE001 - the import ends, saying why, instead of hanging
        log.exception("import %d failed", import_id)
        status = _fail(sessions, import_id, clock(), "The import stopped", exc)
    # The file holds every address of the list; once read, it is not kept.
    path.unlink(missing_ok=True)
    return status


class _Overtaken(Exception):
    """The import's committed rows are not where this run expected: another run is ahead."""


def _fail(
    sessions: Callable[[], Session],
    import_id: int,
    now: datetime,
    what: str,
    error: BaseException,
) -> ImportStatus | None:
    """Mark the import failed, with how far it got and why (the rows so far stay imported)."""
    log.warning("import %d failed: %s", import_id, error)
    try:
        with sessions() as session, session.begin():
            failed = session.get(SubscriberImport, import_id)
            assert failed is not None
            failed.status = ImportStatus.FAILED
            failed.error = f"{what} past line {failed.rows_read + 1}: {error}"[:2000]
            failed.finished_at = now
    except Exception:  # noqa: BLE001 - the database is away too: the import stays running
        log.exception("import %d could not be marked failed", import_id)
        return None
    return ImportStatus.FAILED


def _commit_batch(
    sessions: Callable[[], Session],
    import_id: int,
    batch: list[tuple[int, list[str]]],
    zones: frozenset[str],
    now: datetime,
    day_seconds: float,
    offset: int,
    *,
    last: bool = False,
) -> None:
    """Add one batch, which starts after `offset` rows read, and the report so far.

    Someone may sign up between the batch's look at the list and its insert (the unique
    address refuses the insert): the batch is then looked at once more, and they are an
    existing subscriber, left as they are.
    """
    for again in (False, True):
        try:
            with sessions() as session, session.begin():
                # Under the row's lock: two runs of one import never commit the same rows.
                entry = session.get(SubscriberImport, import_id, with_for_update=True)
                assert entry is not None
                if entry.status is not ImportStatus.RUNNING or entry.rows_read != offset:
                    raise _Overtaken()
                report = _Report(entry)
                rows = []
                for line, cells in batch:
                    report.counts["rows_read"] += 1
                    parsed = _parse(line, cells, entry.mapping, zones, report)
                    if parsed is not None:
                        rows.append(parsed)
                if rows:
                    _add_batch(session, entry, rows, report, now, day_seconds)
                report.write(entry)
                if last:
                    entry.status = ImportStatus.DONE
                    entry.finished_at = now
            return
        except IntegrityError:
            if again:
                raise

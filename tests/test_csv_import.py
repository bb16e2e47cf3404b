"""CSV import (audience/csv_import.py): mapping, report by line, consent, a real worker."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, func, select

from newsletter import clock
from newsletter.audience import csv_import, directory
from newsletter.audience.csv_import import ImportFormError
from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Enrollment,
    EnrollmentStatus,
    Event,
    ImportStatus,
    Subscriber,
    SubscriberImport,
    SubscriberStatus,
    Suppression,
)
from tests.helpers.apps import base_env, make_app, runtime_of
from tests.helpers.people import add_person
from tests.helpers.smtp import SmtpSink
from tests.helpers.workers import WorkerProcess

ADMIN = "owner@example.org"

# Line numbers as a spreadsheet shows them: the header is line 1, a quoted cell may span lines.
SAMPLE = (
    "Email,First Name,Time zone,Notes\r\n"  # 1
    "ann@example.org,Ann,Europe/Berlin,first\r\n"  # 2 added
    "ANN@Example.org,Annie,,same person\r\n"  # 3 duplicate of line 2
    "not-an-address,Bob,,\r\n"  # 4 invalid
    "old@example.org,Changed,,\r\n"  # 5 already a subscriber
    "gone@example.org,,,\r\n"  # 6 suppressed
    'carl@example.org,Carl,,"two\r\nlines"\r\n'  # 7-8 added
    "dora@example.org,Dora,Mars/Olympus,\r\n"  # 9 invalid zone
    "\r\n"  # 10 blank, not a row
    'eve@example.org,"=HYPERLINK(""https://evil.example"",""x"")",,\r\n'  # 11 added
    "fay@example.org,<script>alert(1)</script>,UTC,\r\n"  # 12 added
    ",Nobody,,\r\n"  # 13 invalid: no address
)


def upload(text: str, name: str = "people.csv") -> int:
    """Receive a file as the upload page does; the import's id."""
    with db.transaction() as session:
        entry = csv_import.receive(
            session,
            io.BytesIO(text.encode("utf-8")),
            name,
            imports_folder(),
            ADMIN,
            clock.now(),
        )
        return entry.id


def imports_folder() -> Path:
    from flask import current_app

    return csv_import.folder(runtime_of(current_app).settings.instance_dir)


def start(import_id: int, consent: str = "confirm", **mapping: str) -> None:
    with db.transaction() as session:
        entry = session.get(SubscriberImport, import_id)
        assert entry is not None
        guessed = {k: "" if v is None else str(v) for k, v in entry.mapping.items()}
        csv_import.configure(session, entry, {**guessed, **mapping}, consent)


def run(import_id: int, batch_rows: int = 500) -> SubscriberImport:
    status = csv_import.run(
        db.session, import_id, imports_folder(), clock.now, 86400, batch_rows=batch_rows
    )
    assert status is ImportStatus.DONE
    with db.session() as session:
        entry = session.get(SubscriberImport, import_id)
        assert entry is not None
        return entry


def existing_people() -> None:
    with db.transaction() as session:
        add_person(session, "old@example.org", clock.now(), first_name="Olga")
        session.add(Suppression(email="gone@example.org", reason="bounce", created_at=clock.now()))


@pytest.mark.parametrize("batch_rows", [500, 2])
def test_report_gives_every_problem_its_line(app: Flask, batch_rows: int) -> None:
    existing_people()
    with app.app_context():
        import_id = upload(SAMPLE)
        start(import_id)
        entry = run(import_id, batch_rows)
        assert not (imports_folder() / entry.stored_name).exists(), "the file is not kept"
    assert (entry.rows_read, entry.added, entry.duplicates, entry.suppressed, entry.invalid) == (
        10,
        4,
        2,
        1,
        3,
    )
    problems = {p["line"]: (p["kind"], p["reason"]) for p in entry.problems}
    assert sorted(problems) == [3, 4, 5, 6, 9, 13]
    assert problems[3][0] == "duplicate"
    assert problems[4][0] == "invalid" and "not-an-address" in problems[4][1]
    assert problems[5] == ("existing", "already a subscriber (left unchanged)")
    assert problems[6][0] == "suppressed"
    assert problems[9] == ("invalid", "unknown time zone “Mars/Olympus”")
    assert problems[13] == ("invalid", "no email address")
    with db.session() as session:
        old = session.scalars(select(Subscriber).where(Subscriber.email == "old@example.org")).one()
        assert old.first_name == "Olga", "an existing subscriber is never changed"
        added = {
            s.email: s
            for s in session.scalars(
                select(Subscriber).where(Subscriber.consent_form.like(f"import #{import_id} %"))
            )
        }
        assert set(added) == {
            "ann@example.org",
            "carl@example.org",
            "eve@example.org",
            "fay@example.org",
        }
        assert added["ann@example.org"].time_zone == "Europe/Berlin"
        assert added["eve@example.org"].first_name == '=HYPERLINK("https://evil.example","x")'
        assert all(s.status is SubscriberStatus.PENDING for s in added.values())
        confirmations = session.scalars(
            select(Delivery).where(Delivery.kind == DeliveryKind.CONFIRM)
        ).all()
        assert {d.subscriber_id for d in confirmations} == {s.id for s in added.values()}
        assert session.scalar(select(func.count()).select_from(Suppression)) == 1


class WorkerDied(BaseException):
    """What a worker's death looks like from inside the run: nothing after it runs."""


def dying_sessions(after: int) -> Callable[[], Any]:
    """`db.session`, until `after` sessions were opened: then the process "dies"."""
    opened = 0

    def open_session() -> Any:
        nonlocal opened
        opened += 1
        if opened > after:
            raise WorkerDied()
        return db.session()

    return open_session


@pytest.mark.parametrize("batch_rows", [1, 2, 3])
def test_an_import_whose_worker_died_resumes_after_its_last_batch(
    app: Flask, batch_rows: int
) -> None:
    """The task is delivered again after its worker died mid-file: it carries on after the
    committed rows, and the report is the one a run without the death gives."""
    existing_people()
    with app.app_context():
        import_id = upload(SAMPLE)
        start(import_id)
        with pytest.raises(WorkerDied):  # the claim, then two batches, then the end
            csv_import.run(
                dying_sessions(3), import_id, imports_folder(), clock.now, 86400,
                batch_rows=batch_rows,
            )  # fmt: skip
        with db.session() as session:
            died = session.get(SubscriberImport, import_id)
            assert died is not None
            assert died.status is ImportStatus.RUNNING and died.rows_read == 2 * batch_rows
        assert (imports_folder() / died.stored_name).exists(), "kept for the next delivery"
        entry = run(import_id, batch_rows)
    assert (entry.rows_read, entry.added, entry.duplicates, entry.suppressed, entry.invalid) == (
        10,
        4,
        2,
        1,
        3,
    )
    assert sorted(p["line"] for p in entry.problems) == [3, 4, 5, 6, 9, 13]
    with db.session() as session:
        emails = list(session.scalars(select(Subscriber.email)))
        events = session.scalar(select(func.count(Event.id)).where(Event.kind == "import"))
    assert len(emails) == len(set(emails)) == 5  # four added and Olga, nobody twice
    assert events == 4


def test_a_second_run_of_one_import_stops_where_the_first_is_ahead(app: Flask) -> None:
    """Two deliveries of the task at once (a broker that gave it out again while it ran):
    the one that finds its rows committed by the other stops, adding nothing."""
    with app.app_context():
        import_id = upload(SAMPLE)
        start(import_id)
        opened = 0

        def other_run_commits_first() -> Any:
            nonlocal opened
            opened += 1
            if opened == 2:  # just before this run's first batch, the other run commits its own
                with db.transaction() as session:
                    entry = session.get(SubscriberImport, import_id)
                    assert entry is not None
                    entry.rows_read = 2
            return db.session()

        status = csv_import.run(
            other_run_commits_first, import_id, imports_folder(), clock.now, 86400, batch_rows=2
        )
        assert status is None
        with db.session() as session:
            entry = session.get(SubscriberImport, import_id)
            assert entry is not None and entry.status is ImportStatus.RUNNING
            assert session.scalar(select(func.count(Subscriber.id))) == 0
        assert (imports_folder() / entry.stored_name).exists(), "the other run still reads it"


@pytest.mark.postgres
def test_an_address_that_signs_up_during_its_batch_is_an_existing_subscriber(
    tmp_path: Path, postgres_url: str, smtp_sink: SmtpSink
) -> None:
    """Carl signs up (another connection, committed) after the batch looked at the list and
    before it inserts him: the batch is looked at again and he is counted as already there."""
    app = make_app(base_env(tmp_path, postgres_url, smtp_sink))
    with db.transaction() as session:
        ensure_seed(session)
    raced: list[str] = []

    def carl_signs_up(session: Any, *_: Any) -> None:
        if raced or not any(
            isinstance(o, Subscriber) and o.email == "carl@example.org" for o in session.new
        ):
            return
        raced.append("carl")
        with db.transaction() as other:
            add_person(other, "carl@example.org", clock.now(), first_name="Signed up")

    def sessions() -> Any:
        session = db.session()
        event.listen(session, "before_flush", carl_signs_up)
        return session

    try:
        with app.app_context():
            import_id = upload(SAMPLE)
            start(import_id)
            status = csv_import.run(
                sessions, import_id, imports_folder(), clock.now, 86400, batch_rows=500
            )
        assert status is ImportStatus.DONE and raced == ["carl"]
        with db.session() as session:
            entry = session.get(SubscriberImport, import_id)
            assert entry is not None
            carl = session.scalars(
                select(Subscriber).where(Subscriber.email == "carl@example.org")
            ).one()
        assert carl.first_name == "Signed up"  # theirs, left as it is
        assert (entry.added, entry.duplicates) == (5, 2)  # without the race: (6, 1)
        assert {p["line"]: p["kind"] for p in entry.problems}[7] == "existing"
    finally:
        db.dispose()


def test_an_import_that_raises_ends_failed_saying_where(app: Flask) -> None:
    with app.app_context():
        import_id = upload(SAMPLE)
        start(import_id)
        opened = 0

        def database_fails_on_the_second_batch() -> Any:
            nonlocal opened
            opened += 1
            if opened == 3:
                raise RuntimeError("the database went away")
            return db.session()

        status = csv_import.run(
            database_fails_on_the_second_batch,
            import_id,
            imports_folder(),
            clock.now,
            86400,
            batch_rows=2,
        )
        assert status is ImportStatus.FAILED
        with db.session() as session:
            entry = session.get(SubscriberImport, import_id)
            assert entry is not None
        assert not (imports_folder() / entry.stored_name).exists()
    assert entry.status is ImportStatus.FAILED and entry.rows_read == 2
    assert entry.error == "The import stopped past line 3: the database went away"


def test_attested_consent_is_recorded_and_people_start_at_once(app: Flask) -> None:
    with app.app_context():
        import_id = upload("email,name\nann@example.org,Ann\nbob@example.org,Bob\n")
        start(import_id, consent="attest")
        run(import_id)
    with db.session() as session:
        people = session.scalars(select(Subscriber).order_by(Subscriber.email)).all()
        assert [p.status for p in people] == [SubscriberStatus.ACTIVE] * 2
        ann = people[0]
        assert ann.first_name == "Ann"
        assert ann.consent_form == f"import #{import_id} (consent attested by {ADMIN})"
        assert ann.consent_at is not None and ann.confirmed_at is not None
        enrollment = session.scalars(
            select(Enrollment).where(Enrollment.subscriber_id == ann.id)
        ).one()
        assert enrollment.status is EnrollmentStatus.ACTIVE
        part_one = session.scalars(select(Delivery).where(Delivery.subscriber_id == ann.id)).one()
        assert part_one.kind is DeliveryKind.STEP and part_one.state is DeliveryState.SCHEDULED
        event = session.scalars(
            select(Event).where(Event.subscriber_id == ann.id, Event.kind == "import")
        ).one()
        assert event.data == {"import": import_id, "consent": "attest", "by": ADMIN}


@pytest.mark.any_database
def test_mapping_is_guessed_from_the_header(app: Flask) -> None:
    guess = csv_import.guess_mapping
    assert guess(["E-mail", "First name", "TimeZone"]) == {
        "email": 0,
        "first_name": 1,
        "time_zone": 2,
    }
    assert guess(["Vorname", "Email Address", "Notes"]) == {
        "email": 1,
        "first_name": 0,
        "time_zone": None,
    }
    assert guess(["a", "b"]) == {"email": None, "first_name": None, "time_zone": None}


@pytest.mark.any_database
@pytest.mark.parametrize(
    ("form", "consent", "field"),
    [
        ({"email": ""}, "confirm", "email"),
        ({"email": "7"}, "confirm", "email"),
        ({"email": "0", "first_name": "0"}, "confirm", "first_name"),
        ({"email": "0"}, "maybe", "consent"),
        ({"email": "x"}, "confirm", "email"),
    ],
)
def test_a_bad_mapping_or_choice_changes_nothing(
    app: Flask, form: dict[str, str], consent: str, field: str
) -> None:
    with app.app_context():
        import_id = upload("email,name\nann@example.org,Ann\n")
    with db.transaction() as session:
        entry = session.get(SubscriberImport, import_id)
        assert entry is not None
        with pytest.raises(ImportFormError) as refused:
            csv_import.configure(session, entry, form, consent)
        assert refused.value.field == field
        assert entry.status is ImportStatus.UPLOADED


@pytest.mark.any_database
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"\xff\xfe\x00e\x00m", "UTF-8"),
        (b"\r\n\r\n", "header"),
        (b"email\n" + b"a@example.org\n" * 200, "larger"),
    ],
)
def test_an_unusable_file_is_refused_and_not_kept(app: Flask, content: bytes, message: str) -> None:
    with app.app_context(), db.transaction() as session:
        with pytest.raises(ImportFormError) as refused:
            csv_import.receive(
                session,
                io.BytesIO(content),
                "x.csv",
                imports_folder(),
                ADMIN,
                clock.now(),
                max_bytes=1000,
            )
        assert message in str(refused.value) and refused.value.field == "file"
        assert list(imports_folder().iterdir()) == []


def test_preview_shows_the_first_rows(app: Flask) -> None:
    with app.app_context():
        import_id = upload(SAMPLE)
        with db.session() as session:
            entry = session.get(SubscriberImport, import_id)
            assert entry is not None
            rows = csv_import.preview(entry, imports_folder())
            longer = csv_import.preview(entry, imports_folder(), rows=6)
    assert entry.header == ["Email", "First Name", "Time zone", "Notes"]
    assert rows[0] == ["ann@example.org", "Ann", "Europe/Berlin", "first"]
    assert len(rows) == 5 and longer[5][3] == "two\r\nlines"


def test_hostile_cells_come_back_neutralised_in_the_export(app: Flask) -> None:
    with app.app_context():
        import_id = upload(
            "email,name\n"
            'a@example.org,"=HYPERLINK(""https://evil.example"",""x"")"\n'
            "b@example.org,+cmd|' /C calc'!A0\n"
            "c@example.org,@SUM(1+1)\n"
            "d@example.org,-2+3\n"
            "e@example.org,\u202eevil\u202c\n"
            "f@example.org,раураl\n"
        )
        start(import_id)
        run(import_id)
    with db.session() as session:
        text = "".join(directory.export_csv(session, directory.Query(sort="email")))
    names = {row["email"]: row["first_name"] for row in csv.DictReader(io.StringIO(text))}
    assert names["a@example.org"] == '\'=HYPERLINK("https://evil.example","x")'
    assert names["b@example.org"] == "'+cmd|' /C calc'!A0"
    assert names["c@example.org"] == "'@SUM(1+1)"
    assert names["d@example.org"] == "'-2+3"
    assert names["e@example.org"] == "\u202eevil\u202c", "text stays as it was given"
    assert names["f@example.org"] == "раураl"


# -- a real worker, a large file ---------------------------------------------------------------

ROWS = 200_000
# Each row carries a wide column nobody maps, as exports from other tools do: the file is
# about 83 MB, so that holding it (or its rows) in memory would show in the worker's peak.
WIDE = "x" * 380
# Growth of the worker's peak resident memory the import may cause. Reading the file whole
# takes more than its size; a streamed import holds one batch.
GROWTH_BOUND_MB = 50


def peak_and_pool_pid(worker: WorkerProcess) -> tuple[int, int]:
    """The pool process of a --concurrency 1 worker, and its peak resident memory (kB)."""
    children = Path(f"/proc/{worker.proc.pid}/task/{worker.proc.pid}/children").read_text()
    pids = [int(p) for p in children.split()]
    assert len(pids) == 1, f"expected one pool process, found {pids}"
    return pids[0], vm_hwm(pids[0])


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def big_file(path: Path) -> None:
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write("email,first_name,notes\n")
        for n in range(ROWS):
            if n % 50_000 == 7:
                out.write(f"broken{n}@@example.org,Broken,{WIDE}\n")
            elif n % 50_000 == 8:
                out.write(f"P{n - 2:06d}@Example.org,Again,{WIDE}\n")
            else:
                out.write(f"p{n:06d}@example.org,Person {n},{WIDE}\n")


@pytest.mark.slow
@pytest.mark.redis
def test_a_large_file_through_a_real_worker_stays_in_bounded_memory(
    tmp_path: Path,
    sqlite_url: str,
    redis_url: str,
    smtp_sink: SmtpSink,
    run_worker: Callable[..., WorkerProcess],
    report_line: Callable[[str], None],
) -> None:
    env = base_env(tmp_path, sqlite_url, smtp_sink, BROKER_URL=redis_url, REDIS_URL=redis_url)
    app = make_app(env)
    with db.transaction() as session:
        ensure_seed(session)
    source = tmp_path / "big.csv"
    big_file(source)
    size_mb = source.stat().st_size / 1e6
    worker = run_worker(env, beat=False, concurrency=1)
    pool_pid, before = peak_and_pool_pid(worker)
    with app.app_context():
        with open(source, "rb") as stream, db.transaction() as session:
            entry = csv_import.receive(
                session, stream, "big.csv", imports_folder(), ADMIN, clock.now()
            )
            import_id = entry.id
        start(import_id)
        from newsletter.tasks import import_subscribers

        import_subscribers.delay(import_id)
    # A guard against a hung worker, not a measure: a loaded 2-core machine takes 15 minutes.
    deadline = time.monotonic() + 3600
    while True:
        with db.session() as session:
            entry = session.get(SubscriberImport, import_id)
            assert entry is not None
            if entry.status in (ImportStatus.DONE, ImportStatus.FAILED):
                break
        assert time.monotonic() < deadline, f"import not done:\n{worker.log()[-3000:]}"
        time.sleep(1)
    assert entry.status is ImportStatus.DONE, entry.error
    growth_mb = (vm_hwm(pool_pid) - before) / 1024
    report_line(
        f"CSV import: {ROWS} rows, {size_mb:.0f} MB file; "
        f"worker peak memory grew {growth_mb:.1f} MB"
    )
    assert size_mb > 1.5 * GROWTH_BOUND_MB, "reading this file whole would pass the bound"
    assert growth_mb < GROWTH_BOUND_MB
    assert (entry.rows_read, entry.added, entry.duplicates, entry.invalid) == (
        ROWS,
        ROWS - 8,
        4,
        4,
    )
    lines = sorted((p["line"], p["kind"]) for p in entry.problems)
    # Row n is on line n + 2; the broken rows and the repeats are n = 7 and 8 of each 50,000.
    assert lines == sorted(
        [(n + 2, "invalid") for n in range(7, ROWS, 50_000)]
        + [(n + 2, "duplicate") for n in range(8, ROWS, 50_000)]
    )
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Subscriber)) == ROWS - 8
    assert not os.path.exists(csv_import.folder(Path(env["INSTANCE_DIR"])) / entry.stored_name)


def write_fifo(path: Path, text: str, until: threading.Event | None = None) -> threading.Thread:
    """Write `text` into the named pipe at `path` once a reader opens it (in a thread); with
    `until`, the pipe stays open (the reader waits for more) until that is set."""

    def write() -> None:
        with contextlib.suppress(BrokenPipeError), open(path, "w", encoding="utf-8") as pipe:
            pipe.write(text)
            pipe.flush()
            if until is not None:
                until.wait(600)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
@pytest.mark.redis
def test_a_worker_killed_mid_import_is_replaced_and_the_import_completes(
    tmp_path: Path,
    sqlite_url: str,
    redis_url: str,
    smtp_sink: SmtpSink,
    run_worker: Callable[..., WorkerProcess],
) -> None:
    """kill -9 of the process running the import, in the middle of the file: Celery gives the
    task out again (it is acknowledged only at its end) and the new process resumes after the
    committed rows. The file is a named pipe the test writes, so the first process is
    certainly waiting, two batches in, when it is killed."""
    rows = 3 * csv_import.BATCH_ROWS
    env = base_env(tmp_path, sqlite_url, smtp_sink, BROKER_URL=redis_url, REDIS_URL=redis_url)
    app = make_app(env)
    with db.transaction() as session:
        ensure_seed(session)
    lines = ["email,first_name"] + [f"k{n:05d}@example.org,Person {n}" for n in range(rows)]
    lines.insert(1 + rows // 2, "k00007@example.org,Again")  # one duplicate, mid-file
    text = "\n".join(lines) + "\n"
    first_two_batches = "\n".join(lines[: 1 + 2 * csv_import.BATCH_ROWS]) + "\n"
    with app.app_context():
        import_id = upload(text)
        start(import_id)
        with db.session() as session:
            entry = session.get(SubscriberImport, import_id)
            assert entry is not None
            pipe = imports_folder() / entry.stored_name
        pipe.unlink()
        os.mkfifo(pipe)
        worker = run_worker(env, beat=False, concurrency=1)
        killed = threading.Event()
        writer = write_fifo(pipe, first_two_batches, until=killed)
        from newsletter.tasks import import_subscribers

        import_subscribers.delay(import_id)
    deadline = time.monotonic() + 600  # guards against a worker that never starts
    while True:
        with db.session() as session:
            entry = session.get(SubscriberImport, import_id)
            assert entry is not None
            if entry.rows_read == 2 * csv_import.BATCH_ROWS:
                break
        assert time.monotonic() < deadline, f"the import never began:\n{worker.log()[-3000:]}"
        time.sleep(0.05)
    first_pool, _ = peak_and_pool_pid(worker)
    os.kill(first_pool, signal.SIGKILL)
    killed.set()
    writer.join(30)
    # Its end closes its end of the pipe; until then a new writer could be paired with it.
    while Path(f"/proc/{first_pool}").exists():
        assert time.monotonic() < deadline, "the killed process was never reaped"
        time.sleep(0.05)
    write_fifo(pipe, text)  # for the next delivery: the whole file, and its end
    while True:
        with db.session() as session:
            entry = session.get(SubscriberImport, import_id)
            assert entry is not None
            if entry.status in (ImportStatus.DONE, ImportStatus.FAILED):
                break
        assert time.monotonic() < deadline, f"the import never ended:\n{worker.log()[-3000:]}"
        time.sleep(0.2)
    assert f"import {import_id} resumes after row {2 * csv_import.BATCH_ROWS}" in worker.log()
    assert entry.status is ImportStatus.DONE, entry.error
    assert (entry.rows_read, entry.added, entry.duplicates, entry.invalid) == (
        rows + 1,
        rows,
        1,
        0,
    )
    assert [(p["line"], p["kind"]) for p in entry.problems] == [(2 + rows // 2, "duplicate")]
    with db.session() as session:
        emails = list(session.scalars(select(Subscriber.email)))
        confirmations = session.scalar(
            select(func.count(Delivery.id)).where(Delivery.kind == DeliveryKind.CONFIRM)
        )
    assert len(emails) == len(set(emails)) == rows and confirmations == rows

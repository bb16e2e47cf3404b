"""The embedded run: every part of the product as child processes of one command.

Starts the embedded broker (unless BROKER_URL names a real one), the local mail catcher
(unless SMTP_HOST names a real server), prepares the database, then runs a Celery worker with
its beat scheduler and the web app under gunicorn, until Ctrl-C or SIGTERM stops them all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from newsletter import clock, embedded, mailcatcher
from newsletter.admins import accounts
from newsletter.config import Settings
from newsletter.content import sequences
from newsletter.db import db
from newsletter.migrate import upgrade

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# web.py and worker.py live at the project root; the children import them from there.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _children(port: int) -> dict[str, list[str]]:
    python = sys.executable
    worker = "-m celery -A worker worker -B --loglevel INFO --concurrency 2".split()
    web = f"-m gunicorn web:app --bind 127.0.0.1:{port} --workers 2 --access-logfile -".split()
    return {"worker": [python, *worker], "web": [python, *web]}


FIRST_OWNER = "owner@example.com"


def ensure_first_owner() -> tuple[str, str] | None:
    """Create the first owner when no admin exists: (address, one-time password), else None."""
    with db.transaction() as session:
        if accounts.any_admin(session):
            return None
        password = accounts.generate_password()
        accounts.create(session, FIRST_OWNER, password, "owner", clock.now(), one_time=True)
    return FIRST_OWNER, password


def run(settings: Settings, *, port: int = 5000) -> int:
    """Run until interrupted; returns the exit status."""
    env = dict(os.environ)
    env["INSTANCE_DIR"] = str(settings.instance_dir)
    mail_dir = settings.dev_mail_dir or settings.instance_dir / "mail"
    env["DEV_MAIL_DIR"] = str(mail_dir)
    # Links in caught mail must point at this run's web port unless the operator said otherwise.
    env.setdefault("SITE_URL", f"http://127.0.0.1:{port}")

    started_broker = False
    if settings.broker_is_embedded:
        embedded.ensure_running(settings.instance_dir)
        started_broker = True
    catcher = None
    if settings.smtp_host in LOCAL_HOSTS:
        catcher = mailcatcher.start(Path(mail_dir), port=settings.smtp_port)

    upgrade(settings.database_url)
    with db.transaction() as session:
        sequences.ensure_seed(session)
    first_owner = ensure_first_owner()

    commands = _children(port)
    procs = {
        name: subprocess.Popen(cmd, env=env, cwd=PROJECT_ROOT) for name, cmd in commands.items()
    }
    print(f"\n  signup page:   http://127.0.0.1:{port}/")
    if catcher is not None:
        print(f"  caught mail:   http://127.0.0.1:{port}/_dev/mail/")
    print(f"  admin:         http://127.0.0.1:{port}/admin/")
    if first_owner is not None:
        email, password = first_owner
        print(f"                 sign in as {email} with the one-time password {password}")
        print("                 (you choose your own password at the first sign-in)")
    else:
        print("                 (more accounts: .venv/bin/flask --app web create-admin EMAIL)")
    print("  Ctrl-C stops everything.\n", flush=True)

    stopping = False

    def _stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    status = 0
    try:
        while not stopping:
            for name, proc in list(procs.items()):
                if proc.poll() is None:
                    continue
                if name == "worker" and not stopping:
                    # A worker can die on a broker outage (kombu cannot always restore unacked
                    # messages); the database keeps every mail, so a fresh worker picks up.
                    print(f"worker exited with {proc.returncode}; restarting it", file=sys.stderr)
                    time.sleep(2)
                    procs[name] = subprocess.Popen(commands[name], env=env, cwd=PROJECT_ROOT)
                    continue
                print(f"{name} exited with {proc.returncode}; stopping", file=sys.stderr)
                status = proc.returncode or 1
                stopping = True
            time.sleep(0.5)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if catcher is not None:
            catcher.stop()
        if started_broker:
            embedded.stop(settings.instance_dir)
    return status

"""DKIM signing, Reply-To and the mailto unsubscribe: checked on mail a real SMTP server got."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from email import policy
from email.parser import BytesParser
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask

from newsletter.config import ConfigError, load_settings
from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.mail.dkim_signing import DkimError, DkimSigner
from newsletter.models import DeliveryKind, Subscriber, SubscriberStatus
from tests.helpers.apps import base_env, make_app, runtime_of
from tests.helpers.sending import active_subscriber, claim_all, deliver, delivery
from tests.helpers.smtp import SmtpSink


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "dkim.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture
def signed_app(
    tmp_path: Path, sqlite_url: str, smtp_sink: SmtpSink, key_file: Path
) -> Iterator[Flask]:
    env = base_env(
        tmp_path,
        sqlite_url,
        smtp_sink,
        MAIL_FROM="Ann Author <ann@example.com>",
        REPLY_TO="Ann <replies@example.com>",
        UNSUBSCRIBE_MAILTO="unsubscribe@example.com",
        DKIM_SELECTOR="mail2026",
        DKIM_PRIVATE_KEY_FILE=str(key_file),
    )
    application = make_app(env)
    with db.transaction() as session:
        ensure_seed(session)
    yield application
    db.dispose()


def send_part_one(app: Flask, sink: SmtpSink, email: str) -> bytes:
    """Part 1 for a new subscriber, through the real sender; the bytes the server received."""
    active_subscriber(email)
    step_id = next(i for i in claim_all() if delivery(i).kind is DeliveryKind.STEP)
    deliver(app, step_id)
    return sink.handler.raw[-1]


def dns_for(app: Flask) -> dict[bytes, bytes]:
    signer = runtime_of(app).composer.signer
    assert signer is not None
    return {f"{signer.dns_name()}.".encode(): signer.dns_value().encode()}


def verify(raw: bytes, records: dict[bytes, bytes]) -> bool:
    return bool(dkim.verify(raw, dnsfunc=lambda name, timeout=5: records.get(name)))


def test_sent_mail_carries_a_valid_signature(signed_app: Flask, smtp_sink: SmtpSink) -> None:
    raw = send_part_one(signed_app, smtp_sink, "reader@example.org")
    records = dns_for(signed_app)
    assert verify(raw, records)
    message = BytesParser(policy=policy.default).parsebytes(raw)
    signature = str(message["DKIM-Signature"])
    tags = dict(
        part.strip().split("=", 1)
        for part in signature.replace("\r\n", "").split(";")
        if "=" in part
    )
    assert tags["d"] == "example.com" and tags["s"] == "mail2026"
    assert tags["c"] == "relaxed/relaxed"
    signed = {h.strip().lower() for h in tags["h"].replace(" ", "").split(":")}
    for header in ("from", "to", "subject", "date", "message-id", "list-unsubscribe",
                   "list-unsubscribe-post", "reply-to", "list-id"):  # fmt: skip
        assert header in signed, header
    # A receiver that sees any signed header changed rejects the signature.
    tampered = raw.replace(b"Subject: ", b"Subject: FREE MONEY ", 1)
    assert not verify(tampered, records)


def test_reply_to_and_both_unsubscribe_methods(signed_app: Flask, smtp_sink: SmtpSink) -> None:
    raw = send_part_one(signed_app, smtp_sink, "both@example.org")
    message = BytesParser(policy=policy.strict).parsebytes(raw)
    assert str(message["Reply-To"]) == "Ann <replies@example.com>"
    value = str(message["List-Unsubscribe"])
    https, mailto = (part.strip(" <>") for part in value.split(","))
    assert https.startswith("http") and "/unsubscribe/" in https
    assert mailto.startswith("mailto:unsubscribe@example.com?subject=unsubscribe%20")
    assert mailto.rsplit("%20", 1)[1] == https.rsplit("/", 1)[1]  # the same signed token


def test_a_mailto_request_unsubscribes_through_the_cli(
    signed_app: Flask, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    raw = send_part_one(signed_app, smtp_sink, "leaver@example.org")
    mailto = str(BytesParser(policy=policy.default).parsebytes(raw)["List-Unsubscribe"])
    token = mailto.rsplit("%20", 1)[1].rstrip(">")
    request = (
        "From: leaver@example.org\r\nTo: unsubscribe@example.com\r\n"
        f"Subject: Re: unsubscribe {token}\r\n\r\nplease stop\r\n"
    ).encode()
    runner = signed_app.test_cli_runner()
    result = runner.invoke(args=["unsubscribe-mail"], input=request)
    assert result.exit_code == 0, result.output
    with db.session() as session:
        sub = session.query(Subscriber).filter_by(email="leaver@example.org").one()
        assert sub.status is SubscriberStatus.UNSUBSCRIBED
    forged = request.replace(token.encode(), b"not-a-token")
    result = runner.invoke(args=["unsubscribe-mail"], input=forged)
    assert result.exit_code != 0 and "not valid" in result.output


def test_dkim_record_command_prints_the_public_key(signed_app: Flask) -> None:
    result = signed_app.test_cli_runner().invoke(args=["dkim-record"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("mail2026._domainkey.example.com. IN TXT (")
    joined = "".join(part for part in result.output.split('"')[1::2])
    assert joined == runtime_of(signed_app).composer.signer.dns_value()  # type: ignore[union-attr]
    assert joined.startswith("v=DKIM1; k=rsa; p=MII")


def test_bad_dkim_settings_fail_at_start(tmp_path: Path, key_file: Path) -> None:
    base = {"SECRET_KEY": "k" * 32}
    with pytest.raises(ConfigError, match="DKIM_SELECTOR and DKIM_PRIVATE_KEY_FILE"):
        load_settings({**base, "DKIM_SELECTOR": "s1"})
    with pytest.raises(ConfigError, match="DKIM_SELECTOR must be a DNS label"):
        load_settings({**base, "DKIM_SELECTOR": "bad_sel", "DKIM_PRIVATE_KEY_FILE": "x"})
    with pytest.raises(DkimError, match="DKIM_PRIVATE_KEY_FILE"):
        DkimSigner.from_file("example.com", "s1", tmp_path / "missing.pem")
    not_a_key = tmp_path / "junk.pem"
    not_a_key.write_text("hello")
    with pytest.raises(DkimError, match="not a PEM private key"):
        DkimSigner.from_file("example.com", "s1", not_a_key)
    with pytest.raises(ConfigError, match="REPLY_TO"):
        load_settings({**base, "REPLY_TO": "nobody"})
    with pytest.raises(ConfigError, match="UNSUBSCRIBE_MAILTO"):
        load_settings({**base, "UNSUBSCRIBE_MAILTO": "Name <u@example.com>"})


def test_the_app_refuses_to_start_with_an_unreadable_key(tmp_path: Path, sqlite_url: str) -> None:
    env = base_env(
        tmp_path, sqlite_url, None, DKIM_SELECTOR="s1", DKIM_PRIVATE_KEY_FILE=str(tmp_path / "no")
    )
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "web", "dkim-record"],
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode != 0
    assert "DKIM_PRIVATE_KEY_FILE" in result.stderr + result.stdout


@pytest.mark.any_database
def test_unsigned_when_dkim_is_off(app: Flask, smtp_sink: SmtpSink) -> None:
    raw = send_part_one(app, smtp_sink, "plain@example.org")
    assert b"DKIM-Signature" not in raw and b"Reply-To" not in raw
    assert b"mailto:" not in raw


def test_openssl_signature_is_byte_for_byte_dkimpys(key_file: Path) -> None:
    """The RSA step handed to OpenSSL gives exactly the signature dkimpy's own code gives."""
    import hashlib

    import dkim.crypto

    from newsletter.mail import dkim_signing

    # Creating a signer is what chooses OpenSSL (importing changes nothing: test_imports.py).
    dkim_signing.DkimSigner.from_file("example.test", "s1", key_file)
    private = dkim.crypto.parse_pem_private_key(key_file.read_bytes())
    for algorithm in (hashlib.sha256, hashlib.sha1):
        digest = algorithm(b"a header block to sign")
        ours = dkim_signing.openssl_rsa_sign(digest, private)
        assert ours == dkim_signing._PYTHON_RSA_SIGN(digest, private)
    assert dkim.RSASSA_PKCS1_v1_5_sign is dkim_signing.openssl_rsa_sign

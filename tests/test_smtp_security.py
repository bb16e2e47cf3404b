"""SMTP over STARTTLS and implicit TLS with certificate checking, and AUTH, against aiosmtpd."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from newsletter.config import load_settings
from newsletter.mail.transport import SendError, SmtpTransport
from tests.helpers.apps import base_env
from tests.helpers.ports import free_port
from tests.helpers.smtp import SinkHandler


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A private CA and a server certificate for localhost / 127.0.0.1."""
    folder = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Test CA"))
        .issuer_name(_name("Test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(san, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def _server_context(pki: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["cert"], pki["key"])
    return context


def _authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"relay", b"s3cret")
    return AuthResult(success=ok, handled=False)


@pytest.fixture(params=["starttls", "tls"])
def secure_server(
    request: pytest.FixtureRequest, pki: dict[str, Path]
) -> Iterator[tuple[str, int, SinkHandler]]:
    """An SMTP server that requires TLS (STARTTLS or implicit) and AUTH."""
    handler = SinkHandler()
    port = free_port()
    kwargs: dict[str, Any] = {
        "authenticator": _authenticator,
        "auth_required": True,
    }
    if request.param == "starttls":
        kwargs |= {"tls_context": _server_context(pki), "require_starttls": True}
        controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    else:
        # aiosmtpd cannot see that an implicit-TLS socket is encrypted; tell it AUTH is safe.
        kwargs["auth_require_tls"] = False
        controller = Controller(
            handler,
            hostname="127.0.0.1",
            port=port,
            ssl_context=_server_context(pki),
            **kwargs,
        )
    controller.start()
    try:
        yield request.param, port, handler
    finally:
        controller.stop()


def _transport(tmp_path: Path, security: str, port: int, **extra: str) -> SmtpTransport:
    env = base_env(
        tmp_path,
        f"sqlite:///{tmp_path / 'x.db'}",
        None,
        SMTP_HOST="localhost",
        SMTP_PORT=str(port),
        SMTP_SECURITY=security,
        **extra,
    )
    return SmtpTransport(load_settings(env))


def _message() -> Any:
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = "Course <course@example.test>"
    msg["To"] = "reader@example.org"
    msg["Subject"] = "Hello"
    msg.set_content("Body\n")
    return msg


def test_tls_with_trusted_certificate_and_auth(
    secure_server: tuple[str, int, SinkHandler],
    pki: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    security, port, handler = secure_server
    monkeypatch.setenv("SSL_CERT_FILE", str(pki["ca"]))
    transport = _transport(tmp_path, security, port, SMTP_USERNAME="relay", SMTP_PASSWORD="s3cret")
    transport.send(_message())
    transport.send(_message())  # over the same, reused connection
    assert len(handler.messages) == 2 and transport.connects == 1
    transport.close()


def test_untrusted_certificate_is_refused(
    secure_server: tuple[str, int, SinkHandler], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    security, port, handler = secure_server
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    transport = _transport(tmp_path, security, port, SMTP_USERNAME="relay", SMTP_PASSWORD="s3cret")
    with pytest.raises(SendError, match="CERTIFICATE_VERIFY_FAILED"):
        transport.send(_message())
    assert handler.messages == []


def test_wrong_password_is_an_error_not_a_send(
    secure_server: tuple[str, int, SinkHandler],
    pki: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    security, port, handler = secure_server
    monkeypatch.setenv("SSL_CERT_FILE", str(pki["ca"]))
    transport = _transport(tmp_path, security, port, SMTP_USERNAME="relay", SMTP_PASSWORD="nope")
    with pytest.raises(SendError, match="535"):
        transport.send(_message())
    assert handler.messages == []

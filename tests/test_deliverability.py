"""CHECK_DELIVERABILITY: at signup the address's domain must have MX, or A/AAAA, records.

A tiny DNS server on 127.0.0.1 (dnspython builds its answers) stands in for the Internet, so no
test leaves the machine: real UDP queries, real answers, a real timeout.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest
from flask import Flask
from sqlalchemy import func, select

from newsletter.content.sequences import ensure_seed
from newsletter.db import db
from newsletter.mail.deliverability import UNDELIVERABLE, DeliverabilityCheck
from newsletter.models import Subscriber
from tests.helpers.apps import base_env, make_app, runtime_of
from tests.helpers.smtp import SmtpSink
from tests.helpers.webclient import post_signup

RECORDS = {
    ("mail.example.org", "MX"): ["10 mx.mail.example.org."],
    ("plain.example.org", "A"): ["192.0.2.10"],  # no MX: the A record is the implicit MX
    ("six.example.org", "AAAA"): ["2001:db8::1"],
    ("nullmx.example.org", "MX"): ["0 ."],  # RFC 7505: takes no mail
}
NXDOMAIN = {"nowhere.example.org"}
SILENT = {"slow.example.org"}  # the server never answers: the lookup times out


class LocalDns:
    """A UDP DNS server on 127.0.0.1 answering from RECORDS; it remembers what it was asked."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.asked: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, client = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            kind = dns.rdatatype.to_text(question.rdtype)
            self.asked.append((name, kind))
            if name in SILENT:
                continue
            answer = dns.message.make_response(query)
            if name in NXDOMAIN:
                answer.set_rcode(dns.rcode.NXDOMAIN)
            for value in RECORDS.get((name, kind), []):
                answer.answer.append(dns.rrset.from_text(f"{name}.", 60, "IN", kind, value))
            self.sock.sendto(answer.to_wire(), client)

    def resolver(self) -> dns.resolver.Resolver:
        """A resolver that asks this server only."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.port
        return resolver

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def local_dns() -> Iterator[LocalDns]:
    server = LocalDns()
    yield server
    server.stop()


def test_domains_with_mx_or_address_records_receive_mail(local_dns: LocalDns) -> None:
    check = DeliverabilityCheck(local_dns.resolver(), timeout=0.5)
    assert check.receives_mail("mail.example.org")
    assert check.receives_mail("plain.example.org")
    assert check.receives_mail("six.example.org")
    assert not check.receives_mail("nowhere.example.org")
    assert not check.receives_mail("nullmx.example.org")
    assert not check.receives_mail("empty.example.org")  # exists, no record of any kind
    # The A record is asked for only when there is no MX.
    assert ("mail.example.org", "A") not in local_dns.asked
    assert ("plain.example.org", "A") in local_dns.asked


def test_a_timeout_accepts_the_address(local_dns: LocalDns) -> None:
    check = DeliverabilityCheck(local_dns.resolver(), timeout=0.3)
    assert check.receives_mail("slow.example.org")
    assert ("slow.example.org", "MX") in local_dns.asked


def test_answers_are_cached_for_a_while(local_dns: LocalDns) -> None:
    now = [0.0]
    check = DeliverabilityCheck(local_dns.resolver(), cache_seconds=60, clock=lambda: now[0])
    assert not check.receives_mail("Nowhere.example.org")
    assert not check.receives_mail("nowhere.example.org.")
    assert local_dns.asked.count(("nowhere.example.org", "MX")) == 1
    now[0] = 61.0
    assert not check.receives_mail("nowhere.example.org")
    assert local_dns.asked.count(("nowhere.example.org", "MX")) == 2


@pytest.fixture
def checking_app(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink, local_dns: LocalDns
) -> Iterator[Flask]:
    env = base_env(tmp_path, database_url, smtp_sink, CHECK_DELIVERABILITY="1")
    application = make_app(env)
    runtime_of(application).deliverability_check = DeliverabilityCheck(
        local_dns.resolver(), timeout=0.3
    )
    with db.transaction() as session:
        ensure_seed(session)
    yield application
    db.dispose()


def subscribers() -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count(Subscriber.id))) or 0)


def test_signup_refuses_a_domain_without_mail_beside_the_field(checking_app: Flask) -> None:
    client = checking_app.test_client()
    status, _, page = post_signup(client, "reader@nowhere.example.org")
    assert status == 400
    assert f'<p class="error" id="email-error" role="alert">{UNDELIVERABLE}</p>' in page
    assert 'aria-describedby="email-error"' in page
    assert subscribers() == 0
    assert post_signup(client, "reader@mail.example.org")[:2] == (303, "/thanks")
    assert post_signup(client, "reader@slow.example.org")[:2] == (
        303,
        "/thanks",
    )  # timeout: accepted
    assert subscribers() == 2


def test_without_the_setting_nothing_is_looked_up(app: Flask, local_dns: LocalDns) -> None:
    runtime_of(app).deliverability_check = DeliverabilityCheck(local_dns.resolver())
    assert post_signup(app.test_client(), "reader@nowhere.example.org")[:2] == (303, "/thanks")
    assert local_dns.asked == []

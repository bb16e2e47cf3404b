"""SpamAssassin (Debian's package, its shipped offline rules) scores every shipped mail."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable

import pytest
from flask import Flask

from tests.helpers.shipped import send_shipped_mails
from tests.helpers.smtp import SmtpSink

MAX_SCORE = 1.0


def spamassassin() -> str:
    path = shutil.which("spamassassin")
    if path is None:
        message = "spamassassin is not on PATH (apt-get install spamassassin)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def score(raw: bytes) -> tuple[float, list[str]]:
    """The score `spamassassin -L -t` (local tests only) gives, and the rules that fired."""
    result = subprocess.run(
        [spamassassin(), "-L", "-t"], input=raw, capture_output=True, timeout=120, check=False
    )
    report = result.stdout.decode("utf-8", "replace")
    found = re.search(r"Content analysis details:\s+\((-?[\d.]+) points", report)
    assert found, f"no SpamAssassin report:\n{report[-2000:]}\n{result.stderr.decode()[-500:]}"
    details = report[found.end() :]
    rules = [line.strip() for line in details.splitlines() if re.match(r"\s*-?\d+\.\d+ \w", line)]
    return float(found.group(1)), rules


@pytest.mark.any_database
def test_every_shipped_mail_scores_at_most_one_point(
    app: Flask, smtp_sink: SmtpSink, report_line: Callable[[str], None]
) -> None:
    spamassassin()
    mails = send_shipped_mails(app, smtp_sink)
    assert len(mails) == 5
    results = [score(raw) for raw in mails]
    names = ["confirmation", "part 1", "part 2", "part 3", "part 4"]
    for name, (points, rules) in zip(names, results, strict=True):
        report_line(f"[spamassassin] {name}: {points} points; " + "; ".join(rules))
    too_high = {i: r for i, r in enumerate(results) if r[0] > MAX_SCORE}
    assert not too_high, f"scored above {MAX_SCORE}: {too_high}"


def test_the_scorer_is_not_blind() -> None:
    """The same command flags a mail built to look like spam, so a low score means something."""
    spam = (
        b"From: WINNER <winner@example.com>\r\nTo: you@example.org\r\n"
        b"Subject: =?utf-8?q?FREE_MONEY!!!_CLICK_NOW?=\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html\r\n\r\n<html><body><font size=7 color=red>"
        b"100% FREE!!! Viagra, casino, lottery WINNER. Act now, limited time, "
        b"no credit check, click here to claim your $1,000,000 prize!!!"
        b"<img src=http://1.2.3.4/x.gif></font></body></html>\r\n"
    )
    points, rules = score(spam)
    assert points > MAX_SCORE, rules

"""What building one mail costs: the first render of a step, and each subscriber's copy after.

A step is rendered once (Markdown, the Jinja2 layout, css-inline) and cached; every
subscriber's copy then only swaps in a name and personal links and is assembled into wire
bytes, optionally DKIM-signed. This measures each of those on the shipped series, in one
process, with no database or SMTP in the loop:

- render: `Composer.step` with the cache cleared (every part of the series, --renders times);
- personalise: `Composer.step` from the cache, for --mails distinct subscribers;
- templated: `Composer.step` of part 1 with `{{ first_name }}` in its body, which is rendered
  per subscriber (values as tokens, filled in after Markdown), for --renders * 10 subscribers;
- tracked: `Composer.step` from the cache of part 1 with --links links in its body, in a
  sequence that tracks, for --mails deliveries (a signed token per link and the open image's);
- wire: `Composer.wire` (headers checked and encoded, both parts quoted-printable);
- wire + DKIM: the same with a 2048-bit RSA key (dkimpy, RSA through OpenSSL).

    .venv/bin/python bench/compose_cost.py [--mails 5000] [--renders 20]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from sqlalchemy import create_engine, select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from bench._common import machine, source_revision, table  # noqa: E402
from newsletter import clock  # noqa: E402
from newsletter.config import load_settings  # noqa: E402
from newsletter.content.sequences import ensure_seed  # noqa: E402
from newsletter.mail.compose import Addressee, Composer  # noqa: E402
from newsletter.migrate import upgrade  # noqa: E402
from newsletter.models import Sequence, Step  # noqa: E402
from newsletter.tokens import Tokens  # noqa: E402


def composer_for(workdir: Path, dkim: bool) -> Composer:
    env = {
        "INSTANCE_DIR": str(workdir),
        "DATABASE_URL": f"sqlite:///{workdir / 'newsletter.db'}",
        "SECRET_KEY": "bench-secret-key-0123456789",
        "SITE_URL": "https://news.example.org",
        "MAIL_FROM": "Emotional Distance <course@news.example.org>",
        "POSTAL_ADDRESS": "1 Example Street, Exampleton",
    }
    if dkim:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = workdir / "dkim.pem"
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        env |= {"DKIM_SELECTOR": "bench", "DKIM_PRIVATE_KEY_FILE": str(pem)}
    settings = load_settings(env)
    return Composer(settings, Tokens(settings.secret_key, settings.confirm_max_age_seconds))


def per_call(fn: Callable[[int], object], n: int) -> float:
    """Seconds per call of fn(i) over i in range(n)."""
    started = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mails", type=int, default=5000)
    parser.add_argument("--renders", type=int, default=20)
    parser.add_argument("--links", type=int, default=5)
    args = parser.parse_args()
    # The seed's empty link targets warn on every render; the warnings are not what is measured.
    logging.disable(logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="compose-cost-") as tmp:
        workdir = Path(tmp)
        plain = composer_for(workdir, dkim=False)
        signing = composer_for(workdir, dkim=True)
        upgrade(plain.settings.database_url)
        engine = create_engine(plain.settings.database_url)
        with Session(engine, expire_on_commit=False) as session:
            ensure_seed(session)
            session.commit()
            sequence = session.scalars(select(Sequence)).one()
            steps = list(sequence.steps)
            total = len(steps)
            readers = [
                Addressee(i + 1, f"reader{i}@example.org", f"Reader{i}" if i % 3 else None)
                for i in range(args.mails)
            ]
            now = clock.now()
            list_id = plain.list_id(sequence)

            renders: list[float] = []
            for _ in range(args.renders):
                for step in steps:
                    plain._step_cache.clear()
                    started = time.perf_counter()
                    plain.step(readers[1], step, sequence, total)
                    renders.append(time.perf_counter() - started)

            first = steps[0]
            templated = Step(
                id=first.id,
                position=first.position,
                day_offset=0,
                subject=first.subject,
                preheader=first.preheader,
                body_md="## Hello {{ first_name|d('you', true) }}\n\n" + first.body_md,
                teaser=first.teaser,
                resources=first.resources,
                resources_intro=first.resources_intro,
            )
            per_subscriber = per_call(
                lambda i: plain.step(readers[i], templated, sequence, total), args.renders * 10
            )

            tracking = Sequence(slug=sequence.slug, title=sequence.title, tracking=True)
            linked = Step(
                id=first.id,
                position=first.position,
                day_offset=0,
                subject=first.subject,
                preheader=first.preheader,
                body_md="".join(f"[Link {n}](https://example.org/{n}) " for n in range(args.links))
                + "\n\n"
                + first.body_md,
                teaser=first.teaser,
                resources=first.resources,
                resources_intro=first.resources_intro,
            )
            tracked = per_call(
                lambda i: plain.step(readers[i], linked, tracking, total, delivery_id=i + 1),
                args.mails,
            )

            def copy(i: int) -> object:
                reader = readers[i]
                return plain.step(reader, steps[i % total], sequence, total)

            copies = [copy(i) for i in range(min(args.mails, 4 * total))]  # warm every key
            personalise = per_call(copy, args.mails)
            copies = [copy(i) for i in range(args.mails)]

            def wire(composer: Composer) -> Callable[[int], object]:
                def _wire(i: int) -> object:
                    url = composer.unsubscribe_url(readers[i].id)
                    return composer.wire(
                        copies[i], readers[i], now, list_id=list_id, unsubscribe_url=url
                    )

                return _wire

            wire_plain = per_call(wire(plain), args.mails)
            signed_n = max(1, args.mails // 5)
            wire_signed = per_call(wire(signing), signed_n)
            size = len(wire(plain)(0).data)  # type: ignore[attr-defined]
        engine.dispose()

    print(f"# compose cost: {machine()}; source {source_revision()}")
    print(f"# the shipped series ({total} parts), {args.mails} subscribers; one process")
    rows = [
        ["stage", "calls", "per call", "mails/s, one core"],
        [
            "render a step (Markdown, layout, css-inline)",
            str(len(renders)),
            f"{statistics.median(renders) * 1000:.2f} ms (median)",
            "",
        ],
        [
            "a templated step, rendered per subscriber",
            str(args.renders * 10),
            f"{per_subscriber * 1000:.2f} ms",
            f"{1 / per_subscriber:,.0f}",
        ],
        [
            "personalise a cached step",
            str(args.mails),
            f"{personalise * 1e6:.0f} µs",
            f"{1 / personalise:,.0f}",
        ],
        [
            f"personalise a cached tracked step ({args.links} links)",
            str(args.mails),
            f"{tracked * 1e6:.0f} µs",
            f"{1 / tracked:,.0f}",
        ],
        [
            "wire bytes (headers, quoted-printable)",
            str(args.mails),
            f"{wire_plain * 1e6:.0f} µs",
            f"{1 / wire_plain:,.0f}",
        ],
        [
            "wire bytes + DKIM (RSA 2048)",
            str(signed_n),
            f"{wire_signed * 1000:.2f} ms",
            f"{1 / wire_signed:,.0f}",
        ],
        [
            "a whole mail, unsigned / signed",
            "",
            f"{(personalise + wire_plain) * 1e6:.0f} µs / "
            f"{(personalise + wire_signed) * 1000:.2f} ms",
            f"{1 / (personalise + wire_plain):,.0f} / {1 / (personalise + wire_signed):,.0f}",
        ],
    ]
    print(table(rows, right=(1, 2, 3)))
    print(f"# a part 1 mail is {size:,} bytes on the wire")


if __name__ == "__main__":
    main()

"""A plain `pip install .` (what the Docker image does) carries everything the product reads.

The wheel is built from this checkout and installed into a folder of its own; a fresh
interpreter outside the checkout imports the product from there, migrates a database, renders
the signup page (templates, static files) and builds a confirmation mail (the layouts in
emails/, shipped as newsletter.emails) and imports the shipped article.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys
from pathlib import Path
import newsletter
assert Path(newsletter.__file__).is_relative_to(sys.argv[1]), newsletter.__file__
from newsletter import create_app
from newsletter.config import load_settings
from newsletter.migrate import upgrade
from newsletter.db import db
from newsletter.content.sequences import ensure_seed
from newsletter.mail.compose import Addressee, EMAILS_DIR
assert EMAILS_DIR.is_relative_to(sys.argv[1]), EMAILS_DIR
settings = load_settings()
app = create_app(settings)
upgrade(settings.database_url)
with db.transaction() as session:
    report = ensure_seed(session)
    mail = app.extensions["newsletter"].composer.confirmation(
        Addressee(1, "a@example.org", "Ann"), report.sequence
    )
assert "Confirm" in mail.subject and "<html" in mail.html
page = app.test_client().get("/")
assert page.status_code == 200 and b"csrf_token" in page.data, page.status_code
css = app.test_client().get("/static/style.css")
assert css.status_code == 200 and len(css.data) > 100
print("parts", report.parts)
"""


def _packages_on_disk() -> set[str]:
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "newsletter").rglob("__init__.py")
    }
    return found | {"newsletter.emails"}


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert set(listed) == _packages_on_disk()


def test_a_plain_install_carries_templates_layouts_migrations_and_the_article(
    tmp_path: Path,
) -> None:
    wheels, target, instance = tmp_path / "wheels", tmp_path / "site", tmp_path / "instance"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = list(wheels.glob("newsletter-*.whl"))
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {
        **os.environ,
        # The installed copy first, ahead of this checkout's editable install.
        "PYTHONPATH": str(target),
        "INSTANCE_DIR": str(instance),
        "SECRET_KEY": "packaging-test-secret-key-01",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'plain.db'}",
        "REDIS_URL": "memory://",
    }
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(target)],
        cwd=tmp_path,  # not the checkout, whose newsletter/ would shadow the installed one
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("parts 4")

"""The embedded run's instance folder, prepared before any process reads its settings.

`scripts/run` calls `python -m newsletter.instance` first: without SECRET_KEY in the
environment or `.env`, it keeps a generated key in INSTANCE_DIR/secret_key (readable by this
user only), so that every process of the run signs links alike and links in mail already
sent stay valid across restarts. Reading settings never writes; this is the one place that
does.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from dotenv import load_dotenv

from newsletter.config import SECRET_KEY_FILE


def keep_secret_key(instance_dir: Path) -> Path:
    """Make INSTANCE_DIR/secret_key unless it exists; its path."""
    instance_dir.mkdir(parents=True, exist_ok=True)
    key_file = instance_dir / SECRET_KEY_FILE
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return key_file
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32))
    return key_file


def main() -> None:
    """Prepare the instance folder named by INSTANCE_DIR (default ./instance)."""
    load_dotenv()
    if os.environ.get("SECRET_KEY", "").strip():
        return
    keep_secret_key(Path(os.environ.get("INSTANCE_DIR", "").strip() or "instance").resolve())


if __name__ == "__main__":
    main()

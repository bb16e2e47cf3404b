"""Importing the product does nothing: no process started, no file written, no setting changed.

Every module of the package is imported, then `web` and `worker` (which build the Flask and
Celery apps, as `gunicorn web:app` and `celery -A worker` do), in a fresh interpreter on the
embedded default, and the process is checked for side effects.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, os, pkgutil, importlib, sys
before = dict(os.environ)
import dkim
python_rsa = dkim.RSASSA_PKCS1_v1_5_sign
import newsletter
names = [m.name for m in pkgutil.walk_packages(newsletter.__path__, "newsletter.")]
for name in names:
    if ".migrations." not in name:
        importlib.import_module(name)
import web, worker
print(json.dumps({
    "modules": len(names),
    "environ_changed": sorted(k for k in set(before) | set(os.environ)
                              if before.get(k) != os.environ.get(k)),
    "dkim_patched": dkim.RSASSA_PKCS1_v1_5_sign is not python_rsa,
    "celery": type(worker.app).__name__,
}))
"""


def test_importing_every_module_and_both_apps_has_no_side_effect(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    instance.mkdir()
    env = {
        **os.environ,
        "INSTANCE_DIR": str(instance),
        "SECRET_KEY": "import-test-secret-key-0123",
        "BROKER_URL": "embedded",
        "REDIS_URL": "embedded",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'never.db'}",
    }
    env.pop("CELERY_BROKER_URL", None)
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["modules"] > 40 and seen["celery"] == "Celery"
    assert seen["environ_changed"] == []
    assert not seen["dkim_patched"]
    # No database, no broker socket, no key file: nothing was created anywhere.
    assert list(instance.iterdir()) == []
    assert not (tmp_path / "never.db").exists()

"""The Celery app: `celery -A worker worker -B` runs worker and scheduler."""

import os

from newsletter import create_app, embedded
from newsletter.celery_app import resolved_broker_url
from newsletter.config import ConfigError
from newsletter.runtime import Runtime

try:
    flask_app = create_app()
except ConfigError as exc:
    raise SystemExit(f"configuration error: {exc}") from None

_runtime = flask_app.extensions["newsletter"]
assert isinstance(_runtime, Runtime)
_settings = _runtime.settings
# The celery command line reads BROKER_URL itself (its --broker option) and would take the
# word "embedded" for a host name; hand it the resolved URL instead.
os.environ["CELERY_BROKER_URL"] = resolved_broker_url(_settings)
if _settings.broker_is_embedded:
    # The worker is the process that must have a broker: start the embedded one if needed.
    embedded.ensure_running(_settings.instance_dir)

app = flask_app.extensions["celery"]

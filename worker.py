"""The Celery app: `celery -A worker worker -B` runs worker and scheduler."""

from newsletter import create_app, embedded
from newsletter.config import ConfigError
from newsletter.runtime import Runtime

try:
    flask_app = create_app()
except ConfigError as exc:
    raise SystemExit(f"configuration error: {exc}") from None

_settings = flask_app.extensions["newsletter"]
assert isinstance(_settings, Runtime)
if _settings.settings.broker_is_embedded:
    # The worker is the process that must have a broker: start the embedded one if needed.
    embedded.ensure_running(_settings.settings.instance_dir)

app = flask_app.extensions["celery"]

"""The Celery app: `celery -A worker worker -B` runs worker and scheduler."""

from newsletter import create_app
from newsletter.config import ConfigError

try:
    app = create_app().extensions["celery"]
except ConfigError as exc:
    raise SystemExit(f"configuration error: {exc}") from None

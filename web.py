"""The Flask app: `flask --app web run`, `gunicorn web:app`."""

from newsletter import create_app
from newsletter.config import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    raise SystemExit(f"configuration error: {exc}") from None

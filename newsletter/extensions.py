"""Flask extensions, created unbound and attached in `create_app`."""

from __future__ import annotations

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()
limiter = Limiter(key_func=get_remote_address)
# The admin's sessions; the user loader and the sign-in page are wired by newsletter.web.admin.
login_manager = LoginManager()

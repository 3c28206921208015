"""Dashboard authentication: one token on disk, a session cookie and a CSRF token derived from it.

The token lives in ``<state>/dashboard-token`` (0600, made at first start). ``GET
/login?token=…`` (what the login form submits) exchanges it for an HttpOnly,
SameSite=Strict cookie. Both the cookie and the CSRF token are HMACs of the token, so they
stay valid across daemon restarts and die together when the token file is replaced.
Every state-changing request is a POST that must carry ``X-CSRF-Token`` and, when the
browser sends one, an ``Origin`` equal to the dashboard's own. What a client presents is
compared with the secrets as bytes, in constant time, whatever its characters.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Final

SESSION_COOKIE: Final = "hyperhive_session"
CSRF_HEADER: Final = "x-csrf-token"


def load_or_create_token(path: Path) -> str:
    """Read the dashboard token, creating it (0600) on first start (blocking)."""
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token


class Auth:
    def __init__(self, token: str) -> None:
        self.token = token
        self._token = token.encode()
        self.session = self._derive(b"session")
        self.csrf = self._derive(b"csrf")

    def _derive(self, purpose: bytes) -> str:
        return hmac.new(self._token, b"hyperhive-dashboard:" + purpose, hashlib.sha256).hexdigest()

    def check_token(self, candidate: str | None) -> bool:
        return same_secret(candidate, self.token)

    def check_session(self, cookie: str | None) -> bool:
        return same_secret(cookie, self.session)

    def check_csrf(self, header: str | None) -> bool:
        return same_secret(header, self.csrf)


def same_secret(candidate: str | None, secret: str) -> bool:
    """Constant-time comparison of a client's value with a secret, whatever its characters.

    ``hmac.compare_digest`` refuses non-ASCII ``str``, so both sides are compared as bytes;
    ``surrogatepass`` lets even a lone surrogate encode (and simply not match).
    """
    if candidate is None:
        return False
    return hmac.compare_digest(
        candidate.encode("utf-8", "surrogatepass"), secret.encode("utf-8", "surrogatepass")
    )

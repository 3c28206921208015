"""The operator dashboard: HTTP API, event stream, static page, auth."""

from hyperhive.web._app import Dashboard
from hyperhive.web._auth import Auth, load_or_create_token
from hyperhive.web._serve import serve_dashboard

__all__ = ["Auth", "Dashboard", "load_or_create_token", "serve_dashboard"]

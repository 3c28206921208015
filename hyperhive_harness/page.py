"""The agent UI's one page (``static/index.html``) and its Content-Security-Policy.

Two servers hand it out: the harness itself (standalone debugging over TCP) and the
daemon's dashboard at ``/agent/<name>/``. The dashboard serves its *own* installed copy,
never the bytes an agent's socket returns: whatever runs at the dashboard's origin must
come from the daemon, because an agent is root in its container and can put any server
on its UI socket. The dashboard also hands the page its CSRF token (a ``<meta>``), which
the page sends back as ``X-CSRF-Token`` on every POST.

All URLs in the page are relative (``api/state``, ``events/stream``), so it works at ``/``
and under ``/agent/<name>/`` alike.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from functools import cache
from importlib import resources
from typing import Final

#: The ``<meta name=…>`` that carries the dashboard's CSRF token into the page.
CSRF_META: Final = "hyperhive-csrf"


@cache
def _template() -> str:
    return (resources.files("hyperhive_harness") / "static" / "index.html").read_text("utf-8")


def page_csp(page: str) -> str:
    """The policy of ``page``: its inline scripts run by hash, nothing else runs."""
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in re.findall(r"<script>(.*?)</script>", page, flags=re.S)
    ]
    script_src = " ".join(hashes) or "'none'"
    return (
        "default-src 'none'; "
        f"script-src {script_src}; "
        "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def render_page(csrf: str | None = None) -> tuple[bytes, str]:
    """The page (with the CSRF token when given) and its Content-Security-Policy."""
    page = _template()
    if csrf is not None:
        meta = f'<meta name="{CSRF_META}" content="{html.escape(csrf, quote=True)}">'
        page = page.replace("<head>", f"<head>\n{meta}", 1)
    return page.encode(), page_csp(page)


#: Headers of every response carrying the page.
PAGE_HEADERS: Final = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}

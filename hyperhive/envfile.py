"""The operator's API settings for agents: the env file of ``hyperhive run --env-file``.

A strict ``KEY=VALUE`` format (``#`` comments, blank lines, an optional ``export``, values
optionally in single or double quotes) restricted to the keys agents need to reach the API,
and the daemon's own ``HYPERHIVE_DATABASE`` (kept out of the agents' environment).
Values never appear in an error or a warning: only file, line number and key do.

Where the settings end up: the daemon's environment, which the backends pass on to each
payload (``PASSTHROUGH_ENV``); the nspawn backend hands them over through nspawn's own
environment, not its command line.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from hyperhive.config import MAX_ENV_FILE_BYTES
from hyperhive.errors import RequestRefused

#: Credentials: any of these means claude can call the API without a login.
CREDENTIAL_KEYS: Final = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
PROXY_KEYS: Final = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)
#: Every key an env file may set.
ENV_FILE_KEYS: Final = (
    *CREDENTIAL_KEYS,
    "ANTHROPIC_BASE_URL",
    *PROXY_KEYS,
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
    "CLAUDE_CODE_MAX_RETRIES",
    "DISABLE_TELEMETRY",
    "DISABLE_AUTOUPDATER",
)

#: Keys an env file may set for the daemon itself: never passed on to an agent.
DAEMON_KEYS: Final = ("HYPERHIVE_DATABASE",)

_LINE_RE: Final = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)")


class EnvFileError(RequestRefused):
    """The env file cannot be used; the message names file and line, never a value."""


def parse_env_file(text: str, *, source: str = "env file") -> dict[str, str]:
    """``KEY=VALUE`` lines → a dict; any bad line, unknown or repeated key is refused."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}, line {number}"
        match = _LINE_RE.fullmatch(line)
        if match is None:
            raise EnvFileError(f"{where}: expected KEY=VALUE (or a # comment)")
        key, value = match.group(1), match.group(2).strip()
        if key not in ENV_FILE_KEYS and key not in DAEMON_KEYS:
            raise EnvFileError(
                f"{where}: {key} is not an agent API setting; allowed: "
                f"{', '.join((*ENV_FILE_KEYS, *DAEMON_KEYS))}"
            )
        if key in values:
            raise EnvFileError(f"{where}: {key} is set twice")
        values[key] = _unquote(value, where, key)
    return values


def _unquote(value: str, where: str, key: str) -> str:
    if value[:1] in ("'", '"'):
        quote = value[0]
        if len(value) < 2 or not value.endswith(quote) or quote in value[1:-1]:
            raise EnvFileError(f"{where}: the value of {key} has unbalanced quotes")
        return value[1:-1]
    if any(c in value for c in "'\"") or any(c.isspace() for c in value):
        raise EnvFileError(f"{where}: quote the value of {key} (it holds spaces or quotes)")
    return value


def mode_warning(path: Path, mode: int) -> str | None:
    """A warning when the file's permission bits let every user on the host read it."""
    if mode & stat.S_IROTH:
        return (
            f"{path} is readable by every user on this host and holds API credentials: "
            f"chmod 600 {path}"
        )
    return None


def load_env_file(path: Path) -> tuple[dict[str, str], list[str]]:
    """Read and parse ``path``: its settings and warnings (never values)."""
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read(MAX_ENV_FILE_BYTES + 1)
    except OSError as exc:
        raise EnvFileError(f"cannot read the env file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_ENV_FILE_BYTES:
        raise EnvFileError(f"{path} is larger than {MAX_ENV_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EnvFileError(f"{path} is not UTF-8 text") from None
    values = parse_env_file(text, source=str(path))
    warning = mode_warning(path, mode)
    return values, [warning] if warning else []


def has_api_credentials(env: Mapping[str, str]) -> bool:
    """Does ``env`` carry an API key or auth token (claude then needs no login)?"""
    return any(env.get(key, "").strip() for key in CREDENTIAL_KEYS)


def credentials_warning(env: Mapping[str, str], logged_in: bool) -> str | None:
    """What to tell the operator when an agent has no way to authenticate to the API."""
    if logged_in or has_api_credentials(env):
        return None
    return (
        "no API credentials: set ANTHROPIC_API_KEY in an env file (hyperhive run --env-file), "
        "or log in from the agent's UI (see 'Credentials' in docs/operator-guide.md)"
    )

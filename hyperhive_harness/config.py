"""Every setting of the harness, read from the environment in one place (no I/O here).

Inside a container the defaults are right: the agent's socket is ``/run/hive/mcp.sock``, its
state directory ``/state``. Tests and the ``process`` backend override them through the
environment (or ``serve``'s flags, which win over the environment).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from hyperhive import contract
from hyperhive.config import DEFAULT_COMPACT_AT_PERCENT
from hyperhive.config import DEFAULT_MODEL as DEFAULT_MODEL
from hyperhive.runtime import Backoff

#: The container's paths (:mod:`hyperhive.contract`) are the defaults.
DEFAULT_SOCKET: Final = contract.SOCKET
DEFAULT_STATE_DIR: Final = contract.STATE_DIR
#: Reconnect delays after losing the daemon: 2, 4, 8, 16, 30, 30, ... seconds.
RECONNECT_BACKOFF: Final = Backoff(first=2.0, limit=30.0)
RECV_WAIT_SECONDS: Final = 180
RATE_LIMIT_SLEEP_SECONDS: Final = 300.0
#: How often a parked harness (``needs_login``) looks at the credentials file.
LOGIN_POLL_SECONDS: Final = 5.0
#: Attempts of a turn that failed for another reason before its message is acked and reported.
MAX_TURN_ATTEMPTS: Final = 2
FAILED_RETRY_DELAY_SECONDS: Final = 10.0
#: After SIGINT, how long claude gets to flush a result before it is killed.
CANCEL_GRACE_SECONDS: Final = 10.0


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable."""


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r} must not be negative")
    return value


def _int(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw!r} must be between {low} and {high}")
    return value


def parse_backoff(raw: str) -> Backoff:
    """``"2,4,8,30"`` → the backoff from 2 s doubling up to 30 s (the first value and the
    largest are used); raises :class:`ConfigError` on garbage."""
    try:
        values = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"backoff schedule {raw!r} is not a comma list of numbers") from None
    if not values or any(v < 0 for v in values):
        raise ConfigError(f"backoff schedule {raw!r} needs at least one non-negative number")
    return Backoff(first=values[0], limit=max(values))


def parse_tool_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.replace(" ", ",").split(",") if part.strip())


@attrs.frozen
class HarnessConfig:
    socket: Path
    state_dir: Path
    events_db: Path
    model_file: Path
    claude: str
    home: Path
    #: A change of this file ends a ``needs_login`` park (see docs/harness.md).
    credentials_file: Path
    #: The UI's unix socket (default: ``ui.sock`` beside ``socket``); the dashboard proxies it.
    ui_socket: Path = Path(contract.UI_SOCKET)
    ui_host: str = "127.0.0.1"
    #: A TCP port for the UI too, for debugging only: None (the default) opens none; only
    #: ``serve --ui-port`` sets it (0: one the OS picks).
    ui_port: int | None = None
    #: Extra ``Host`` names the TCP listener answers to; loopback always works.
    ui_allowed_hosts: tuple[str, ...] = ()
    reconnect_backoff: Backoff = RECONNECT_BACKOFF
    rate_limit_sleep: float = RATE_LIMIT_SLEEP_SECONDS
    login_poll: float = LOGIN_POLL_SECONDS
    max_turn_attempts: int = MAX_TURN_ATTEMPTS
    failed_retry_delay: float = FAILED_RETRY_DELAY_SECONDS
    cancel_grace: float = CANCEL_GRACE_SECONDS
    #: The compaction watermark in percent of the model's context window (0: off).
    compact_at_percent: int = DEFAULT_COMPACT_AT_PERCENT
    #: Long-poll length of the loop's ``recv`` (SPEC: 180 s; shorter only for tests).
    recv_wait: int = RECV_WAIT_SECONDS
    #: Tools allowed besides the ``mcp__hyperhive__*`` ones (comma list).
    extra_allowed_tools: tuple[str, ...] = ()
    #: The agent's extra MCP servers (``HYPERHIVE_EXTRA_MCP``, from its applied agent.toml).
    extra_mcp_servers: Mapping[str, Any] = attrs.field(factory=dict)
    #: A ``--settings`` file or JSON string passed to every claude run, if set.
    claude_settings: str | None = None
    #: The command the UI's login panel runs (default ``<claude> auth login``).
    login_command: tuple[str, ...] = ()
    #: The environment claude and the login command run with (the harness's own).
    env: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def claude_pid_file(self) -> Path:
        """The running claude's pid and start time, so a restarted harness can end an orphan."""
        return self.state_dir / contract.CLAUDE_PID_FILE_NAME

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        socket: str | None = None,
        port: int | None = None,
        host: str | None = None,
    ) -> HarnessConfig:
        """Build the settings from ``env``; explicit arguments (CLI flags) win."""
        state_dir = Path(env.get(contract.STATE_DIR_ENV) or DEFAULT_STATE_DIR)
        home = Path(env.get("HOME") or contract.HOME)
        claude = env.get(contract.CLAUDE_ENV) or "claude"
        # No environment variable opens the TCP port: only the flag, given by hand.
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(f"port {port} is out of range")
        agent_socket = Path(socket or env.get(contract.SOCKET_ENV) or DEFAULT_SOCKET)
        login = env.get(contract.LOGIN_CMD_ENV)
        extra_servers, extra_tools = parse_extra_mcp(env.get(contract.EXTRA_MCP_ENV, ""))
        return cls(
            socket=agent_socket,
            state_dir=state_dir,
            events_db=Path(env.get(contract.EVENTS_DB_ENV) or state_dir / contract.EVENTS_DB_NAME),
            model_file=Path(
                env.get(contract.MODEL_FILE_ENV) or state_dir / contract.MODEL_FILE_NAME
            ),
            claude=claude,
            home=home,
            credentials_file=Path(
                env.get(contract.CREDENTIALS_FILE_ENV)
                or home / ".claude" / contract.CREDENTIALS_FILE_NAME
            ),
            ui_socket=Path(
                env.get(contract.UI_SOCKET_ENV) or agent_socket.with_name(contract.UI_SOCKET_NAME)
            ),
            ui_host=host or env.get(contract.UI_HOST_ENV) or "127.0.0.1",
            ui_port=port,
            ui_allowed_hosts=parse_tool_list(env.get(contract.UI_ALLOWED_HOSTS_ENV, "")),
            reconnect_backoff=parse_backoff(env[contract.RECONNECT_BACKOFF_ENV])
            if env.get(contract.RECONNECT_BACKOFF_ENV)
            else RECONNECT_BACKOFF,
            rate_limit_sleep=_float(env, contract.RATE_LIMIT_SLEEP_ENV, RATE_LIMIT_SLEEP_SECONDS),
            login_poll=_float(env, contract.LOGIN_POLL_ENV, LOGIN_POLL_SECONDS) or 0.1,
            max_turn_attempts=_int(
                env, contract.MAX_TURN_ATTEMPTS_ENV, MAX_TURN_ATTEMPTS, low=1, high=100
            ),
            failed_retry_delay=_float(
                env, contract.FAILED_RETRY_DELAY_ENV, FAILED_RETRY_DELAY_SECONDS
            ),
            cancel_grace=_float(env, contract.CANCEL_GRACE_ENV, CANCEL_GRACE_SECONDS),
            recv_wait=_int(env, contract.RECV_WAIT_ENV, RECV_WAIT_SECONDS, low=1, high=180),
            compact_at_percent=_int(
                env, contract.COMPACT_AT_PERCENT_ENV, DEFAULT_COMPACT_AT_PERCENT, low=0, high=100
            ),
            extra_allowed_tools=parse_tool_list(env.get(contract.EXTRA_ALLOWED_TOOLS_ENV, ""))
            + extra_tools,
            extra_mcp_servers=extra_servers,
            claude_settings=env.get(contract.CLAUDE_SETTINGS_ENV) or None,
            login_command=tuple(login.split()) if login else (claude, "auth", "login"),
            env=dict(env),
        )


def parse_extra_mcp(raw: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``HYPERHIVE_EXTRA_MCP`` (set by the daemon from the applied agent.toml): the extra
    servers and the ``--allowedTools`` entries for them. Anything malformed counts as none."""
    try:
        data = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}, ()
    if not isinstance(data, dict):
        return {}, ()
    servers = data.get("mcpServers")
    tools = data.get("allowedTools")
    servers = servers if isinstance(servers, dict) else {}
    tools = tuple(t for t in tools if isinstance(t, str)) if isinstance(tools, list) else ()
    return servers, tools

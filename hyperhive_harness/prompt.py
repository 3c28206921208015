"""How a turn starts: the wake prompt, claude's command line, its MCP config and the texts
that open a new session. Plain functions, no I/O.

- :func:`wake_prompt` — the text a turn starts with (sender, body, pending count).
- :func:`claude_argv`, :func:`mcp_http_config` (:func:`mcp_shim_config` through the stdio
  shim, :func:`mcp_config` without the harness's tool host), :func:`allowed_tools` — how
  claude is started.
- :func:`session_preface`, :func:`new_session_note` — what a new session after a failure is
  told, and what the UI shows about it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from hyperhive_harness.policy import SessionBreak

SERVER_NAME: Final = "hyperhive"
AGENT_TOOLS: Final = (
    "send",
    "recv",
    "ask",
    "answer",
    "get_loose_ends",
    "cancel_loose_end",
    "set_status",
    "get_agent_meta",
    "request_schedule",
    "edit_schedule",
    "cancel_schedule",
    "fire_schedule_now",
    "list_schedules",
    "remind",
)
#: What a lead (``lead = true`` in its agent.toml) adds, for the agents below it.
LEAD_TOOLS: Final = (
    *AGENT_TOOLS,
    "request_spawn",
    "kill",
    "start",
    "restart",
    "update",
    "get_logs",
)
MANAGER_TOOLS: Final = (
    *AGENT_TOOLS,
    "request_spawn",
    "request_apply_commit",
    "kill",
    "start",
    "restart",
    "update",
    "list_containers",
    "get_logs",
)


# ---------------------------------------------------------------- starting claude


def allowed_tools(role: str, extra: Iterable[str] = ()) -> list[str]:
    """The ``--allowedTools`` list: the hyperhive MCP tools of the role, then ``extra``."""
    names = {"manager": MANAGER_TOOLS, "lead": LEAD_TOOLS}.get(role, AGENT_TOOLS)
    tools = [f"mcp__{SERVER_NAME}__{name}" for name in names]
    tools.extend(t for t in extra if t not in tools)
    return tools


def mcp_config(python: str, socket: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``--mcp-config`` document: ``hyperhive-harness mcp`` plus the agent's extra
    servers from its applied agent.toml (which can never replace ``hyperhive``)."""
    servers = {name: spec for name, spec in (extra or {}).items() if name != SERVER_NAME}
    servers[SERVER_NAME] = {
        "type": "stdio",
        "command": python,
        "args": ["-m", "hyperhive_harness.mcp_server"],
        "env": {"HYPERHIVE_SOCKET": socket},
    }
    return {"mcpServers": servers}


def mcp_shim_config(
    python: str, shim: str, socket: str, token: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``--mcp-config`` document when the harness serves the tools itself: claude starts
    the stdlib-only shim (``python -I -S``), which bridges to the harness's tool socket with
    the turn's secret; plus the agent's extra servers (which can never replace ``hyperhive``)."""
    servers = {name: spec for name, spec in (extra or {}).items() if name != SERVER_NAME}
    servers[SERVER_NAME] = {
        "type": "stdio",
        "command": python,
        "args": ["-I", "-S", shim],
        "env": {"HYPERHIVE_MCP_SOCKET": socket, "HYPERHIVE_MCP_TOKEN": token},
    }
    return {"mcpServers": servers}


def mcp_http_config(url: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``--mcp-config`` document when the harness serves the tools over MCP's HTTP
    transport at ``url`` (the turn's secret in its path); plus the agent's extra servers
    (which can never replace ``hyperhive``)."""
    servers = {name: spec for name, spec in (extra or {}).items() if name != SERVER_NAME}
    servers[SERVER_NAME] = {"type": "http", "url": url}
    return {"mcpServers": servers}


def claude_argv(
    claude: str,
    *,
    model: str,
    prompt: str,
    mcp_config_file: str,
    system_prompt_file: str,
    tools: Sequence[str],
    continue_session: bool = True,
    settings: str | None = None,
) -> list[str]:
    """The command line of one turn. The prompt follows ``--`` so no text is read as a flag
    (``--allowedTools`` and ``--mcp-config`` take several values)."""
    argv = [claude, "--print", "--verbose", "--output-format", "stream-json", "--model", model]
    if continue_session:
        argv.append("--continue")
    argv += [
        "--mcp-config",
        mcp_config_file,
        "--strict-mcp-config",
        "--allowedTools",
        ",".join(tools),
        "--system-prompt-file",
        system_prompt_file,
    ]
    if settings:
        argv += ["--settings", settings]
    argv += ["--", prompt]
    return argv


#: Settings of every claude run: the harness alone decides when the session is compacted.
HARNESS_CLAUDE_SETTINGS: Final = {"autoCompactEnabled": False}


def claude_settings(extra: Mapping[str, Any] | None = None) -> str:
    """The ``--settings`` document: ``extra`` (the agent's, e.g. the manager's working
    directories) with :data:`HARNESS_CLAUDE_SETTINGS` on top."""
    return json.dumps({**(extra or {}), **HARNESS_CLAUDE_SETTINGS}, indent=2) + "\n"


_PROXY_VARS: Final = (
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
)


def claude_env(base: Mapping[str, str]) -> dict[str, str]:
    """claude's environment: the harness's, with MCP tools shown directly (no ToolSearch).

    When a proxy is configured, ``127.0.0.1`` is added to ``NO_PROXY``/``no_proxy``: the
    hyperhive tools are on the harness's loopback port and must never go through a proxy."""
    env = dict(base)
    env["ENABLE_TOOL_SEARCH"] = "false"
    if any(env.get(name) for name in _PROXY_VARS):
        for name in ("NO_PROXY", "no_proxy"):
            hosts = [h for h in env.get(name, "").split(",") if h.strip()]
            if "127.0.0.1" not in (h.strip() for h in hosts):
                hosts.append("127.0.0.1")
            env[name] = ",".join(hosts)
    return env


def render_system_prompt(template: str, *, label: str, role: str, state_dir: str) -> str:
    """Fill the role template's ``{label}``, ``{role}`` and ``{state_dir}`` placeholders.

    Plain replacement, so other braces in the template (JSON examples) stay as written.
    """
    return (
        template.replace("{label}", label).replace("{role}", role).replace("{state_dir}", state_dir)
    )


def sender_phrase(sender: str) -> str:
    if sender == "operator":
        return "the operator (the human running the hive)"
    if sender == "system":
        return "the hive itself (a system event)"
    if sender == "manager":
        return "the manager agent"
    return sender


def wake_prompt(
    *,
    message_id: int,
    sender: str,
    body: str,
    pending: int,
    redelivered: bool = False,
    in_reply_to: int | None = None,
) -> str:
    """The prompt of a turn: who wrote, what, and how many messages wait behind it."""
    lines = [f"New message #{message_id} from {sender_phrase(sender)}."]
    if in_reply_to is not None:
        lines.append(f"It replies to message #{in_reply_to}.")
    if redelivered:
        lines.append(
            "It was delivered before, but that turn did not finish (the harness or the hive "
            "restarted): check your notes and what you already did before acting on it again."
        )
    lines += ["", "--- message ---", body, "--- end of message ---", ""]
    if pending <= 0:
        lines.append("No other messages are waiting.")
    else:
        lines.append(
            f"{pending} more message{'s are' if pending != 1 else ' is'} waiting in your inbox; "
            f"read them with mcp__{SERVER_NAME}__recv (max up to 32) once this one is handled."
        )
    if sender == "system" or sender.startswith(("reminder", "bash-task")):
        pass
    elif _is_address(sender):
        lines.append(
            f'To answer, use mcp__{SERVER_NAME}__send with to: "{sender}" and '
            f"in_reply_to: {message_id}."
        )
    else:
        lines.append(f"{sender!r} is a label, not an agent: there is no one to reply to.")
    return "\n".join(lines)


_ADDRESS_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,8}")


def _is_address(sender: str) -> bool:
    return sender in ("operator", "manager") or _ADDRESS_RE.fullmatch(sender) is not None


def session_preface(brk: SessionBreak, *, message_id: int, reporter: str, state_dir: str) -> str:
    """What the first turn of the new session is told before its wake prompt."""
    failed_on = f"#{brk.message_id}" if brk.message_id is not None else "a message"
    lines = [
        "[hyperhive harness] Your previous claude session was ended because a turn failed "
        f"({brk.outcome}: {brk.reason}). This turn starts a new session: the earlier "
        "conversation is not available."
    ]
    if brk.given_up:
        lines.append(
            f"The turn on message {failed_on} from {sender_phrase(brk.sender)} failed for good: "
            f"that message was given up (acked, and reported to the {reporter}, who may send "
            "it again). Do not look for it in your inbox."
        )
    elif brk.message_id == message_id:
        lines.append("It failed on the message below: this is a new attempt at it.")
    else:
        lines.append(
            f"It failed on message {failed_on} from {sender_phrase(brk.sender)}, which is kept "
            "and comes again after this one."
        )
    lines.append(f"Re-read your notes in {state_dir} before you act.")
    return "\n".join(lines)


def new_session_note(brk: SessionBreak) -> str:
    """The UI's note when a turn starts a new session after a failure."""
    failed_on = f"message #{brk.message_id}" if brk.message_id is not None else "a message"
    note = (
        f"new claude session (no --continue): the previous one was ended because the turn on "
        f"{failed_on} failed ({brk.outcome}: {brk.reason})"
    )
    if brk.given_up:
        note += f"; {failed_on} was given up and is not carried over"
    return note

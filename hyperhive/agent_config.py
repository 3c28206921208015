"""``agent.toml``: what the manager may configure for an agent, and the checks it must pass.

The file lives in the agent's proposed config repo (``proposed/<name>/config``); the copy the
core acts on is the one in the applied repo (``applied/<name>``), which only changes through an
approved ``apply_commit``. Everything here is pure: :func:`parse_agent_config` turns text into
an :class:`AgentConfig` or raises :class:`InvalidAgentConfig` listing every problem, each naming
its key. ``docs/agent-toml.md`` is the reference for every key.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import attrs

from hyperhive.config import (
    DEFAULT_AVAILABLE_MODELS,
    DEFAULT_COMPACT_AT_PERCENT,
    DEFAULT_CPU_QUOTA,
    DEFAULT_MEMORY_MAX,
    DEFAULT_MODEL,
    DEFAULT_NO_PROGRESS_TURNS,
    MAX_BUDGET,
    MAX_DESCRIPTION_CHARS,
    MAX_LIST_ITEMS,
    MAX_STRING_CHARS,
)
from hyperhive.config import MAX_AGENT_TOML_BYTES as MAX_AGENT_TOML_BYTES
from hyperhive.errors import RequestRefused
from hyperhive.names import MANAGER, OPERATOR, InvalidAgentName, parse_agent_name

#: The file name inside both config repos.
AGENT_TOML: Final = "agent.toml"
#: The MCP server name hyperhive's own tools use; an extra server may not take it.
RESERVED_MCP_SERVER: Final = "hyperhive"
#: Environment variables the harness or the container set; agent.toml may not override them.
RESERVED_ENV_NAMES: Final = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "PWD",
        "TERM",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "LD_AUDIT",
        "PYTHONPATH",
        "PYTHONHOME",
        "VIRTUAL_ENV",
        "CLAUDE_CONFIG_DIR",
        "NOTIFY_SOCKET",
    }
)
RESERVED_ENV_PREFIXES: Final = ("HYPERHIVE_",)

MODEL_RE: Final = re.compile(r"[\x21-\x7e]{1,100}")
ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MCP_SERVER_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MCP_TOOL_NAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|\*")
CPU_QUOTA_RE: Final = re.compile(r"([0-9]{1,7})%")
MEMORY_MAX_RE: Final = re.compile(r"([0-9]{1,16})([KMGT]?)")
_MEMORY_UNITS: Final = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}

KNOWN_KEYS: Final = (
    "model",
    "available_models",
    "allowed_recipients",
    "env",
    "extra_mcp_servers",
    "cpu_quota",
    "memory_max",
    "description",
    "budget",
    "lead",
    "session",
)
MCP_SERVER_KEYS: Final = ("command", "args", "env", "allowed_tools")
#: ``[session]``: how the harness keeps claude's session (compaction).
SESSION_KEYS: Final = ("compact_at_percent",)


class InvalidAgentConfig(RequestRefused):
    """An agent.toml that cannot be used; ``problems`` lists each reason, naming its key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(f"{AGENT_TOML}: " + "; ".join(problems))


@attrs.frozen
class ExtraMcpServer:
    """One extra stdio MCP server that claude starts next to hyperhive's own.

    A ``command`` given as an array in agent.toml is split: its first item becomes
    ``command`` and the rest go in front of ``args``.
    """

    command: str
    args: list[str] = attrs.field(factory=list)
    env: dict[str, str] = attrs.field(factory=dict)
    #: Tool names (as the server calls them) claude may use without asking; ``*`` = all.
    allowed_tools: list[str] = attrs.field(factory=list)

    @property
    def argv(self) -> list[str]:
        return [self.command, *self.args]


BUDGET_KEYS: Final = ("daily_usd", "total_usd", "daily_tokens", "total_tokens", "no_progress_turns")


@attrs.frozen
class BudgetSettings:
    """agent.toml's ``[budget]``: spend limits (None: none) and the no-progress breaker."""

    daily_usd: float | None = None
    total_usd: float | None = None
    daily_tokens: int | None = None
    total_tokens: int | None = None
    #: Consecutive turns without progress that pause the agent; 0 disables the breaker.
    no_progress_turns: int = DEFAULT_NO_PROGRESS_TURNS


@attrs.frozen
class AgentConfig:
    """A validated agent.toml. Build it with :func:`parse_agent_config`, not by hand."""

    model: str = DEFAULT_MODEL
    available_models: list[str] = attrs.field(factory=lambda: list(DEFAULT_AVAILABLE_MODELS))
    #: Empty: the agent may send to anyone; otherwise to these plus manager and operator.
    allowed_recipients: list[str] = attrs.field(factory=list)
    env: dict[str, str] = attrs.field(factory=dict)
    extra_mcp_servers: dict[str, ExtraMcpServer] = attrs.field(factory=dict)
    cpu_quota: str = DEFAULT_CPU_QUOTA
    memory_max: str = DEFAULT_MEMORY_MAX
    description: str = ""
    budget: BudgetSettings = BudgetSettings()
    #: The ``lead`` role: lifecycle verbs and ``request_spawn`` for the agents below it.
    lead: bool = False
    #: ``[session] compact_at_percent`` (0-100; 0: no proactive compaction).
    compact_at_percent: int = DEFAULT_COMPACT_AT_PERCENT

    @property
    def cpu_quota_percent(self) -> int:
        """``cpu_quota`` as a number: 200 means two full CPUs."""
        match = CPU_QUOTA_RE.fullmatch(self.cpu_quota)
        assert match is not None, "AgentConfig was not built by parse_agent_config"
        return int(match[1])

    @property
    def memory_max_bytes(self) -> int | None:
        """``memory_max`` in bytes (1024-based suffixes), or None for ``infinity``."""
        if self.memory_max == "infinity":
            return None
        match = MEMORY_MAX_RE.fullmatch(self.memory_max)
        assert match is not None, "AgentConfig was not built by parse_agent_config"
        return int(match[1]) * _MEMORY_UNITS[match[2]]

    def mcp_config(self) -> dict[str, object]:
        """The extra servers in claude's ``--mcp-config`` shape (``{"mcpServers": {...}}``)."""
        return {
            "mcpServers": {
                name: {"type": "stdio", "command": s.command, "args": s.args, "env": s.env}
                for name, s in self.extra_mcp_servers.items()
            }
        }

    def mcp_allowed_tools(self) -> list[str]:
        """claude ``--allowedTools`` entries for the extra servers' allowed tools."""
        out = []
        for name, server in self.extra_mcp_servers.items():
            for tool in server.allowed_tools:
                out.append(f"mcp__{name}" if tool == "*" else f"mcp__{name}__{tool}")
        return out


# ---------------------------------------------------------------- validation (pure)


def _kind(value: object) -> str:
    """The TOML name of a value's type, for messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return "a date/time"
    return type(value).__name__


def _show(value: str, limit: int = 40) -> str:
    """A string quoted for a message, shortened if long."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


class _Checker:
    """Collects every problem of one file, so the manager can fix them all at once."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def string(self, key: str, value: object, *, limit: int = MAX_STRING_CHARS) -> str | None:
        if not isinstance(value, str):
            self.problem(f"{key} must be a string, not {_kind(value)}")
            return None
        if len(value) > limit:
            self.problem(f"{key} is longer than {limit} characters")
            return None
        if "\x00" in value:
            self.problem(f"{key} contains a NUL character")
            return None
        return value

    def strings(self, key: str, value: object) -> list[str] | None:
        if not isinstance(value, list):
            self.problem(f"{key} must be an array of strings, not {_kind(value)}")
            return None
        if len(value) > MAX_LIST_ITEMS:
            self.problem(f"{key} has more than {MAX_LIST_ITEMS} items")
            return None
        out: list[str] = []
        for i, item in enumerate(value):
            checked = self.string(f"{key}[{i}]", item)
            if checked is not None:
                out.append(checked)
        return out if len(out) == len(value) else None

    def table(self, key: str, value: object) -> dict[str, object] | None:
        if not isinstance(value, dict):
            self.problem(f"{key} must be a table, not {_kind(value)}")
            return None
        if len(value) > MAX_LIST_ITEMS:
            self.problem(f"{key} has more than {MAX_LIST_ITEMS} entries")
            return None
        return value

    def budget(self, key: str, value: object) -> BudgetSettings | None:
        table = self.table(key, value)
        if table is None:
            return None
        self.unknown_keys(f"{key}: ", table, BUDGET_KEYS)
        values: dict[str, float | int] = {}
        before = len(self.problems)
        for name in BUDGET_KEYS:
            if name not in table:
                continue
            raw = table[name]
            usd = name.endswith("_usd")
            kind = "a number" if usd else "an integer"
            if (
                isinstance(raw, bool)
                or not isinstance(raw, int | float)
                or (not usd and not isinstance(raw, int))
            ):
                self.problem(f"{key}.{name} must be {kind}, not {_kind(raw)}")
            elif not (0 <= raw <= MAX_BUDGET):  # NaN fails this too
                self.problem(f"{key}.{name} must be between 0 and {MAX_BUDGET}")
            else:
                values[name] = float(raw) if usd else int(raw)
        if len(self.problems) != before:
            return None
        return BudgetSettings(**values)  # type: ignore[arg-type]

    def unknown_keys(self, where: str, data: Mapping[str, object], known: tuple[str, ...]) -> None:
        for key in data:
            if key not in known:
                self.problem(f"{where}unknown key {_show(key)} (known keys: {', '.join(known)})")

    def model_name(self, key: str, value: object) -> str | None:
        text = self.string(key, value)
        if text is not None and MODEL_RE.fullmatch(text) is None:
            self.problem(
                f"{key} {_show(text)} must be one word of 1-100 printable ASCII characters"
            )
            return None
        return text

    def env(self, key: str, value: object, *, reserved: bool) -> dict[str, str] | None:
        table = self.table(key, value)
        if table is None:
            return None
        out: dict[str, str] = {}
        ok = True
        for name, raw in table.items():
            if ENV_NAME_RE.fullmatch(name) is None:
                self.problem(
                    f"{key}: {_show(name)} is not an environment variable name "
                    "(letters, digits and '_', not starting with a digit)"
                )
                ok = False
                continue
            if reserved and (name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES)):
                self.problem(f"{key}: {name} is set by hyperhive and cannot be overridden")
                ok = False
                continue
            checked = self.string(f"{key}.{name}", raw)
            if checked is None:
                ok = False
            else:
                out[name] = checked
        return out if ok else None

    def recipients(self, key: str, value: object) -> list[str] | None:
        names = self.strings(key, value)
        if names is None:
            return None
        ok = True
        for i, name in enumerate(names):
            if name in (OPERATOR, MANAGER):
                continue
            try:
                parse_agent_name(name, allow_manager=True)
            except InvalidAgentName as exc:
                self.problem(f"{key}[{i}]: {exc}")
                ok = False
        return names if ok else None

    def mcp_server(self, key: str, value: object) -> ExtraMcpServer | None:
        table = self.table(key, value)
        if table is None:
            return None
        before = len(self.problems)
        self.unknown_keys(f"{key}: ", table, MCP_SERVER_KEYS)
        command: list[str] | None = None
        if "command" not in table:
            self.problem(f"{key}.command is missing: give the program to run")
        elif isinstance(table["command"], list):
            command = self.strings(f"{key}.command", table["command"])
            if command is not None and not command:
                self.problem(f"{key}.command is an empty array: give the program to run")
                command = None
        else:
            single = self.string(f"{key}.command", table["command"])
            command = None if single is None else [single]
        if command is not None and not command[0].strip():
            self.problem(f"{key}.command is empty: give the program to run")
        args = self.strings(f"{key}.args", table.get("args", []))
        env = self.env(f"{key}.env", table.get("env", {}), reserved=False)
        tools = self.strings(f"{key}.allowed_tools", table.get("allowed_tools", []))
        for i, tool in enumerate(tools or []):
            if MCP_TOOL_NAME_RE.fullmatch(tool) is None:
                self.problem(
                    f"{key}.allowed_tools[{i}] {_show(tool)} must be a tool name "
                    "(letters, digits, '_', '.', '-') or '*'"
                )
        if len(self.problems) > before:
            return None
        assert command is not None and args is not None and env is not None and tools is not None
        return ExtraMcpServer(
            command=command[0], args=[*command[1:], *args], env=env, allowed_tools=tools
        )

    def mcp_servers(self, key: str, value: object) -> dict[str, ExtraMcpServer] | None:
        table = self.table(key, value)
        if table is None:
            return None
        out: dict[str, ExtraMcpServer] = {}
        ok = True
        for name, raw in table.items():
            if MCP_SERVER_NAME_RE.fullmatch(name) is None:
                self.problem(
                    f"{key}: server name {_show(name)} must be 1-64 letters, digits, '_' or '-'"
                )
                ok = False
                continue
            if name.lower() == RESERVED_MCP_SERVER:
                self.problem(f"{key}: the server name {name!r} is reserved for hyperhive's tools")
                ok = False
                continue
            server = self.mcp_server(f"{key}.{name}", raw)
            if server is None:
                ok = False
            else:
                out[name] = server
        return out if ok else None

    def cpu_quota(self, key: str, value: object) -> str | None:
        text = self.string(key, value)
        if text is None:
            return None
        match = CPU_QUOTA_RE.fullmatch(text)
        if match is None:
            self.problem(f"{key} {_show(text)} must look like '200%' (percent of one CPU)")
            return None
        if int(match[1]) < 1:
            self.problem(f"{key} {_show(text)} must be at least 1%")
            return None
        return text

    def memory_max(self, key: str, value: object) -> str | None:
        text = self.string(key, value)
        if text is None:
            return None
        if text == "infinity":
            return text
        match = MEMORY_MAX_RE.fullmatch(text)
        if match is None:
            self.problem(
                f"{key} {_show(text)} must look like '4G': a number with an optional "
                "K, M, G or T suffix, or 'infinity'"
            )
            return None
        if int(match[1]) < 1:
            self.problem(f"{key} {_show(text)} must be more than 0")
            return None
        return text


def agent_config_from_dict(data: Mapping[str, object]) -> AgentConfig:
    """Validate an already decoded agent.toml; raise :class:`InvalidAgentConfig` on any problem."""
    check = _Checker()
    check.unknown_keys("", data, KNOWN_KEYS)
    default = AgentConfig()
    missing = object()

    def get(key: str) -> object:
        return data.get(key, missing)

    model: str | None = default.model
    if (raw := get("model")) is not missing:
        model = check.model_name("model", raw)
    available: list[str] | None = default.available_models
    if (raw := get("available_models")) is not missing:
        available = check.strings("available_models", raw)
        if available is not None and not available:
            check.problem("available_models must list at least one model")
            available = None
        for m in available or []:
            if MODEL_RE.fullmatch(m) is None:
                check.problem(
                    f"available_models: {_show(m)} must be one word of 1-100 printable ASCII "
                    "characters"
                )
                available = None
    if model is not None and available is not None and model not in available:
        check.problem(
            f"model {_show(model)} is not one of available_models ({', '.join(available)})"
        )
    recipients: list[str] | None = default.allowed_recipients
    if (raw := get("allowed_recipients")) is not missing:
        recipients = check.recipients("allowed_recipients", raw)
    env: dict[str, str] | None = default.env
    if (raw := get("env")) is not missing:
        env = check.env("env", raw, reserved=True)
    servers: dict[str, ExtraMcpServer] | None = default.extra_mcp_servers
    if (raw := get("extra_mcp_servers")) is not missing:
        servers = check.mcp_servers("extra_mcp_servers", raw)
    cpu_quota: str | None = default.cpu_quota
    if (raw := get("cpu_quota")) is not missing:
        cpu_quota = check.cpu_quota("cpu_quota", raw)
    memory_max: str | None = default.memory_max
    if (raw := get("memory_max")) is not missing:
        memory_max = check.memory_max("memory_max", raw)
    description: str | None = default.description
    if (raw := get("description")) is not missing:
        description = check.string("description", raw, limit=MAX_DESCRIPTION_CHARS)
    lead = default.lead
    if (raw := get("lead")) is not missing:
        if isinstance(raw, bool):
            lead = raw
        else:
            check.problem(f"lead must be a boolean (true or false), not {_kind(raw)}")

    budget: BudgetSettings | None = default.budget
    if (raw := get("budget")) is not missing:
        budget = check.budget("budget", raw)
    compact_at_percent = default.compact_at_percent
    if (raw := get("session")) is not missing and (table := check.table("session", raw)):
        check.unknown_keys("session: ", table, SESSION_KEYS)
        percent = table.get("compact_at_percent", compact_at_percent)
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            check.problem(
                "session.compact_at_percent must be an integer from 0 to 100, "
                f"not {_show(str(percent))}"
            )
        else:
            compact_at_percent = percent

    if check.problems:
        raise InvalidAgentConfig(check.problems)
    assert model is not None and available is not None and recipients is not None
    assert env is not None and servers is not None and description is not None
    assert cpu_quota is not None and memory_max is not None and budget is not None
    return AgentConfig(
        model=model,
        available_models=available,
        allowed_recipients=recipients,
        env=env,
        extra_mcp_servers=servers,
        cpu_quota=cpu_quota,
        memory_max=memory_max,
        description=description,
        budget=budget,
        lead=lead,
        compact_at_percent=compact_at_percent,
    )


def parse_agent_config(text: str) -> AgentConfig:
    """Parse and validate agent.toml text; raise :class:`InvalidAgentConfig` on any problem."""
    if len(text) > MAX_AGENT_TOML_BYTES or len(text.encode("utf-8", "surrogatepass")) > (
        MAX_AGENT_TOML_BYTES
    ):
        raise InvalidAgentConfig([f"the file is larger than {MAX_AGENT_TOML_BYTES} bytes"])
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidAgentConfig([f"not valid TOML: {exc}"]) from None
    return agent_config_from_dict(data)


def load_agent_config(path: Path) -> AgentConfig:
    """Read and parse an agent.toml file (blocking); a missing file gives the defaults.

    A symlink, a non-regular file, an oversized file or invalid UTF-8 is refused, so a
    committed symlink cannot make the core read some other file of the host.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return AgentConfig()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidAgentConfig(["it is a symlink; commit a regular file"]) from None
        raise InvalidAgentConfig([f"cannot be read: {exc.strerror}"]) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidAgentConfig(["it is not a regular file"])
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_AGENT_TOML_BYTES + 1)
    except OSError as exc:
        raise InvalidAgentConfig([f"cannot be read: {exc.strerror}"]) from None
    finally:
        os.close(fd)
    if len(raw) > MAX_AGENT_TOML_BYTES:
        raise InvalidAgentConfig([f"the file is larger than {MAX_AGENT_TOML_BYTES} bytes"])
    return parse_agent_config(decode_agent_toml(raw))


def decode_agent_toml(raw: bytes) -> str:
    """UTF-8 text of agent.toml bytes, or :class:`InvalidAgentConfig`."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidAgentConfig([f"not valid UTF-8 (byte {exc.start})"]) from None


#: The agent.toml committed into a new agent's proposed repo; parses to ``AgentConfig()``.
SEED_AGENT_TOML: Final = f"""\
# agent.toml: this agent's configuration (reference: docs/agent-toml.md in hyperhive).
#
# The manager edits this file in the agent's proposed config repo, commits, and asks for the
# commit to be applied with request_apply_commit(agent, commit_ref). Once the operator approves,
# the agent is rebuilt with it. An invalid file fails that rebuild with a readable error and
# leaves the running agent untouched. Unknown keys are refused.

# The Claude model the agent starts with; must be one of available_models.
model = "{DEFAULT_MODEL}"

# The models the agent may be switched to (the operator's set_model, the dashboard).
available_models = {json.dumps(list(DEFAULT_AVAILABLE_MODELS))}

# Who the agent may send messages to: agent names. Empty means anyone (and "*", a broadcast).
# Otherwise only these, plus "manager" and "operator", which are always allowed.
allowed_recipients = []

# CPU limit of the agent's container, in percent of one CPU: "200%" is two CPUs.
cpu_quota = "{DEFAULT_CPU_QUOTA}"

# Memory limit of the agent's container: a number with an optional K, M, G or T suffix
# (powers of 1024), or "infinity".
memory_max = "{DEFAULT_MEMORY_MAX}"

# One line saying what the agent is for; shown on the dashboard.
description = ""

# The lead role: true lets the agent kill, start, restart and update the agents below it in
# the hierarchy, read their logs and request spawns (which become its children).
lead = false

# Spend limits, checked after each turn from the daemon's spend ledger; at a limit the agent
# is paused (the operator resumes it, or a raised limit lets it run again). Unset: no limit.
# Daily limits count from midnight UTC; tokens are input + output + cache read + cache write.
#   daily_usd, total_usd         USD (numbers)
#   daily_tokens, total_tokens   tokens (integers)
#   no_progress_turns            pause after this many turns in a row that sent no message,
#                                asked nothing and changed no file in /state (default
#                                {DEFAULT_NO_PROGRESS_TURNS}; 0 turns the breaker off)
[budget]
# daily_usd = 5.0
# no_progress_turns = {DEFAULT_NO_PROGRESS_TURNS}

# How the harness keeps claude's session. compact_at_percent: after a turn whose context
# passed this share of the model's context window, the agent gets a checkpoint turn (to
# write its notes) and the session is compacted; 0 turns that off.
[session]
compact_at_percent = {DEFAULT_COMPACT_AT_PERCENT}

# Extra environment variables for the agent (its harness and claude). Names must be valid
# environment variable names; PATH, HOME, HYPERHIVE_* and the other names hyperhive sets
# itself are refused.
[env]
# EXAMPLE_SETTING = "value"

# Extra MCP servers claude may use next to hyperhive's own (the name "hyperhive" is taken).
# One table per server:
#   command        the program: a string, or an array (the program, then its first arguments)
#   args           more arguments (default [])
#   env            the server's environment variables (default {{}})
#   allowed_tools  tools claude may call without asking, as the server names them;
#                  "*" allows all of the server's tools (default [])
[extra_mcp_servers]
# [extra_mcp_servers.fetch]
# command = "uvx"
# args = ["mcp-server-fetch"]
# allowed_tools = ["fetch"]
# env = {{ FETCH_USER_AGENT = "hyperhive" }}
"""


def seed_agent_toml(
    *, model: str | None = None, cpu_quota: str | None = None, memory_max: str | None = None
) -> str:
    """The seed ``agent.toml`` with the daemon's agent defaults; InvalidAgentConfig if bad."""
    text = SEED_AGENT_TOML
    for key, value in (("model", model), ("cpu_quota", cpu_quota), ("memory_max", memory_max)):
        if value is not None:
            text = re.sub(rf'^{key} = ".*"$', f"{key} = {json.dumps(value)}", text, flags=re.M)
    parse_agent_config(text)
    return text

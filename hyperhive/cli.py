"""``hyperhive``: run the daemon, or talk to it over its host socket as the operator.

Every command takes ``--run-dir``/``--state-dir`` (or ``HYPERHIVE_RUN_DIR``/
``HYPERHIVE_STATE_DIR``) and prints a table for people or, with ``--json``, the daemon's
reply for scripts. Errors go to stderr with exit status 1.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import attrs
import trio
import typer

from hyperhive.client import Client
from hyperhive.config import (
    BACKENDS,
    DAY,
    DEFAULT_CPU_QUOTA,
    DEFAULT_DASHBOARD_BIND,
    DEFAULT_LOG_LEVEL,
    DEFAULT_MEMORY_MAX,
    DEFAULT_MODEL,
    MIN_FREE_BYTES,
    MIN_FREE_FRACTION,
    Config,
    Paths,
    default_node,
    default_run_dir,
    default_state_dir,
    parse_size,
)
from hyperhive.errors import AlreadyRunning, ClientError, HyperhiveError, RequestRefused
from hyperhive.names import InvalidNodeName, parse_node_name
from hyperhive.protocol import CONVERTER, json_schema
from hyperhive.runtime import find, innermost
from hyperhive.terminal import visible


def _config_default(name: str) -> Any:
    """The default of a :class:`Config` attribute: ``run``'s options take theirs from there."""
    return attrs.fields_dict(Config)[name].default


app = typer.Typer(
    name="hyperhive",
    help="Run a swarm of Claude Code agents, and steer it as the operator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

RunDir = Annotated[
    Path,
    typer.Option(
        "--run-dir",
        envvar="HYPERHIVE_RUN_DIR",
        default_factory=default_run_dir,
        show_default=False,
        help="Runtime dir holding host.sock [default: /run/hyperhive, or per user].",
    ),
]
StateDir = Annotated[
    Path,
    typer.Option(
        "--state-dir",
        envvar="HYPERHIVE_STATE_DIR",
        default_factory=default_state_dir,
        show_default=False,
        help="State dir holding broker.sqlite [default: /var/lib/hyperhive, or per user].",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print the daemon's reply as JSON.")]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"hyperhive: {message}", err=True)
    return typer.Exit(1)


def _call(run_dir: Path, payload: dict[str, Any]) -> dict[str, Any]:
    socket = run_dir / "host.sock"

    async def go() -> dict[str, Any]:
        async with await Client.connect(socket) as client:
            hello = await client.request({"cmd": "hello", "role": "cli", "protocol": 1})
            if not hello.get("ok"):
                raise ClientError(str(hello.get("error")))
            return await client.request(payload)

    try:
        reply = trio.run(go)
    except (FileNotFoundError, ConnectionRefusedError):
        raise _fail(
            f"no daemon is listening on {socket}; start one with 'hyperhive run' "
            "or point --run-dir at its runtime dir"
        ) from None
    except PermissionError:
        raise _fail(
            f"permission denied on {socket}; are you in the daemon's admin group?"
        ) from None
    except (ClientError, OSError) as exc:
        raise _fail(str(exc)) from None
    if not reply.get("ok"):
        raise _fail(str(reply.get("error", "request failed")))
    reply.pop("ok")
    return reply


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    age = time.time() - ts
    if age < 0:
        return f"in {_span(-age)}"
    return f"{_span(age)} ago"


def _span(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], empty: str) -> None:
    if not rows:
        typer.echo(empty)
        return
    cells = [[visible(str(c).replace("\n", " ")) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row[:-1]):
            widths[i] = max(widths[i], min(len(c), 40))

    def line(values: Sequence[str]) -> str:
        parts = [v[:40].ljust(widths[i]) for i, v in enumerate(values[:-1])]
        return "  ".join([*parts, values[-1]]).rstrip()

    typer.echo(line(list(headers)))
    for row in cells:
        typer.echo(line(row))


def _emit(reply: dict[str, Any], as_json: bool, human: Any) -> None:
    if as_json:
        typer.echo(json.dumps(reply, indent=2, ensure_ascii=False))
    else:
        human(reply)


# ---------------------------------------------------------------- the daemon


@app.command()
def run(
    state_dir: StateDir,
    run_dir: RunDir,
    backend: Annotated[
        str,
        typer.Option(envvar="HYPERHIVE_BACKEND", help=f"Container backend: {', '.join(BACKENDS)}."),
    ] = _config_default("backend"),
    dashboard_bind: Annotated[
        str,
        typer.Option(
            envvar="HYPERHIVE_DASHBOARD_BIND",
            help="Dashboard address, HOST:PORT (port 0 picks a free one), or 'off'.",
        ),
    ] = DEFAULT_DASHBOARD_BIND,
    dashboard_socket: Annotated[
        Path | None,
        typer.Option(envvar="HYPERHIVE_DASHBOARD_SOCKET", help="Also serve it on a unix socket."),
    ] = None,
    admin_group: Annotated[
        str | None,
        typer.Option(envvar="HYPERHIVE_ADMIN_GROUP", help="Group allowed on host.sock."),
    ] = _config_default("admin_group"),
    stop_agents_on_exit: Annotated[
        bool,
        typer.Option(
            help="Stop every agent when the daemon exits; the next start starts them again "
            "(development)."
        ),
    ] = _config_default("stop_agents_on_exit"),
    harness_command: Annotated[
        str | None,
        typer.Option(
            envvar="HYPERHIVE_HARNESS_COMMAND",
            hidden=True,
            help="Payload each container runs instead of the harness (testing).",
        ),
    ] = None,
    agent_model: Annotated[
        str | None,
        typer.Option(
            envvar="HYPERHIVE_AGENT_MODEL",
            help=f"Model in a new agent's agent.toml ({DEFAULT_MODEL}).",
        ),
    ] = _config_default("agent_model"),
    agent_cpu_quota: Annotated[
        str | None,
        typer.Option(
            envvar="HYPERHIVE_AGENT_CPU_QUOTA",
            help=f"cpu_quota for new agents ({DEFAULT_CPU_QUOTA}).",
        ),
    ] = _config_default("agent_cpu_quota"),
    agent_memory_max: Annotated[
        str | None,
        typer.Option(
            envvar="HYPERHIVE_AGENT_MEMORY_MAX",
            help=f"memory_max for new agents ({DEFAULT_MEMORY_MAX}).",
        ),
    ] = _config_default("agent_memory_max"),
    log_level: Annotated[
        str,
        typer.Option(
            envvar="HYPERHIVE_LOG_LEVEL", help="debug, info, warning or error (logs go to stderr)."
        ),
    ] = DEFAULT_LOG_LEVEL,
    min_free: Annotated[
        str | None,
        typer.Option(
            envvar="HYPERHIVE_MIN_FREE",
            help="Warn when the state dir has less free space (512M, 2G or 5%; "
            f"default: {MIN_FREE_FRACTION:.0%} or {MIN_FREE_BYTES // 1024**3}G, "
            "whichever is smaller).",
        ),
    ] = _config_default("min_free"),
    env_file: Annotated[
        Path | None,
        typer.Option(
            envvar="HYPERHIVE_ENV_FILE",
            help="Agents' API settings (ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL, proxies), "
            "KEY=VALUE lines; keep it mode 600.",
        ),
    ] = None,
    retention_days: Annotated[
        float,
        typer.Option(
            envvar="HYPERHIVE_RETENTION_DAYS",
            min=0,
            help="Delete acknowledged messages older than this many days.",
        ),
    ] = _config_default("retention_seconds") / DAY,
    events_days: Annotated[
        float,
        typer.Option(
            envvar="HYPERHIVE_EVENTS_DAYS",
            min=0,
            help="Keep this many days of each agent's live events (its page's history).",
        ),
    ] = _config_default("events_max_age_seconds") / DAY,
    events_keep: Annotated[
        int,
        typer.Option(
            envvar="HYPERHIVE_EVENTS_KEEP", min=0, help="Then keep at most this many events."
        ),
    ] = _config_default("events_keep"),
    log_cap: Annotated[
        str,
        typer.Option(
            envvar="HYPERHIVE_LOG_CAP",
            help="Rotate an agent's container log past this size, also while it runs (5M, 1G).",
        ),
    ] = f"{_config_default('log_cap_bytes') // 1024**2}M",
    log_keep: Annotated[
        int,
        typer.Option(
            envvar="HYPERHIVE_LOG_KEEP", min=0, help="Older container logs kept per agent."
        ),
    ] = _config_default("log_keep"),
    line_deadline_seconds: Annotated[
        float,
        typer.Option(
            envvar="HYPERHIVE_LINE_DEADLINE_SECONDS",
            hidden=True,
            min=0.1,
            help="Seconds a socket client has to finish a request line it started (testing).",
        ),
    ] = _config_default("line_deadline_seconds"),
    remote_command_seconds: Annotated[
        float,
        typer.Option(
            envvar="HYPERHIVE_REMOTE_COMMAND_SECONDS",
            hidden=True,
            min=0.1,
            help="Seconds this node waits for another to carry out a command (testing).",
        ),
    ] = _config_default("remote_command_seconds"),
    budget_daily_usd: Annotated[
        float | None,
        typer.Option(
            envvar="HYPERHIVE_BUDGET_DAILY_USD",
            min=0,
            help="Hive-wide budget: USD all agents together may spend per day (UTC); "
            "an agent reporting a turn past it is paused.",
        ),
    ] = _config_default("budget_daily_usd"),
    budget_total_usd: Annotated[
        float | None,
        typer.Option(
            envvar="HYPERHIVE_BUDGET_TOTAL_USD", min=0, help="Hive-wide budget: USD in total."
        ),
    ] = _config_default("budget_total_usd"),
    budget_daily_tokens: Annotated[
        int | None,
        typer.Option(
            envvar="HYPERHIVE_BUDGET_DAILY_TOKENS",
            min=0,
            help="Hive-wide budget: tokens per day (UTC).",
        ),
    ] = _config_default("budget_daily_tokens"),
    budget_total_tokens: Annotated[
        int | None,
        typer.Option(
            envvar="HYPERHIVE_BUDGET_TOTAL_TOKENS", min=0, help="Hive-wide budget: tokens in total."
        ),
    ] = _config_default("budget_total_tokens"),
    timezone: Annotated[
        str | None,
        typer.Option(
            envvar="HYPERHIVE_TIMEZONE",
            help="IANA time zone of cron schedules (default: the host's local zone).",
        ),
    ] = _config_default("timezone"),
    database: Annotated[
        str | None,
        typer.Option(
            envvar="HYPERHIVE_DATABASE",
            show_default=False,
            help="The broker's store: a postgresql:// URL (a password is better in "
            "HYPERHIVE_DATABASE or the env file); default: broker.sqlite in the state dir.",
        ),
    ] = None,
    node: Annotated[
        str | None,
        typer.Option(
            envvar="HYPERHIVE_NODE",
            show_default=False,
            help="This daemon's node name among the daemons sharing one PostgreSQL store "
            "(1-32 of a-z, 0-9, '-'); default: the host name.",
        ),
    ] = None,
) -> None:
    """Run the host daemon until SIGTERM or Ctrl-C."""
    # The daemon's modules load here, not at import: the operator's commands do without them.
    from hyperhive.schedules import check_timezone
    from hyperhive.store import DatabaseFailed, DatabaseUnusable, check_store_url
    from hyperhive.supervisor import main as daemon_main

    if backend not in BACKENDS:
        raise _fail(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    if timezone is not None and not check_timezone(timezone, refuse=False):
        raise _fail(f"unknown time zone {timezone!r}: give an IANA name such as Europe/Berlin")
    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if env_file is not None:
        from_file = _load_env_file(env_file)
        database = database or from_file  # the option (or HYPERHIVE_DATABASE) wins
    try:
        check_store_url(database)
    except DatabaseUnusable as exc:
        raise _fail(str(exc)) from None
    if node is not None:
        try:
            parse_node_name(node)
        except InvalidNodeName as exc:
            raise _fail(f"--node: {exc}") from None
    try:
        log_cap_bytes = parse_size(log_cap)
    except ValueError as exc:
        raise _fail(f"--log-cap: {exc}") from None
    if log_cap_bytes < 1:
        raise _fail("--log-cap: must be at least one byte")
    config = Config(
        paths=Paths(state_dir=state_dir, run_dir=run_dir),
        backend=backend,
        stop_agents_on_exit=stop_agents_on_exit,
        admin_group=admin_group,
        agent_model=agent_model,
        agent_cpu_quota=agent_cpu_quota,
        agent_memory_max=agent_memory_max,
        dashboard_bind=tuple(
            ([] if dashboard_bind == "off" else [dashboard_bind])
            + ([f"unix:{dashboard_socket}"] if dashboard_socket else [])
        ),
        harness_command=tuple(shlex.split(harness_command)) if harness_command else None,
        min_free=min_free,
        retention_seconds=retention_days * DAY,
        events_max_age_seconds=events_days * DAY,
        events_keep=events_keep,
        log_cap_bytes=log_cap_bytes,
        log_keep=log_keep,
        line_deadline_seconds=line_deadline_seconds,
        remote_command_seconds=remote_command_seconds,
        budget_daily_usd=budget_daily_usd,
        budget_total_usd=budget_total_usd,
        budget_daily_tokens=budget_daily_tokens,
        budget_total_tokens=budget_total_tokens,
        timezone=timezone,
        database=database,
        node=node if node is not None else default_node(),
    )
    try:
        trio.run(daemon_main, config)
    except KeyboardInterrupt:
        pass
    except BaseException as exc:
        failed = find(exc, DatabaseFailed)
        if failed is not None:
            # The one failure the daemon does not survive: say it in one line, exit 1.
            raise _fail(f"{failed}; stopping") from None
        problem = _setup_problem(exc)
        if problem is None:
            raise
        raise _fail(str(problem)) from None


def _load_env_file(path: Path) -> str | None:
    """The env file's settings join the daemon's environment, which agents inherit; the
    daemon's own (``HYPERHIVE_DATABASE``) is returned instead, kept out of it."""
    from hyperhive.envfile import EnvFileError, load_env_file

    try:
        values, warnings = load_env_file(path)
    except EnvFileError as exc:
        raise _fail(str(exc)) from None
    for warning in warnings:
        typer.echo(f"hyperhive: warning: {warning}", err=True)
    database = values.pop("HYPERHIVE_DATABASE", None)
    os.environ.update(values)
    logging.getLogger("hyperhive").info(
        "agent API settings from %s: %s", path, ", ".join(sorted(values)) or "none"
    )
    return database


def _setup_problem(exc: BaseException) -> HyperhiveError | None:
    """A configuration problem at start (possibly inside a task group), to report plainly."""
    from hyperhive.store import DatabaseUnusable
    from hyperhive.web._serve import DashboardUnavailable

    exc = innermost(exc)
    problems = AlreadyRunning | RequestRefused | DashboardUnavailable | DatabaseUnusable
    return exc if isinstance(exc, problems) else None


@app.command()
def rehearse(
    auto: Annotated[
        bool, typer.Option("--auto", help="Approve and answer alone (CI), instead of waiting.")
    ] = False,
    backend: Annotated[
        str, typer.Option(help="Container backend: auto (nspawn as root), nspawn or process.")
    ] = "auto",
    claude: Annotated[
        Path | None,
        typer.Option(
            envvar="HYPERHIVE_CLAUDE", help="The Claude Code CLI [default: claude on PATH]."
        ),
    ] = None,
    keep: Annotated[
        bool, typer.Option(help="Keep the rehearsal's state dir (printed) at the end.")
    ] = False,
) -> None:
    """Play a short scripted story with real agents and a scripted API: no account, no cost."""
    import shutil
    import tempfile

    from hyperhive.rehearsal.story import RehearsalFailed, Settings
    from hyperhive.rehearsal.story import rehearse as play

    if backend not in ("auto", "nspawn", "process"):
        raise _fail(f"unknown backend {backend!r}; available: auto, nspawn, process")
    found = str(claude) if claude else shutil.which("claude")
    if not found:
        local = Path(__file__).resolve().parent.parent / ".tools/node_modules/.bin/claude"
        found = str(local) if local.is_file() else None
    if not found or not os.access(found, os.X_OK):
        raise _fail("the Claude Code CLI is needed: 'make tools' installs it, or pass --claude")
    if backend == "auto" and Path("/run/systemd/machines/hm1nd").exists():
        typer.echo("a hive's manager container runs here: the rehearsal uses processes")
        backend = "process"
    root = Path(tempfile.mkdtemp(prefix="hh-rehearse-"))
    settings = Settings(claude=Path(found).resolve(), root=root, backend=backend, auto=auto)
    try:
        trio.run(play, settings)
    except BaseException as exc:
        exc = innermost(exc)
        if isinstance(exc, RehearsalFailed):
            keep = True
            raise _fail(f"{exc} (kept {root})") from None
        if not isinstance(exc, KeyboardInterrupt):
            raise
        typer.echo("rehearsal interrupted")
    finally:
        if keep:
            typer.echo(f"rehearsal state kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


@app.command("dashboard-url")
def dashboard_url(run_dir: RunDir, state_dir: StateDir) -> None:
    """Print the dashboard's login URL (it carries the token: keep it private)."""
    url = _call(run_dir, {"cmd": "status"}).get("dashboard_url")
    if not url:
        raise _fail("the dashboard is off (start the daemon with --dashboard-bind HOST:PORT)")
    typer.echo(url)


@app.command()
def schema() -> None:
    """Print the JSON Schema of every request and reply of the three sockets."""
    typer.echo(json.dumps(json_schema(), indent=2))


# ---------------------------------------------------------------- operator commands


@app.command()
def status(run_dir: RunDir, state_dir: StateDir, as_json: Json = False) -> None:
    """Show the daemon's health and what waits for the operator."""
    reply = _call(run_dir, {"cmd": "status"})

    def human(r: dict[str, Any]) -> None:
        node = f"node {r['node']}, " if r.get("node") else ""
        typer.echo(
            f"hyperhive {r['version']} (protocol {r['protocol']}), {node}pid {r['pid']}, "
            f"backend {r['backend']}, up {_span(time.time() - r['started_at'])}"
        )
        typer.echo(
            f"agents: {r['agents']}  pending approvals: {r['pending_approvals']}  "
            f"open questions: {r['open_questions']}  unread for operator: {r['operator_unread']}"
        )
        for problem in r.get("problems", []):
            typer.echo(f"! {problem}")
        if r.get("holds_duties") is False:
            typer.echo("duties: another node runs the hive's duties (deadlines, reminders, …)")
        elif r.get("holds_duties"):
            typer.echo("duties: this node runs the hive's duties (deadlines, reminders, …)")
        if r.get("credentials_warning"):
            typer.echo(f"warning: {r['credentials_warning']}")

    _emit(reply, as_json, human)


def _agent_state(a: dict[str, Any]) -> str:
    if a["transient"]:
        state = f"{a['transient']} ({_span(time.time() - a['transient_since'])})"
    else:
        state = str(a["state"])
    return f"{state}, paused" if a.get("paused_at") is not None else state


def _pause_text(a: dict[str, Any]) -> str | None:
    if a.get("paused_at") is None:
        return None
    reason = f": {a['paused_reason']}" if a.get("paused_reason") else ""
    return f"[paused by {a['paused_by']} {_when(a['paused_at'])}{reason}]"


def _agent_status(a: dict[str, Any]) -> str:
    parts = [_pause_text(a), a["status_text"], a["warning"] and f"(! {a['warning']})"]
    return " ".join(p for p in parts if p) or "-"


def _agent_node(a: dict[str, Any]) -> str:
    """An agent's node, and its status while that is not ``up`` (the agent is unreachable)."""
    status = a.get("node_status", "up")
    return (a.get("node") or "-") if status == "up" else f"{a.get('node')} ({status})"


def _agents_table(r: dict[str, Any]) -> None:
    # The NODE column when the agents are on several nodes, or one's node is not up.
    nodes = any(
        a.get("node") != r["agents"][0].get("node") or a.get("node_status", "up") != "up"
        for a in r["agents"]
    )
    _table(
        [
            "NAME",
            *(["NODE"] if nodes else []),
            "ROLE",
            "PARENT",
            "STATE",
            "BACKEND",
            "HARNESS",
            "UNREAD",
            "MODEL",
            "STATUS",
        ],
        [
            [
                a["name"],
                *([_agent_node(a)] if nodes else []),
                "lead" if a.get("lead") else a["role"],
                a["parent"] or "-",
                _agent_state(a),
                a["backend"],
                "connected" if a["harness_connected"] else "-",
                a["unread"],
                a["model"],
                _agent_status(a),
            ]
            for a in r["agents"]
        ],
        "no agents",
    )


@app.command("list")
def list_agents(run_dir: RunDir, state_dir: StateDir, as_json: Json = False) -> None:
    """List agents with their state."""
    _emit(_call(run_dir, {"cmd": "list"}), as_json, _agents_table)


@app.command()
def nodes(run_dir: RunDir, state_dir: StateDir, as_json: Json = False) -> None:
    """List the hive's nodes (the daemons sharing its database): status, last heartbeat,
    agents, dashboard. Agents of a node that is down or stopped are unreachable."""
    _emit(
        _call(run_dir, {"cmd": "nodes"}),
        as_json,
        lambda r: _table(
            ["NODE", "HOST", "STATUS", "HEARTBEAT", "AGENTS", "DASHBOARD"],
            [
                [
                    f"{n['name']} *" if n["this"] else n["name"],
                    n["host"],
                    n["status"],
                    f"{_span(n['heartbeat_age_seconds'])} ago",
                    n["agents"],
                    n["dashboard_url"] or "-",
                ]
                for n in r["nodes"]
            ],
            "no nodes",
        ),
    )


@app.command()
def spawn(
    name: str,
    run_dir: RunDir,
    state_dir: StateDir,
    backend: Annotated[
        str | None, typer.Option(help="This agent's backend instead of the daemon's.")
    ] = None,
    node: Annotated[
        str | None,
        typer.Option(help="The node it runs on (default: the one up with the fewest agents)."),
    ] = None,
    as_json: Json = False,
) -> None:
    """Create an agent directly, without an approval."""
    payload: dict[str, Any] = {"cmd": "spawn", "name": name}
    if backend:
        payload["backend"] = backend
    if node:
        payload["node"] = node
    reply = _call(run_dir, payload)
    _emit(
        reply,
        as_json,
        lambda r: typer.echo(
            f"spawned {r['agent']['name']} ({r['agent']['state']})"
            + (f" on node {r['agent']['node']}" if node and r["agent"].get("node") else "")
        ),
    )


def _approval_line(r: dict[str, Any]) -> None:
    a = r["approval"]
    note = f" — {a['note']}" if a["note"] else ""
    typer.echo(f"approval {a['id']}: {a['kind']} {a['agent']} is {a['status']}{note}")


@app.command("request-spawn")
def request_spawn(
    name: str,
    run_dir: RunDir,
    state_dir: StateDir,
    description: Annotated[str | None, typer.Option(help="Why this agent is needed.")] = None,
    node: Annotated[
        str | None,
        typer.Option(
            help="The node it runs on once approved (default: the one up with the fewest "
            "agents then)."
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Queue a spawn approval for a new agent."""
    payload: dict[str, Any] = {"cmd": "request_spawn", "name": name}
    if description:
        payload["description"] = description
    if node:
        payload["node"] = node
    _emit(_call(run_dir, payload), as_json, _approval_line)


def _approvals_table(r: dict[str, Any]) -> None:
    _table(
        ["ID", "KIND", "AGENT", "COMMIT", "REQUESTED", "DESCRIPTION"],
        [
            [
                a["id"],
                a["kind"],
                a["agent"],
                a["commit_ref"] or "-",
                _when(a["requested_at"]),
                a["description"] or "-",
            ]
            for a in r["approvals"]
        ],
        "no pending approvals",
    )


@app.command()
def pending(run_dir: RunDir, state_dir: StateDir, as_json: Json = False) -> None:
    """List approvals waiting for a decision."""
    _emit(_call(run_dir, {"cmd": "pending"}), as_json, _approvals_table)


def _approvals_history_table(r: dict[str, Any]) -> None:
    _table(
        ["ID", "KIND", "AGENT", "STATUS", "DECIDED BY", "DECIDED", "REQUESTED", "NOTE"],
        [
            [
                a["id"],
                a["kind"],
                a["agent"],
                a["status"],
                a.get("decided_by") or "-",
                _when(a["resolved_at"]),
                _when(a["requested_at"]),
                a["note"] or a["description"] or "-",
            ]
            for a in r["approvals"]
        ],
        "no approvals",
    )


@app.command()
def approvals(
    run_dir: RunDir,
    state_dir: StateDir,
    all_: Annotated[
        bool, typer.Option("--all", help="Include decided ones: status, note, who, when.")
    ] = False,
    as_json: Json = False,
) -> None:
    """List approvals: the pending ones, or with --all the history too."""
    if not all_:
        _emit(_call(run_dir, {"cmd": "pending"}), as_json, _approvals_table)
        return
    reply = _call(run_dir, {"cmd": "approvals", "include_resolved": True})
    _emit(reply, as_json, _approvals_history_table)


@app.command()
def approve(approval_id: int, run_dir: RunDir, state_dir: StateDir, as_json: Json = False) -> None:
    """Approve a pending request and carry it out."""
    _emit(_call(run_dir, {"cmd": "approve", "id": approval_id}), as_json, _approval_line)


@app.command()
def deny(
    approval_id: int,
    run_dir: RunDir,
    state_dir: StateDir,
    note: Annotated[str | None, typer.Option(help="Why; the requester reads it.")] = None,
    as_json: Json = False,
) -> None:
    """Deny a pending request, optionally with a note."""
    payload: dict[str, Any] = {"cmd": "deny", "id": approval_id}
    if note:
        payload["note"] = note
    _emit(_call(run_dir, payload), as_json, _approval_line)


@app.command()
def send(
    to: str,
    body: Annotated[str, typer.Argument(help="Message text; '-' reads it from stdin.")],
    run_dir: RunDir,
    state_dir: StateDir,
    in_reply_to: Annotated[int | None, typer.Option(help="Id of the message answered.")] = None,
    as_json: Json = False,
) -> None:
    """Send a message as the operator (to an agent, 'manager' or '*')."""
    if body == "-":
        body = sys.stdin.read()
    payload: dict[str, Any] = {"cmd": "send", "to": to, "body": body}
    if in_reply_to is not None:
        payload["in_reply_to"] = in_reply_to
    reply = _call(run_dir, payload)
    _emit(reply, as_json, lambda r: typer.echo(f"sent message {', '.join(map(str, r['ids']))}"))


def _messages_table(r: dict[str, Any]) -> None:
    _table(
        ["ID", "FROM", "SENT", "BODY"],
        [[m["id"], m["from"], _when(m["sent_at"]), m["body"]] for m in r["messages"]],
        "inbox is empty",
    )


@app.command()
def inbox(
    run_dir: RunDir,
    state_dir: StateDir,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many (newest).")] = 50,
    as_json: Json = False,
) -> None:
    """Show the newest messages to the operator (and mark them read)."""
    _emit(_call(run_dir, {"cmd": "inbox", "limit": limit}), as_json, _messages_table)


def _questions_table(r: dict[str, Any]) -> None:
    _table(
        ["ID", "ASKER", "TO", "ASKED", "DEADLINE", "OPTIONS", "QUESTION"],
        [
            [
                q["id"],
                q["asker"],
                q["target"] or "operator",
                _when(q["asked_at"]),
                _when(q["deadline_at"]),
                " | ".join(q["options"]) or "-",
                q["question"],
            ]
            for q in r["questions"]
        ],
        "no open questions",
    )


@app.command()
def questions(
    run_dir: RunDir,
    state_dir: StateDir,
    all_: Annotated[bool, typer.Option("--all", help="Include resolved questions.")] = False,
    as_json: Json = False,
) -> None:
    """List open questions (to the operator and between agents)."""
    reply = _call(run_dir, {"cmd": "questions", "include_answered": all_})
    _emit(reply, as_json, _questions_history_table if all_ else _questions_table)


def _questions_history_table(r: dict[str, Any]) -> None:
    _table(
        ["ID", "ASKER", "TO", "ASKED", "ANSWERED", "BY", "ANSWER", "QUESTION"],
        [
            [
                q["id"],
                q["asker"],
                q["target"] or "operator",
                _when(q["asked_at"]),
                _when(q["answered_at"]),
                q["answerer"] or "-",
                q["answer"] if q["answer"] is not None else "(open)",
                q["question"],
            ]
            for q in r["questions"]
        ],
        "no questions",
    )


def _question_line(r: dict[str, Any]) -> None:
    q = r["question"]
    typer.echo(f"question {q['id']} resolved: {q['answer']} (by {q['answerer']})")


@app.command()
def answer(
    question_id: int,
    text: Annotated[str, typer.Argument(help="The answer; free text is always allowed.")],
    run_dir: RunDir,
    state_dir: StateDir,
    as_json: Json = False,
) -> None:
    """Answer a question as the operator."""
    reply = _call(run_dir, {"cmd": "answer", "id": question_id, "answer": text})
    _emit(reply, as_json, _question_line)


@app.command("cancel-question")
def cancel_question(
    question_id: int, run_dir: RunDir, state_dir: StateDir, as_json: Json = False
) -> None:
    """Cancel an open question; its asker gets '[cancelled]'."""
    reply = _call(run_dir, {"cmd": "cancel_question", "id": question_id})
    _emit(reply, as_json, _question_line)


@app.command()
def destroy(
    name: str,
    run_dir: RunDir,
    state_dir: StateDir,
    purge: Annotated[
        bool,
        typer.Option(
            help="Also wipe the kept state and what waits for the agent (messages, reminders, "
            "questions, schedules); no undo."
        ),
    ] = False,
    as_json: Json = False,
) -> None:
    """Destroy an agent, keeping its state as a tombstone (or --purge it)."""
    reply = _call(run_dir, {"cmd": "destroy", "name": name, "purge": purge})
    _emit(reply, as_json, lambda _: typer.echo(f"{'purged' if purge else 'destroyed'} {name}"))


def _lifecycle(verb: str, past: str) -> None:
    def command(name: str, run_dir: RunDir, state_dir: StateDir, as_json: Json = False) -> None:
        reply = _call(run_dir, {"cmd": verb, "name": name})
        _emit(reply, as_json, lambda _: typer.echo(f"{name} {past}"))

    command.__doc__ = {
        "start": "Start a stopped (or crash-looping) agent.",
        "kill": "Stop an agent gracefully; its state is kept.",
        "restart": "Stop and start an agent.",
        "rebuild": "Apply the agent's current config and restart it.",
    }[verb]
    app.command(verb)(command)


for _verb, _past in [("start", "started"), ("kill", "stopped"), ("restart", "restarted"),
                     ("rebuild", "rebuilt")]:  # fmt: skip
    _lifecycle(_verb, _past)


@app.command()
def pause(
    names: Annotated[
        list[str], typer.Argument(metavar="NAME...", help="The agents to pause (at least one).")
    ],
    run_dir: RunDir,
    state_dir: StateDir,
    reason: Annotated[str, typer.Option(help="Why; shown wherever the agent is.")] = "",
    as_json: Json = False,
) -> None:
    """Pause agents: they are handed no messages (so run no turns) until resumed."""
    reply = _call(run_dir, {"cmd": "pause", "names": names, "reason": reason})
    _emit(reply, as_json, lambda r: typer.echo(f"paused {', '.join(_names(r))}"))


@app.command()
def resume(
    names: Annotated[
        list[str], typer.Argument(metavar="NAME...", help="The agents to resume (at least one).")
    ],
    run_dir: RunDir,
    state_dir: StateDir,
    as_json: Json = False,
) -> None:
    """Resume paused agents: what waits in their inboxes is handed out, in order."""
    reply = _call(run_dir, {"cmd": "resume", "names": names})
    _emit(reply, as_json, lambda r: typer.echo(f"resumed {', '.join(_names(r))}"))


def _names(r: dict[str, Any]) -> list[str]:
    return [a["name"] for a in r["agents"]]


def _watch_line(line: dict[str, Any]) -> str:
    """One change of ``hyperhive watch`` for people: time, kind, what changed."""
    d, kind = line["data"], line["kind"]
    at = time.strftime("%H:%M:%S", time.localtime(line["ts"]))
    if "approval" in d:
        a = d["approval"]
        what = f"#{a['id']} {a['kind']} {a['agent']} {a['status']}"
    elif "question" in d:
        q = d["question"]
        answer = f" -> {q['answer']}" if q.get("answer") is not None else ""
        what = f"#{q['id']} {q['asker']} to {q['target'] or 'operator'}: {q['question']}{answer}"
    elif kind == "agent_paused":
        what = f"{d['name']} by {d['by']}" + (f": {d['reason']}" if d["reason"] else "")
    elif kind == "problems_changed":
        what = "; ".join(d["problems"]) or "none"
    elif kind == "node_changed":
        what = f"node {d['node']} {d['status']}" + (
            f" (was {d['previous']})" if d.get("previous") else ""
        )
    else:
        detail = [d.get("transient") or d.get("state"), d.get("status_text"), d.get("by")]
        what = " ".join(str(x) for x in [d.get("name"), *detail] if x)
    return visible(f"{at} {kind} {what}".replace("\n", " "))


@app.command()
def watch(run_dir: RunDir, state_dir: StateDir, as_json: Json = False) -> None:
    """Print every change (agents, pauses, approvals, questions) as it happens, until ^C."""
    socket = run_dir / "host.sock"

    async def go() -> None:
        async with await Client.connect(socket, hello_role="cli") as client:
            reply = await client.request({"cmd": "watch"})
            if not reply.get("ok"):
                raise ClientError(str(reply.get("error")))
            while True:
                line = await client.receive()
                if line.get("ok") is False:
                    raise ClientError(str(line.get("error")))
                if as_json:
                    typer.echo(json.dumps(line, ensure_ascii=False), nl=True)
                else:
                    typer.echo(_watch_line(line))
                sys.stdout.flush()

    try:
        trio.run(go)
    except KeyboardInterrupt:
        return
    except (FileNotFoundError, ConnectionRefusedError):
        raise _fail(f"no daemon is listening on {socket}") from None
    except (ClientError, OSError) as exc:
        raise _fail(str(exc)) from None


@app.command()
def revive(name: str, run_dir: RunDir, state_dir: StateDir, as_json: Json = False) -> None:
    """Queue a spawn approval that brings a tombstone back with its kept state."""
    _emit(_call(run_dir, {"cmd": "revive", "name": name}), as_json, _approval_line)


@app.command()
def logs(
    name: str,
    run_dir: RunDir,
    state_dir: StateDir,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines (newest).")] = 50,
    as_json: Json = False,
) -> None:
    """Show the last lines of an agent's container output."""
    reply = _call(run_dir, {"cmd": "logs", "name": name, "lines": lines})
    _emit(
        reply, as_json, lambda r: typer.echo("\n".join(visible(x, keep="\t") for x in r["lines"]))
    )


@app.command()
def tombstones(run_dir: RunDir, state_dir: StateDir, as_json: Json = False) -> None:
    """List destroyed agents whose state is kept."""
    _emit(
        _call(run_dir, {"cmd": "tombstones"}),
        as_json,
        lambda r: _table(
            ["NAME", "SIZE", "MODIFIED"],
            [[t["name"], f"{t['size_bytes']} B", _when(t["modified_at"])] for t in r["tombstones"]],
            "no tombstones",
        ),
    )


@app.command("set-model")
def set_model(
    name: str, model: str, run_dir: RunDir, state_dir: StateDir, as_json: Json = False
) -> None:
    """Set the model an agent uses from its next turn on."""
    reply = _call(run_dir, {"cmd": "set_model", "name": name, "model": model})
    _emit(reply, as_json, lambda _: typer.echo(f"{name} uses {model} from its next turn"))


@app.command("set-parent")
def set_parent(
    child: str,
    run_dir: RunDir,
    state_dir: StateDir,
    parent: Annotated[
        str | None, typer.Argument(help="The new parent; omitted: back under the manager.")
    ] = None,
    as_json: Json = False,
) -> None:
    """Move an agent in the hierarchy (refused for unknown names, itself and cycles)."""
    reply = _call(run_dir, {"cmd": "set_parent", "child": child, "parent": parent})
    _emit(reply, as_json, lambda _: typer.echo(f"{child} is now below {parent or 'manager'}"))


@app.command()
def compact(name: str, run_dir: RunDir, state_dir: StateDir, as_json: Json = False) -> None:
    """Compact an agent's claude session now (after its running turn, if one runs)."""
    reply = _call(run_dir, {"cmd": "compact", "name": name})
    _emit(reply, as_json, lambda _: typer.echo(f"{name} compacts its session when no turn runs"))


@app.command()
def vacuum(run_dir: RunDir, state_dir: StateDir, as_json: Json = False) -> None:
    """Run retention now (acknowledged messages, the agents' events) and report the space freed."""
    reply = _call(run_dir, {"cmd": "vacuum"})
    _emit(
        reply,
        as_json,
        lambda r: typer.echo(
            f"deleted {r['deleted']} messages and {r['events_deleted']} events; "
            f"{_size(r['freed_bytes'])} freed"
        ),
    )


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def _usd(value: float) -> str:
    return f"${value:.2f}"


def _outcomes(items: list[dict[str, Any]]) -> str:
    return " ".join(f"{o['outcome']}:{o['count']}" for o in items) or "-"


def _stats_tables(r: dict[str, Any]) -> None:
    rows = [*r["agents"], r["hive"]]
    _table(
        ["NAME", "TODAY", "TOTAL", "TOKENS TODAY", "TOKENS", "TURNS", "CTX", "OUTCOMES"],
        [
            [
                s["name"],
                _usd(s["today"]["cost_usd"]),
                _usd(s["total"]["cost_usd"]),
                s["today"]["tokens"],
                s["total"]["tokens"],
                s["total"]["turns"],
                "-" if s["ctx_tokens"] is None else s["ctx_tokens"],
                _outcomes(s["total"]["outcomes"]),
            ]
            for s in rows
        ],
        "no turns recorded",
    )
    for s in rows:
        typer.echo(f"\n{s['name']}:")

        def num(value: float | None, unit: str = "") -> str:
            return "-" if value is None else f"{value:g}{unit}"

        _table(
            [
                "WINDOW",
                "TURNS",
                "PER HOUR",
                "P50",
                "P95",
                "CTX AVG",
                "CTX MAX",
                "COST",
                "TOP TOOLS",
            ],
            [
                [
                    w["window"],
                    w["turns"],
                    num(w["turns_per_hour"]),
                    num(w["duration_p50"], " s"),
                    num(w["duration_p95"], " s"),
                    num(w["ctx_avg"]),
                    num(w["ctx_max"]),
                    _usd(w["cost_usd"]),
                    " ".join(f"{t['name']}:{t['count']}" for t in w["top_tools"]) or "-",
                ]
                for w in s["windows"]
            ],
            "",
        )


@app.command()
def stats(
    run_dir: RunDir,
    state_dir: StateDir,
    name: Annotated[str | None, typer.Argument(help="Only this agent.")] = None,
    as_json: Json = False,
) -> None:
    """Spend and turn figures from the ledger, per agent and for the hive."""
    payload: dict[str, Any] = {"cmd": "stats"}
    if name is not None:
        payload["name"] = name
    _emit(_call(run_dir, payload), as_json, _stats_tables)


# ---------------------------------------------------------------- scheduled prompts

schedule_app = typer.Typer(
    help="Scheduled prompts: a message delivered to agents at a time, once or recurring.",
    no_args_is_help=True,
)
app.add_typer(schedule_app, name="schedule")


def parse_at(raw: str, now: float | None = None) -> float:
    """A time for ``--at``: ``now``, ``+90s``/``+10m``/``+2h``/``+1d``, seconds since the
    epoch, or an ISO date-time (local time unless it names its offset)."""
    from datetime import datetime

    now = time.time() if now is None else now
    text = raw.strip()
    if text == "now":
        return now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text.startswith("+") and text[-1:] in units and text[1:-1].isdigit():
        return now + int(text[1:-1]) * units[text[-1]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise _fail(
            f"--at {raw!r}: give 'now', '+10m' (s, m, h, d), seconds since the epoch or "
            "an ISO date-time such as 2026-12-01T09:00"
        ) from None


def _schedule_cadence(s: dict[str, Any]) -> str:
    if s["interval_seconds"] is not None:
        return f"every {_span(s['interval_seconds'])}"
    if s["cron"] is not None:
        return f"cron {s['cron']} ({s['timezone']})"
    return "once"


def _schedules_table(r: dict[str, Any]) -> None:
    rows = [
        [
            s["id"],
            s["owner"],
            ",".join(s["targets"]) or "-",
            _schedule_cadence(s),
            "ended " + _when(s["ended_at"]) if s["ended_at"] else _when(s["next_at"]),
            s["fires"],
            s["skipped"],
            s["description"] or s["body"],
        ]
        for s in r["schedules"]
    ]
    _table(
        ["ID", "OWNER", "TARGETS", "CADENCE", "NEXT", "FIRES", "SKIPPED", "BODY"],
        rows,
        "no schedules",
    )


def _schedule_line(r: dict[str, Any]) -> None:
    s = r["schedule"]
    state = f"ended {_when(s['ended_at'])}" if s["ended_at"] else f"next {_when(s['next_at'])}"
    typer.echo(
        f"schedule {s['id']}: {_schedule_cadence(s)} to {', '.join(s['targets']) or '-'}, "
        f"{state}, fired {s['fires']} (skipped {s['skipped']})"
    )


Targets = Annotated[list[str], typer.Argument(help="The agents it delivers to.")]


@schedule_app.command("add")
def schedule_add(
    targets: Targets,
    run_dir: RunDir,
    state_dir: StateDir,
    body: Annotated[str, typer.Option("--body", "-m", help="The message delivered.")],
    at: Annotated[str, typer.Option(help="First fire: now, +10m, epoch seconds, ISO time.")] = (
        "now"
    ),
    every: Annotated[
        int | None, typer.Option(help="Recurring: seconds between fires.", min=1)
    ] = None,
    cron: Annotated[
        str | None, typer.Option(help="Recurring by a five-field cron expression.")
    ] = None,
    timezone: Annotated[
        str | None, typer.Option(help="IANA zone for --cron (default: the daemon's).")
    ] = None,
    description: Annotated[str | None, typer.Option(help="What it is for.")] = None,
    as_json: Json = False,
) -> None:
    """Create a schedule directly (no approval needed: the operator owns it)."""
    payload: dict[str, Any] = {
        "cmd": "add_schedule",
        "targets": targets,
        "body": body,
        "first_at": parse_at(at),
    }
    for key, value in [
        ("interval_seconds", every),
        ("cron", cron),
        ("timezone", timezone),
        ("description", description),
    ]:
        if value is not None:
            payload[key] = value
    _emit(_call(run_dir, payload), as_json, _schedule_line)


@schedule_app.command("list")
def schedule_list(
    run_dir: RunDir,
    state_dir: StateDir,
    all_: Annotated[bool, typer.Option("--all", help="Include ended schedules.")] = False,
    as_json: Json = False,
) -> None:
    """List schedules: cadence, next fire, fires and skipped fires."""
    reply = _call(run_dir, {"cmd": "list_schedules", "include_ended": all_})
    _emit(reply, as_json, _schedules_table)


@schedule_app.command("edit")
def schedule_edit(
    schedule_id: int,
    run_dir: RunDir,
    state_dir: StateDir,
    body: Annotated[str | None, typer.Option("--body", "-m", help="New message.")] = None,
    at: Annotated[str | None, typer.Option(help="Next fire (as for add).")] = None,
    every: Annotated[int | None, typer.Option(help="New interval in seconds.", min=1)] = None,
    cron: Annotated[str | None, typer.Option(help="New cron expression.")] = None,
    once: Annotated[bool, typer.Option(help="Fire once more only, then end.")] = False,
    add: Annotated[list[str] | None, typer.Option("--add", help="Add a target.")] = None,
    remove: Annotated[list[str] | None, typer.Option("--remove", help="Drop a target.")] = None,
    description: Annotated[str | None, typer.Option(help="New description.")] = None,
    as_json: Json = False,
) -> None:
    """Change a schedule; what is not given stays as it is."""
    payload: dict[str, Any] = {"cmd": "edit_schedule", "id": schedule_id, "once": once}
    for key, value in [
        ("body", body),
        ("next_at", None if at is None else parse_at(at)),
        ("interval_seconds", every),
        ("cron", cron),
        ("description", description),
        ("targets_add", add),
        ("targets_remove", remove),
    ]:
        if value is not None:
            payload[key] = value
    _emit(_call(run_dir, payload), as_json, _schedule_line)


@schedule_app.command("cancel")
def schedule_cancel(
    schedule_id: int,
    run_dir: RunDir,
    state_dir: StateDir,
    target: Annotated[
        list[str] | None,
        typer.Option("--target", help="Stop delivering to this agent only (repeatable)."),
    ] = None,
    as_json: Json = False,
) -> None:
    """End a schedule, or drop some of its targets (it ends when none is left)."""
    payload: dict[str, Any] = {"cmd": "cancel_schedule", "id": schedule_id}
    if target:
        payload["targets"] = target
    _emit(_call(run_dir, payload), as_json, _schedule_line)


@schedule_app.command("fire")
def schedule_fire(
    schedule_id: int, run_dir: RunDir, state_dir: StateDir, as_json: Json = False
) -> None:
    """Deliver a schedule now; a recurring one keeps its cadence, a one-shot is used up."""
    reply = _call(run_dir, {"cmd": "fire_schedule_now", "id": schedule_id})
    _emit(reply, as_json, _schedule_line)


# ---------------------------------------------------------------- reminders


def _reminders_table(r: dict[str, Any]) -> None:
    rows = []
    for x in r["reminders"]:
        state = "sent" if x["sent_at"] is not None else "pending"
        if x["failed"]:
            state = f"FAILED x{x['attempt_count']}: {x['last_error']}"
        elif x["attempt_count"]:
            state = f"retrying ({x['attempt_count']} failed: {x['last_error']})"
        body = x["body"] if len(x["body"]) <= 60 else x["body"][:59] + "…"
        rows.append([x["id"], x["agent"], _when(x["due_at"]), x["file_path"] or "-", state, body])
    _table(["ID", "AGENT", "DUE", "FILE", "STATE", "BODY"], rows, "no pending reminders")


@app.command()
def reminders(
    run_dir: RunDir,
    state_dir: StateDir,
    all_: Annotated[bool, typer.Option("--all", help="Include delivered reminders.")] = False,
    as_json: Json = False,
) -> None:
    """List reminders not yet delivered (failed ones say why)."""
    reply = _call(run_dir, {"cmd": "reminders", "include_sent": all_})
    _emit(reply, as_json, _reminders_table)


class ReminderAction(StrEnum):
    RETRY = "retry"
    CANCEL = "cancel"


@app.command()
def reminder(
    action: Annotated[
        ReminderAction,
        typer.Argument(help="retry: deliver it again now; cancel: it never fires."),
    ],
    reminder_id: Annotated[int, typer.Argument(help="The reminder's id.")],
    run_dir: RunDir,
    state_dir: StateDir,
    as_json: Json = False,
) -> None:
    """Retry a reminder whose delivery failed (its attempts start over), or cancel one."""
    cmd = "retry_reminder" if action is ReminderAction.RETRY else "cancel_reminder"
    reply = _call(run_dir, {"cmd": cmd, "id": reminder_id})
    verb = "is delivered now" if action is ReminderAction.RETRY else "is cancelled"
    _emit(
        reply,
        as_json,
        lambda r: typer.echo(f"reminder {r['reminder']['id']} of {r['reminder']['agent']} {verb}"),
    )


def main() -> None:
    app()


__all__ = ["CONVERTER", "app", "main"]

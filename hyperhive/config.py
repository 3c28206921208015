"""Every default and bound of the daemon, and where its files live.

The bounds are typed ``Final`` constants; ``docs/protocol.md`` explains each one. ``hyperhive
run`` (cli.py) and the NixOS module take their defaults from here (tests compare them), and
:class:`Paths` names every file of the daemon and of each agent on the host. What an agent's
payload sees inside its container is the container contract, :mod:`hyperhive.contract`.
Which constants stay beside their code, and why: ``docs/architecture.md``.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from hyperhive import contract
from hyperhive.contract import PROPOSED_REPO_NAME
from hyperhive.disk import LogPolicy
from hyperhive.names import MANAGER, node_name_from_host, parse_agent_name, parse_node_name
from hyperhive.runtime import Backoff

if TYPE_CHECKING:
    from hyperhive.clocks import WallClock

PROTOCOL_VERSION: Final = 1
#: Longest request or response line, newline excluded.
MAX_LINE_BYTES: Final = 1024 * 1024
#: Longest message body (UTF-8 bytes); a body must also fit in one line.
MAX_BODY_BYTES: Final = 1024 * 1024 - 4096
MAX_RECV_WAIT_SECONDS: Final = 180
MAX_RECV_BATCH: Final = 32
MAX_RECENT: Final = 200
MAX_QUESTION_TTL_SECONDS: Final = 6 * 60 * 60
MAX_STATUS_TEXT: Final = 200
MAX_LOG_LINES: Final = 500
#: Spend ledger: the most distinct tools one turn report lists, and the longest names in it.
MAX_REPORT_TOOLS: Final = 64
MAX_REPORT_NAME: Final = 200
#: The no-progress breaker's default: consecutive turns without progress that pause an agent.
DEFAULT_NO_PROGRESS_TURNS: Final = 20
#: The largest number a budget limit may be (USD or tokens).
MAX_BUDGET: Final = 10**15
#: Scheduled prompts (docs/operations.md): most targets of one schedule, shortest and longest
#: interval (an agent's schedule is approved by the operator, who sees its cadence), latest
#: time a schedule may be set to (year 9999), most active schedules an agent owns, and the
#: longest cron expression.
MAX_SCHEDULE_TARGETS: Final = 32
MIN_SCHEDULE_INTERVAL_SECONDS: Final = 1
MAX_SCHEDULE_INTERVAL_SECONDS: Final = 366 * 24 * 60 * 60
MAX_SCHEDULE_AT: Final = 253402300799.0
MAX_SCHEDULES_PER_OWNER: Final = 50
MAX_CRON_CHARS: Final = 200
#: Retention: acked messages older than this are deleted by the hourly loop and by ``vacuum``.
DAY: Final = 24 * 60 * 60
RETENTION_SECONDS: Final = 30 * DAY
RETENTION_INTERVAL_SECONDS: Final = 60 * 60
#: How long a destroy waits for the agent's socket server to end (its file removed).
SOCKET_CLOSE_SECONDS: Final = 5.0
#: How long a tombstone's measured size is shown before its directories are walked again.
TOMBSTONE_SIZE_SECONDS: Final = 60.0
#: Dashboard event ring buffer and per-subscriber queue.
EVENT_RING_SIZE: Final = 4096
EVENT_SUBSCRIBER_QUEUE: Final = 256
#: How long one line of a ``watch`` feed may wait to be written before the watcher is dropped.
WATCH_SEND_SECONDS: Final = 30.0
#: Graceful shutdown budget after SIGTERM/SIGINT.
SHUTDOWN_GRACE_SECONDS: Final = 10.0
#: A node writes its heartbeat this often; one silent for NODE_DOWN_SECONDS is ``down``.
NODE_HEARTBEAT_SECONDS: Final = 2.0
NODE_DOWN_SECONDS: Final = 10.0
#: The events other nodes show (``hyperhive.shared_events``): waiting to be written (more
#: are dropped, counted), written or read per transaction, kept in ``hive_events``.
HIVE_EVENTS_QUEUE: Final = 10_000
HIVE_EVENTS_BATCH: Final = 500
HIVE_EVENTS_KEEP_SECONDS: Final = 60 * 60.0
#: Agent names per ``wake`` notification (at most 12 bytes each in JSON: 9 characters,
#: quotes, comma; PostgreSQL takes 8000 bytes).
WAKE_NAMES_PER_NOTE: Final = 500
#: The hive's singleton duties (hyperhive/duties.py): a node not holding their lock tries
#: to take it this often; the holder checks its lock's connection this often.
DUTY_RETRY_SECONDS: Final = 2.0
DUTY_CHECK_SECONDS: Final = 2.0
#: A reminder whose file must be written on its agent's node is handed to that node; the
#: holder of the duties looks again after this long (that node may have been down).
REMINDER_HANDOVER_SECONDS: Final = 30.0
#: How long a node waits for another to carry out a command about one of its agents
#: (``hyperhive.remote``); a restart's stop grace (STOP_GRACE_SECONDS) fits in it twice.
REMOTE_COMMAND_SECONDS: Final = 30.0
#: Approving, on one node, an apply_commit of an agent on another waits this long for its
#: node to deploy it (then the reply says where it is being deployed); also how long such
#: an approval waits for its proposal to reach the database from the manager's node.
DEPLOY_WAIT_SECONDS: Final = 30.0
BACKENDS: Final = ("auto", "nspawn", "process", "external")
#: ``hyperhive run --backend`` and :attr:`Config.backend`: nspawn when it can run, else process.
DEFAULT_BACKEND: Final = "auto"
#: Where ``hyperhive run`` serves the dashboard unless told (``--dashboard-bind``; ``off``).
#: A :class:`Config` built by hand serves none unless given ``dashboard_bind``.
DEFAULT_DASHBOARD_HOST: Final = "127.0.0.1"
DEFAULT_DASHBOARD_PORT: Final = 7000
DEFAULT_DASHBOARD_BIND: Final = f"{DEFAULT_DASHBOARD_HOST}:{DEFAULT_DASHBOARD_PORT}"
DEFAULT_LOG_LEVEL: Final = "info"

# ---- a new agent's seeded agent.toml (docs/agent-toml.md); ``--agent-*`` override the first
DEFAULT_MODEL: Final = "haiku"
DEFAULT_AVAILABLE_MODELS: Final = ("haiku", "sonnet", "opus")
#: CPU limit of an agent's container in percent of one CPU, and its memory limit.
DEFAULT_CPU_QUOTA: Final = "200%"
DEFAULT_MEMORY_MAX: Final = "4G"
#: ``[session] compact_at_percent``: compact claude's session past this share of the window.
DEFAULT_COMPACT_AT_PERCENT: Final = 75
#: Bounds of agent.toml (docs/agent-toml.md): the largest file accepted (UTF-8 bytes), the
#: longest description and other string, the most items of a list.
MAX_AGENT_TOML_BYTES: Final = 64 * 1024
MAX_DESCRIPTION_CHARS: Final = 2000
MAX_STRING_CHARS: Final = 4096
MAX_LIST_ITEMS: Final = 256

# ---- agents' containers
#: Restarts after a crash (SPEC §8, ``RestartPolicy``): the first waits 1 s, each further
#: consecutive crash doubles the wait up to 5 min; a run up for 10 min resets the streak;
#: 5 crashes within 15 min is a crash loop (no more automatic restarts).
RESTART_FIRST_DELAY_SECONDS: Final = 1.0
RESTART_MAX_DELAY_SECONDS: Final = 300.0
RESTART_RESET_AFTER_SECONDS: Final = 600.0
RESTART_LOOP_WINDOW_SECONDS: Final = 900.0
#: The restart delays as the hive's one backoff policy (``hyperhive.runtime.Backoff``).
RESTART_BACKOFF: Final = Backoff(
    first=RESTART_FIRST_DELAY_SECONDS,
    limit=RESTART_MAX_DELAY_SECONDS,
    reset_after=RESTART_RESET_AFTER_SECONDS,
)
RESTART_LOOP_CRASHES: Final = 5
#: How long a stop waits after SIGTERM before SIGKILL.
STOP_GRACE_SECONDS: Final = 10.0
#: Per-agent log file cap: beyond it the log is rotated (also while the agent runs), and
#: the older logs kept (``container.log.1`` … ``.3``); see :mod:`hyperhive.disk`.
LOG_CAP_BYTES: Final = 5 * 1024 * 1024
LOG_KEEP: Final = 3
DEFAULT_LOG_POLICY: Final = LogPolicy(cap_bytes=LOG_CAP_BYTES, keep=LOG_KEEP)
#: How often running agents' logs are measured against the cap.
LOG_CHECK_SECONDS: Final = 30.0
#: How often the state dir's and each agent's disk usage is measured (a tree walk).
DISK_USAGE_SECONDS: Final = 300.0
#: Events retention in every agent's events db (hourly): older rows go, the newest stay.
EVENTS_MAX_AGE_SECONDS: Final = 7 * DAY
EVENTS_KEEP: Final = 2000

# ---- what one request may carry beyond the line bounds below (docs/protocol.md)
#: An operator question's text, and its most options.
MAX_QUESTION_CHARS: Final = 4000
MAX_OPTIONS: Final = 32
#: An approval's operator note.
MAX_NOTE_CHARS: Final = 2000
#: A wake-up's label (``wake``).
MAX_WAKE_LABEL: Final = 200
#: Longest reason given for pausing an agent.
MAX_PAUSE_REASON: Final = 500
#: Most agents one ``pause``/``resume`` names.
MAX_NAMES: Final = 256
#: Reminders (``remind``, docs/protocol.md): the most pending per agent, the furthest ahead
#: one may be set, the body length (characters) above which it is written to a file in the
#: agent's state dir and the message carries the path, the longest ``file_path``, and the
#: delivery attempts (spaced by ``REMINDER_RETRY_BACKOFF``) before the operator must retry.
MAX_PENDING_REMINDERS: Final = 50
MAX_REMINDER_DELAY_SECONDS: Final = 366 * 24 * 60 * 60
REMINDER_SPILL_CHARS: Final = 4096
MAX_REMINDER_PATH_CHARS: Final = 1024
MAX_REMINDER_ATTEMPTS: Final = 5
REMINDER_RETRY_BACKOFF: Final = Backoff(first=5.0, limit=300.0)
#: Longest error kept in a config repo's ``failed/<id>`` tag message, and longest diff returned.
MAX_TAG_MESSAGE_CHARS: Final = 64 * 1024
MAX_DIFF_BYTES: Final = 1024 * 1024
#: Longest env file read (``hyperhive run --env-file``; it holds a few short lines).
MAX_ENV_FILE_BYTES: Final = 64 * 1024
#: Longest path a unix socket can be bound at (sun_path is 108 bytes with its NUL).
MAX_SOCKET_PATH: Final = 107
#: Free space in the state dir under which ``status``, the dashboard and ``/metrics`` warn:
#: ``--min-free`` (bytes, ``512M``, ``2G`` or ``5%``); by default 5 % or 1 GiB, the smaller.
MIN_FREE_FRACTION: Final = 0.05
MIN_FREE_BYTES: Final = 1024**3
#: How often the free space is looked at (and at once after a write failed for lack of it).
SPACE_CHECK_SECONDS: Final = 30.0
#: Given up by broker.sqlite when the disk is full, so that reads (``recv``) still work.
DB_RESERVE_BYTES: Final = 4 * 1024 * 1024
_SIZE_UNITS: Final = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def min_free_bytes(setting: str | None, total: int) -> int:
    """The low-space threshold for a file system of ``total`` bytes (ValueError if bad)."""
    if setting is None:
        return min(int(total * MIN_FREE_FRACTION), MIN_FREE_BYTES)
    text = setting.strip().upper()
    if text.endswith("%"):
        try:
            percent = float(text[:-1])
        except ValueError:
            percent = -1.0
        if not 0 <= percent <= 100:
            raise ValueError(f"--min-free {setting!r}: a percentage is between 0 and 100")
        return int(total * percent / 100)
    try:
        return parse_size(text)
    except ValueError:
        raise ValueError(
            f"--min-free {setting!r}: give bytes (512M, 2G) or a percentage (5%)"
        ) from None


def parse_size(setting: str) -> int:
    """A size in bytes: ``4096``, ``512K``, ``5M``, ``2G`` (ValueError if bad)."""
    text = setting.strip().upper()
    number, unit = text.rstrip("IB"), ""
    if number and number[-1] in _SIZE_UNITS:
        number, unit = number[:-1], number[-1]
    if not number.isdigit():
        raise ValueError(f"{setting!r} is not a size (4096, 512K, 5M, 2G)")
    return int(number) * _SIZE_UNITS[unit]


# ---- the socket trust boundary (docs/protocol.md, "Bounds"): what one caller can make us hold
#: Ids in requests are sqlite rowids: from 1 to the largest signed 64-bit integer.
MAX_ID: Final = 2**63 - 1
#: Most ids one ``ack`` may name.
MAX_ACK_IDS: Final = 1024
#: Deepest nesting of arrays and objects in a request line (no request needs more than 3).
MAX_JSON_DEPTH: Final = 32
#: Longest number literal in a request line; every integer field fits in 19 digits.
MAX_JSON_NUMBER_CHARS: Final = 64
#: Connections open at once on one agent's (or the manager's) socket, and on host.sock.
MAX_AGENT_CONNECTIONS: Final = 32
MAX_HOST_CONNECTIONS: Final = 64
#: Request bytes one socket holds at once across its connections (unfinished and queued lines).
MAX_SOCKET_BUFFERED_BYTES: Final = 4 * MAX_LINE_BYTES
#: A started request line must be finished within this many seconds of the daemon waiting
#: for it (idle connections, with no line started, may stay open as long as they like).
LINE_DEADLINE_SECONDS: Final = 10.0


#: The daemon's dirs when it runs as root (the NixOS module's and the packaged unit's).
ROOT_STATE_DIR: Final = "/var/lib/hyperhive"
ROOT_RUN_DIR: Final = "/run/hyperhive"


def _default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path(ROOT_STATE_DIR)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "hyperhive"


def _default_run_dir() -> Path:
    if os.geteuid() == 0:
        return Path(ROOT_RUN_DIR)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "hyperhive"
    return Path(tempfile.gettempdir()) / f"hyperhive-{os.geteuid()}"


def default_state_dir() -> Path:
    """``HYPERHIVE_STATE_DIR``, else the root or per-user default."""
    env = os.environ.get("HYPERHIVE_STATE_DIR")
    return Path(env) if env else _default_state_dir()


def default_run_dir() -> Path:
    """``HYPERHIVE_RUN_DIR``, else the root or per-user default."""
    env = os.environ.get("HYPERHIVE_RUN_DIR")
    return Path(env) if env else _default_run_dir()


@attrs.frozen
class Paths:
    """Where every file of one daemon lives. Agent paths take only validated names."""

    state_dir: Path
    run_dir: Path

    @property
    def broker_db(self) -> Path:
        return self.state_dir / "broker.sqlite"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "hyperhive.lock"

    @property
    def host_socket(self) -> Path:
        return self.run_dir / "host.sock"

    def agent_socket(self, name: str) -> Path:
        name = parse_agent_name(name, allow_manager=True)
        if name == MANAGER:
            return self.run_dir / "manager" / "mcp.sock"
        return self.run_dir / "agents" / name / "mcp.sock"

    def ui_socket(self, name: str) -> Path:
        """The agent's web UI socket, beside its agent socket (its harness serves it there,
        ``/run/hive/ui.sock`` in the container; the dashboard proxies it)."""
        return self.agent_socket(name).with_name(contract.UI_SOCKET_NAME)

    def socket_dir(self, name: str) -> Path:
        """Host side of the container's ``/run/hive``: the agent and UI sockets."""
        return self.agent_socket(name).parent

    def agent_dir(self, name: str) -> Path:
        """Everything of one agent that is not config: state, claude dir, logs."""
        return self.state_dir / "agents" / parse_agent_name(name, allow_manager=True)

    def agent_state_dir(self, name: str) -> Path:
        """Host side of the container's ``/state``, the agent's working directory."""
        return self.agent_dir(name) / "state"

    def claude_dir(self, name: str) -> Path:
        """Host side of the container's ``/root/.claude``: the agent's claude login (0700)."""
        return self.agent_dir(name) / "claude"

    def credentials_file(self, name: str) -> Path:
        return self.claude_dir(name) / contract.CREDENTIALS_FILE_NAME

    def events_db(self, name: str) -> Path:
        """The harness's event log (``/state/hyperhive-events.sqlite`` in the container)."""
        return self.agent_state_dir(name) / contract.EVENTS_DB_NAME

    def logs_dir(self, name: str) -> Path:
        return self.agent_dir(name) / "logs"

    @property
    def proposed_root(self) -> Path:
        """Every agent's proposed config repo, and nothing else: the manager's ``/agents``."""
        return self.state_dir / "proposed"

    def proposed_dir(self, name: str) -> Path:
        """An agent's proposed config repo, ``<state>/proposed/<name>/config``."""
        name = parse_agent_name(name, allow_manager=True)
        return self.proposed_root / name / PROPOSED_REPO_NAME

    def applied_dir(self, name: str) -> Path:
        return self.state_dir / "applied" / parse_agent_name(name, allow_manager=True)

    def model_file(self, name: str) -> Path:
        return self.agent_state_dir(name) / contract.MODEL_FILE_NAME

    def container_log(self, name: str) -> Path:
        return self.logs_dir(name) / "container.log"


def default_node() -> str:
    """``--node``'s default: the host name's first label (``node`` if it makes no name)."""
    return node_name_from_host(socket.gethostname())


@attrs.frozen
class Config:
    """Settings of one ``hyperhive run``."""

    paths: Paths
    backend: str = DEFAULT_BACKEND
    #: ``synchronous`` level of broker.sqlite; FULL so acknowledged writes survive power loss.
    synchronous: str = "FULL"
    #: ``--database``: a ``postgresql://`` URL of the broker's store; None: broker.sqlite.
    database: str | None = attrs.field(default=None, repr=False)
    #: ``--node``: this daemon's name among the daemons sharing one store (default: the
    #: host name); the agents placed on it are the ones it serves.
    node: str = attrs.field(factory=default_node, converter=parse_node_name)
    retention_seconds: float = RETENTION_SECONDS
    retention_interval_seconds: float = RETENTION_INTERVAL_SECONDS
    #: Events retention in each agent's events db: rows older than this go, then all but
    #: the newest ``events_keep``.
    events_max_age_seconds: float = EVENTS_MAX_AGE_SECONDS
    events_keep: int = EVENTS_KEEP
    #: Container logs: the cap of each file and how many older ones are kept.
    log_cap_bytes: int = LOG_CAP_BYTES
    log_keep: int = LOG_KEEP
    log_check_seconds: float = LOG_CHECK_SECONDS
    disk_usage_seconds: float = DISK_USAGE_SECONDS
    #: Stop every agent when the daemon exits (development); by default agents outlive it.
    stop_agents_on_exit: bool = False
    #: Where the dashboard listens (hypercorn binds: ``HOST:PORT``, ``unix:PATH``); () = off.
    dashboard_bind: tuple[str, ...] = ()
    #: Defaults written into a new agent's seeded agent.toml (None: the built-in default,
    #: :data:`DEFAULT_MODEL`, :data:`DEFAULT_CPU_QUOTA`, :data:`DEFAULT_MEMORY_MAX`).
    agent_model: str | None = None
    agent_cpu_quota: str | None = None
    agent_memory_max: str | None = None
    #: Group allowed to use host.sock (mode 0660); None: the daemon's own group.
    admin_group: str | None = None
    #: The payload each container runs; None means ``python -m hyperhive_harness serve``.
    harness_command: tuple[str, ...] | None = None
    #: ``--min-free``: low-space warning threshold (see :func:`min_free_bytes`); None: default.
    min_free: str | None = None
    #: Bytes broker.sqlite keeps in reserve for reads when the disk fills up.
    db_reserve_bytes: int = DB_RESERVE_BYTES
    #: Seconds a client has to finish a request line it started (tests shorten it).
    line_deadline_seconds: float = LINE_DEADLINE_SECONDS
    #: How long a command for another node's agent may take (``hyperhive.remote``).
    remote_command_seconds: float = REMOTE_COMMAND_SECONDS
    #: Wall-clock time of stored deadlines and crash history (waits run on trio's clock).
    #: Tests under trio's MockClock give a :class:`hyperhive.clocks.TrioWallClock`.
    wall_clock: WallClock = attrs.field(default=time.time, eq=False)
    #: The backends that start payloads, by name; None: the real ``process`` and ``nspawn``.
    #: Tests only (no CLI option): e.g. ``{"process": FakeBackend()}``.
    #: (Values are :class:`hyperhive.containers.Backend`; typed loosely here, since config sits
    #: below the containers layer.)
    container_backends: Mapping[str, Any] | None = attrs.field(default=None, eq=False)
    #: ``--timezone``: the IANA zone cron schedules are evaluated in (stored per schedule);
    #: None: the host's local zone.
    timezone: str | None = None
    #: Delays between an agent's crash restarts (``RestartPolicy``); tests shorten them.
    restart_backoff: Backoff = RESTART_BACKOFF
    #: Delays between a reminder's failed delivery attempts; tests shorten them.
    reminder_retry_backoff: Backoff = REMINDER_RETRY_BACKOFF
    #: Hive-wide budgets (``--budget-daily-usd`` …): every agent's spend together; None: no limit.
    budget_daily_usd: float | None = None
    budget_total_usd: float | None = None
    budget_daily_tokens: int | None = None
    budget_total_tokens: int | None = None

    @property
    def log_policy(self) -> LogPolicy:
        return LogPolicy(cap_bytes=self.log_cap_bytes, keep=self.log_keep)

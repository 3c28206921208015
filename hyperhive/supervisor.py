"""``hyperhive run``: the one nursery tree of the daemon (drawn as in docs/architecture.md).

    hyperhive run
    └── supervisor.main                      SIGTERM/SIGINT, sd_notify READY/WATCHDOG/STOPPING
        ├── open_daemon                      flock on <state>/ and <run>/hyperhive.lock
        │   └── open_store               broker.sqlite, or PostgreSQL with --database
        │       ├── Database.serve           the one writer of the store (group commit)
        │       └── nursery                  (* = a failure domain, see below)
        │           ├── Nodes.serve          this node: its lock, heartbeat, notifications
        │           ├── Registry.serve       loads `agents`, makes sure `manager` exists
        │           │   └── serve_unix_socket * xN
        │           │                        <run>/manager/mcp.sock, <run>/agents/<name>/mcp.sock:
        │           │                        one per live agent, each in its own cancel scope
        │           ├── Containers.serve
        │           │   └── AgentRunner.run * xN
        │           │                        one per live agent of the process or nspawn backend:
        │           │                        re-adopts or starts its payload, waits on its pidfd,
        │           │                        carries out lifecycle commands
        │           ├── Duties.serve         the hive's duties, while this node holds their lock
        │           │   ├── QuestionBook.watchdog *
        │           │   ├── ScheduleBook.run *    fires scheduled prompts at their due times
        │           │   ├── ReminderBook.scheduler *
        │           │   │                    sleeps until the earliest deadline
        │           │   └── retention_loop * hourly: acked messages > 30 days
        │           ├── retention_loop *     hourly: agents' events dbs
        │           ├── housekeeping_loop *  every 30 s: running agents' logs over the cap
        │           │                        rotated; every 5 min: disk usage measured
        │           ├── SpaceMonitor.run *   statvfs of the state dir every 30 s and on disk-full
        │           ├── AgentViews.refresh_loop *
        │           │                        every 2 s: agents' model, UI socket, login (a thread)
        │           ├── SharedEvents.run *   its events to the other nodes, theirs to its hub
        │           ├── NodeWatch.run *      every 2 s: the nodes' statuses, `node_changed`
        │           ├── Hive.share_facts *   every 2 s: its agents' facts to the others, theirs back
        │           ├── NodeCommands.serve * on PostgreSQL: commands other nodes ask of this one
        │           │                        (hyperhive.remote), each carried out in its own task
        │           ├── Hive.serve_placement *
        │           │                        adopts agents placed here by other nodes, deploys
        │           │                        their approved configs (multi-node.md)
        │           ├── serve_dashboard *    with --dashboard-bind: hypercorn-trio; started(urls)
        │           └── serve_unix_socket    <run>/host.sock (operator)
        └── _watchdog_pings                  start_soon, only when WATCHDOG_USEC is set; pings
                                             after a database round trip

:func:`open_daemon` builds the :class:`~hyperhive.hive.Hive`, then the
:class:`~hyperhive.api.Api` on it, then the dashboard, and keeps them in a :class:`Daemon`.
Each child reports readiness through ``nursery.start``; the daemon is ready when every
socket listens. Each agent's runner and socket, the watchdog, the retention loop, the
space monitor and the dashboard are failure domains (:mod:`hyperhive.supervision`): a bug
in one is shown and restarted with backoff. A failure of the database itself ends the
tree (and the daemon) rather than leaving it half alive. A signal drains the sockets
(:meth:`Daemon.drain`, bounded by ``SHUTDOWN_GRACE_SECONDS``) before it cancels the tree.
"""

from __future__ import annotations

import fcntl
import functools
import gc
import grp
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, Final

import trio

from hyperhive.agent_config import InvalidAgentConfig, seed_agent_toml
from hyperhive.agent_setup import migrate_proposed_repos, prepare_agent_repos
from hyperhive.api import Api
from hyperhive.config import SHUTDOWN_GRACE_SECONDS, Config, min_free_bytes
from hyperhive.errors import AlreadyRunning, DiskFull, RequestRefused
from hyperhive.hive import Hive, resolve_backend
from hyperhive.names import MANAGER, OPERATOR
from hyperhive.sdnotify import Notifier
from hyperhive.server import Drain, Principal, SocketKind, SocketLimits, serve_unix_socket
from hyperhive.startup import check_state, make_dir
from hyperhive.store import BROKER_MIGRATIONS, Database, open_store, redact_url
from hyperhive.supervision import agent_reporter, supervise
from hyperhive.web import Auth, load_or_create_token, serve_dashboard

log = logging.getLogger("hyperhive")
#: The collector's thresholds while the daemon runs (Python's default: 700, 10, 10).
GC_THRESHOLDS: Final = (20_000, 20, 20)
#: How long a thread running Python keeps the GIL from the event loop while it waits for
#: it (Python's default: 5 ms).
SWITCH_INTERVAL_SECONDS: Final = 0.0005


class Daemon:
    """What the supervisor builds and keeps: the :class:`Hive`, its :class:`Api`, and the
    dashboard's login (its :class:`Auth` and the URLs it listens on, once it does)."""

    def __init__(self, config: Config, db: Database) -> None:
        self.hive = Hive(config, db, serve_agent_socket=self._serve_agent_socket)
        self.api = Api(self.hive, dashboard_url=self.dashboard_login_url)
        #: Set by :func:`open_daemon` when the dashboard is on.
        self.auth: Auth | None = None
        self.dashboard_urls: list[str] = []
        #: Shared by host.sock and every agent's socket: :meth:`drain` stops them together.
        self.sockets = Drain()

    async def drain(self, grace: float) -> None:
        """The graceful part of a stop: no socket listens any more, parked long-polls return,
        and requests in hand get up to ``grace`` seconds to finish and send their replies;
        whatever is still running then is cancelled with the tree."""
        self.sockets.begin()
        self.hive.broker.stop_waiting()
        with trio.move_on_after(grace):
            await self.sockets.wait_closed()

    def dashboard_login_url(self) -> str | None:
        """The URL that logs a browser in (the first bind that is not a unix socket)."""
        if self.auth is None:
            return None
        urls = [u for u in self.dashboard_urls if u.startswith("http")]
        if not urls:
            return None
        return f"{urls[0]}/login?token={self.auth.token}"

    async def _serve_agent_socket(
        self, path: Path, principal: Principal, *, task_status: trio.TaskStatus[None]
    ) -> None:
        # Only root (the daemon) and the agent's container reach an agent's socket dir.
        await supervise(
            f"{principal.name}'s socket",
            functools.partial(
                serve_unix_socket,
                path,
                principal,
                self.api,
                mode=0o600,
                dir_mode=0o700,
                drain=self.sockets,
                limits=SocketLimits.for_kind(
                    principal.kind, line_deadline=self.hive.config.line_deadline_seconds
                ),
            ),
            report=agent_reporter(self.hive.registry, self.hive.broker, principal.name),
            task_status=task_status,
        )


def admin_gid(group: str | None) -> int | None:
    """The gid allowed on host.sock (``--admin-group``); None keeps the daemon's own group."""
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise RequestRefused(f"admin group {group!r} does not exist") from None


# ---------------------------------------------------------------- single instance


@contextmanager
def instance_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` or raise :class:`AlreadyRunning`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = open(path, "a+")  # noqa: SIM115 - held for the daemon's life
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise AlreadyRunning(
                f"another hyperhive daemon (pid {holder}) is already running with "
                f"{path.parent}; stop it first, or use another --state-dir/--run-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


# ---------------------------------------------------------------- the tree


async def retention_loop(
    hive: Hive,
    *,
    messages: bool = True,
    events: bool = True,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``messages``: the store's acked messages (a duty of the hive: one node);
    ``events``: this node's agents' events dbs."""
    task_status.started()
    while True:
        if messages:
            try:
                vacuumed = await hive.broker.vacuum(hive.config.retention_seconds)
            except DiskFull as exc:
                # Deleting needs room in the WAL too; the next round will do it.
                log.warning("retention: %s", exc)
            else:
                if vacuumed.deleted:
                    log.info("retention: deleted %d acked messages", vacuumed.deleted)
        if events:
            swept = await hive.sweep_events()
            if swept.deleted:
                log.info("retention: deleted %d events, %d bytes freed", swept.deleted, swept.freed)
        await trio.sleep(hive.config.retention_interval_seconds)


async def housekeeping_loop(
    hive: Hive, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Rotate running agents' logs past the cap; measure the state dir now and then."""
    task_status.started()
    config = hive.config
    next_usage = trio.current_time()
    while True:
        await hive.rotate_logs()
        if trio.current_time() >= next_usage:
            await hive.measure_disk_usage()
            next_usage = trio.current_time() + config.disk_usage_seconds
        await trio.sleep(config.log_check_seconds)


@asynccontextmanager
async def open_daemon(config: Config) -> AsyncIterator[Daemon]:
    """Run the daemon's tree for the duration of the ``async with``; yields once ready."""
    paths = config.paths
    # Settings errors surface here, plainly, before anything is started.
    gid = admin_gid(config.admin_group)
    resolve_backend(config.backend)
    try:
        seed_agent_toml(
            model=config.agent_model,
            cpu_quota=config.agent_cpu_quota,
            memory_max=config.agent_memory_max,
        )
    except InvalidAgentConfig as exc:
        raise RequestRefused(f"agent defaults: {exc}") from None
    try:
        min_free_bytes(config.min_free, 0)
    except ValueError as exc:
        raise RequestRefused(str(exc)) from None
    # A dir or database it cannot use is refused before anything is created or changed.
    await trio.to_thread.run_sync(check_state, paths, config.database)
    # It holds credentials and the dashboard token: nobody else's business.
    make_dir(paths.state_dir, 0o700, "state dir")
    make_dir(paths.run_dir, 0o751, "run dir")
    with instance_lock(paths.lock_file), instance_lock(paths.run_dir / "hyperhive.lock"):
        moved = await trio.to_thread.run_sync(migrate_proposed_repos, paths)
        if moved:
            log.info("moved the proposed config repos of %s to %s", moved, paths.proposed_root)
        if config.database:
            log.info("the broker's store: %s", redact_url(config.database))
            if paths.broker_db.exists():
                log.warning("%s is not used: the store is on PostgreSQL", paths.broker_db)
        async with open_store(
            config.database,
            paths.broker_db,
            synchronous=config.synchronous,
            migrations=BROKER_MIGRATIONS,
            reserve_bytes=config.db_reserve_bytes,
        ) as db:
            daemon = Daemon(config, db)
            hive = daemon.hive
            async with trio.open_nursery() as nursery:
                # First: one daemon per node (its lock), and every node's notifications.
                await nursery.start(hive.nodes.serve)
                await nursery.start(hive.registry.serve)
                if (
                    hive.registry.is_local(MANAGER)
                    and hive.registry.get(MANAGER).backend != hive.backend
                ):
                    # It follows the daemon (written only on a change: a full disk must not
                    # keep the daemon from starting).
                    await hive.registry.update(MANAGER, backend=hive.backend)
                if hive.registry.is_local(MANAGER):
                    await prepare_agent_repos(paths, MANAGER, hive.seed_toml)
                await nursery.start(hive.containers.serve)
                if (
                    moved
                    and hive.registry.is_local(MANAGER)
                    and hive.registry.get(MANAGER).backend != "external"
                ):
                    # A manager re-adopted from before the move has no /agents: restart it.
                    await hive.containers.request(MANAGER, "restart")
                await hive.finish_interrupted()
                # A budget raised by the daemon's options lets agents paused by it run again.
                await hive.lift_budget_pauses()
                # The hive's duties run on one node at a time: the one holding their lock.
                duties: list[tuple[str, Callable[..., Awaitable[None]]]] = [
                    ("the questions watchdog", hive.questions.watchdog),
                    ("the schedules", hive.schedules.run),
                    ("the reminder scheduler", hive.reminders.scheduler),
                    (
                        "the messages' retention",
                        functools.partial(retention_loop, hive, events=False),
                    ),
                ]
                await nursery.start(hive.duties.serve, duties, hive.problems.reporter)
                for part, body in (
                    (
                        "the retention loop",
                        functools.partial(retention_loop, hive, messages=False),
                    ),
                    ("the housekeeping loop", functools.partial(housekeeping_loop, hive)),
                    ("the free-space monitor", hive.space.run),
                    ("the agent views", hive.views.refresh_loop),
                    ("the events of other nodes", hive.shared_events.run),
                    ("the node watch", hive.node_watch.run),
                    ("the agents' facts across nodes", hive.share_facts),
                    ("the placement of agents", hive.serve_placement),
                ):
                    await nursery.start(
                        functools.partial(
                            supervise, part, body, report=hive.problems.reporter(part)
                        )
                    )
                if hive.nodes.shared:
                    # The operator's requests about this node's agents, asked on other nodes.
                    await nursery.start(
                        functools.partial(
                            supervise,
                            "the node commands",
                            daemon.api.commands.serve,
                            report=hive.problems.reporter("the node commands"),
                        )
                    )
                if config.dashboard_bind:
                    token = await trio.to_thread.run_sync(
                        load_or_create_token, paths.state_dir / "dashboard-token"
                    )
                    auth = Auth(token)
                    daemon.dashboard_urls = await nursery.start(
                        serve_dashboard, hive, daemon.api, auth, list(config.dashboard_bind)
                    )
                    daemon.auth = auth
                    await hive.nodes.set_dashboard_url(
                        next((u for u in daemon.dashboard_urls if u.startswith("http")), None)
                    )
                await nursery.start(
                    functools.partial(
                        serve_unix_socket,
                        paths.host_socket,
                        Principal(SocketKind.HOST, OPERATOR),
                        daemon.api,
                        mode=0o660,
                        group=gid,
                        drain=daemon.sockets,
                        limits=SocketLimits.for_kind(
                            SocketKind.HOST, line_deadline=config.line_deadline_seconds
                        ),
                    )
                )
                try:
                    yield daemon
                finally:
                    nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_hive(config: Config) -> AsyncIterator[Hive]:
    """:func:`open_daemon`, for callers that only drive the hive's operations."""
    async with open_daemon(config) as daemon:
        yield daemon.hive


async def _watchdog_pings(hive: Hive, notifier: Notifier, interval: float) -> None:
    while True:
        # A round trip through the database writer: a wedged writer stops the pings.
        await hive.db.transaction(lambda conn: conn.execute("SELECT 1").fetchone())
        notifier.notify("WATCHDOG=1")
        await trio.sleep(interval)


async def main(config: Config, *, out: IO[str] = sys.stdout) -> None:
    """Run until SIGTERM or SIGINT, then shut down within the grace period."""
    notifier = Notifier.from_env()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with open_daemon(config) as daemon, trio.open_nursery() as nursery:
            hive = daemon.hive
            if notifier.watchdog_interval is not None:
                nursery.start_soon(_watchdog_pings, hive, notifier, notifier.watchdog_interval)
            login = daemon.dashboard_login_url()
            if login is not None:
                if os.environ.get("INVOCATION_ID"):
                    # Under systemd stdout is the journal: keep the token out of it.
                    login = login.split("?", 1)[0] + "  (run 'hyperhive dashboard-url' to log in)"
                print(f"hyperhive: dashboard {login}", file=out, flush=True)
            # What start-up made (modules, classes, the hive) lives as long as the daemon:
            # the collector's full passes need not walk it again, and stay short.
            gc.freeze()
            # A request makes and drops thousands of small objects (a snapshot of 1000
            # agents, many more): collecting the young ones every 700 allocations cost ~1 ms
            # of a snapshot and was the tail of a parked recv's wake (docs/operations.md).
            gc.set_threshold(*GC_THRESHOLDS)
            # The loop gives the GIL up at every socket, file and sqlite call; a worker
            # thread running Python meanwhile (every agent's files read every 2 s) kept it
            # up to 5 ms each time: a 1000-agent snapshot's p99 went from 11-33 to 8-13 ms.
            sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
            # Last, so that whoever waits for it has every line before it too.
            print(
                f"hyperhive: ready; host socket {config.paths.host_socket}, "
                f"state {config.paths.state_dir}, backend {hive.backend}, pid {os.getpid()}",
                file=out,
                flush=True,
            )
            notifier.notify("READY=1")
            async for signum in signals:
                log.info("received %s; shutting down", signal.Signals(signum).name)
                break
            notifier.notify("STOPPING=1")
            await daemon.drain(SHUTDOWN_GRACE_SECONDS)
            # Then cancellation reaches every task at once; only the database's in-flight
            # batch is shielded, and that takes milliseconds.
            nursery.cancel_scope.cancel()
    print("hyperhive: stopped", file=out, flush=True)

"""``Hive``: the daemon's domain operations and read models, below the API and the dashboard.

It wires the parts together (registry, broker, questions, approvals, containers, the event
hub, the daemon's problems) and carries out the operations that span several of them
(spawn, lifecycle, destroy, config deploys, finishing interrupted decisions), and builds
the read models the API and the dashboard show (agent infos, tombstones). It imports
nothing from :mod:`hyperhive.api`, :mod:`hyperhive.web` or :mod:`hyperhive.supervisor`.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import attrs
import trio

from hyperhive import contract, system_messages, topology
from hyperhive.agent_config import (
    AgentConfig,
    BudgetSettings,
    parse_agent_config,
    seed_agent_toml,
)
from hyperhive.agent_setup import load_applied_config, prepare_agent_repos, proposed_repo
from hyperhive.agent_views import AgentFacts, AgentViews
from hyperhive.approvals import (
    ApprovalKind,
    ApprovalQueue,
    Delegated,
    check_commit_ref,
    sql_approved_config,
    sql_deploys_for,
    sql_fail_pending,
    sql_last_approved_config,
    sql_node,
    sql_set_deploy_node,
    sql_set_node,
)
from hyperhive.broker import Broker, Outbox, SentMessage, sql_drop_inbox
from hyperhive.config import (
    BACKENDS,
    DEPLOY_WAIT_SECONDS,
    MAX_LOG_LINES,
    MAX_PAUSE_REASON,
    NODE_HEARTBEAT_SECONDS,
    TOMBSTONE_SIZE_SECONDS,
    WAKE_NAMES_PER_NOTE,
    Config,
)
from hyperhive.config_repo import (
    approve_proposal,
    diff_proposal,
    fetch_proposal,
    has_proposal,
    mark_denied,
    mark_deployed,
    mark_failed,
    read_proposed_config,
    record_proposal,
    recorded_outcome,
)
from hyperhive.containers import (
    AgentSpec,
    Backend,
    Containers,
    NspawnBackend,
    ProcessBackend,
    default_harness_command,
)
from hyperhive.disk import DiskUsage, Reclaimed, rotate_log, tree_bytes
from hyperhive.duties import (
    Duties,
    question_announcer,
    reminder_announcer,
    reminder_hand_over,
    schedule_announcer,
)
from hyperhive.envfile import credentials_warning
from hyperhive.errors import DiskFull, RequestRefused
from hyperhive.events import EventHub
from hyperhive.journal import OperationKind, crash_point, sql_begin, sql_end, sql_unfinished
from hyperhive.kinds import ApprovalStatus, BackendName, Transient
from hyperhive.ledger import (
    BY_BUDGET,
    Budget,
    Ledger,
    Spend,
    Sums,
    budget_of,
    limit_reached,
    sql_record_crash,
    within_budget,
)
from hyperhive.names import (
    MANAGER,
    OPERATOR,
    InvalidAgentName,
    InvalidNodeName,
    parse_agent_name,
    parse_node_name,
)
from hyperhive.node_watch import NodeWatch
from hyperhive.nodes import Nodes
from hyperhive.protocol import (
    AgentInfo,
    ApprovalInfo,
    LogsReply,
    NodeView,
    QuestionInfo,
    RecentMessage,
    ScheduleInfo,
    StatsReply,
    Tombstone,
    TurnReport,
)
from hyperhive.protocol.event_payloads import (
    AgentPaused,
    AgentResumed,
    DiskUsageChanged,
    QuestionResolved,
    ScheduleChanged,
    SpendChanged,
)
from hyperhive.questions import QuestionBook, sql_close_for_purge
from hyperhive.registry import AgentRecord, AgentState, Registry
from hyperhive.reminders import ReminderBook, sql_drop_pending
from hyperhive.retention import sweep_events_db
from hyperhive.runtime import gather
from hyperhive.schedules import ScheduleBook, Spec, local_timezone, may_touch, sql_save_request
from hyperhive.shared_events import SharedEvents
from hyperhive.space import SpaceMonitor
from hyperhive.store import Conn, Database, is_disk_full
from hyperhive.supervision import Problems, agent_reporter

log = logging.getLogger("hyperhive")

#: An agent without ledger rows (one shared instance: a listing asks for thousands).
_NO_SUMS = Sums()


@attrs.frozen
class _ExtrasMemo:
    """:meth:`Hive.extras_from`'s last inputs and result."""

    spend: Spend
    usage: DiskUsage | None
    reminders: Mapping[str, int]
    targeting: Mapping[str, Iterable[Any]]
    extras: dict[str, dict[str, Any]]

    def same(
        self,
        spend: Spend,
        usage: DiskUsage | None,
        reminders: Mapping[str, int],
        targeting: Mapping[str, Iterable[Any]],
    ) -> bool:
        """The ledger's cached dicts and the disk measurement are new objects when they
        change (compared by identity); the reminder and schedule reads are compared."""
        return (
            all(a is b for a, b in zip(self.spend, spend, strict=True))
            and self.usage is usage
            and self.reminders == reminders
            and self.targeting == targeting
        )


class Hive:
    """The daemon's domain: its parts wired together, the operations on them, the read models.

    Knows nothing of sockets' dispatch or the dashboard: :class:`hyperhive.api.Api` and
    :mod:`hyperhive.web` are built on top of it by :mod:`hyperhive.supervisor`.
    """

    def __init__(
        self,
        config: Config,
        db: Database,
        *,
        serve_agent_socket: Callable[..., Awaitable[None]],
    ) -> None:
        self.config = config
        self.db = db
        self.started_at = time.time()
        self.events = EventHub()
        #: What is wrong with the daemon's own parts (not with one agent), for ``status``.
        self.problems = Problems(self.events)
        self.space = SpaceMonitor(config.paths.state_dir, config.min_free, self.events)
        #: The last :meth:`measure_disk_usage` (empty until the first).
        self.disk_usage: DiskUsage | None = None
        #: Each tombstone's (record's updated_at, when measured on trio's clock, size, newest
        #: modification): a listing walks a kept directory at most every TOMBSTONE_SIZE_SECONDS.
        self._tombstone_sizes: dict[str, tuple[float, float, int, float]] = {}
        #: :meth:`extras_from`'s inputs and result, for the next listing.
        self._last_extras: _ExtrasMemo | None = None
        db.on_disk_full = self.space.poke
        self.backend = resolve_backend(config.backend)
        self.seed_toml = seed_agent_toml(
            model=config.agent_model,
            cpu_quota=config.agent_cpu_quota,
            memory_max=config.agent_memory_max,
        )
        #: This daemon as a node of the hive: its heartbeat, the nodes' notifications.
        self.nodes = Nodes(db, config.node, clock=config.wall_clock)
        #: Every node's last read status (its agents are unreachable while it is not up).
        self.node_watch = NodeWatch(self.nodes, self.events, clock=config.wall_clock)
        self.registry = Registry(
            db,
            config.paths,
            self.events,
            backend=self.backend,
            serve_socket=serve_agent_socket,
            node=config.node,
            nodes=self.nodes,
            on_placed=self.placed,
        )
        #: Agents placed on this node by another (or revived there) to adopt, with their
        #: first start's verb; approvals whose outcome another node records, awaited here.
        self._placements: dict[str, str | None] = {}
        self._placements_changed = trio.Event()
        self._deploys: set[int] = set()
        #: What this node last wrote of its agents' facts, and what the others wrote of
        #: theirs (:meth:`share_facts`).
        self._published_facts: dict[str, SharedFacts] = {}
        self._remote_facts: dict[str, SharedFacts] = {}
        self._resolved_elsewhere: dict[int, trio.Event] = {}
        self.nodes.on("deploy", self._on_deploy_note)
        self.nodes.on("approval", self._on_approval_note)
        #: Agent views for listings and the dashboard (no file read per request).
        self.views = AgentViews(
            self.events,
            records=self.registry.live_records,
            read_facts=self.read_facts,
            build=self._agent_view,
        )
        self.broker = Broker(
            db,
            self.events,
            directory=self.registry.directory,
            allowed_recipients=self.registry.allowed_recipients,
            paused=self.registry.paused,
            parents=self.registry.parents,
            # A recipient on another node: its node is told to wake it (not on sqlite).
            remote=self.registry.is_remote,
            notify_wake=self._notify_wake if db.shared else None,
        )
        self.nodes.on("wake", self._on_wake)
        self.registry.on_remote_pause = self._remote_pause_changed
        #: This node's events to the other nodes' dashboards, theirs to this one's.
        self.shared_events = SharedEvents(db, self.events, self.nodes, clock=config.wall_clock)
        self.questions = QuestionBook(
            db,
            self.broker,
            self.events,
            known_agents=self.registry.known,
            clock=config.wall_clock,
            announce=question_announcer(self.nodes),
        )
        self.reminders = ReminderBook(
            db,
            self.broker,
            self.events,
            state_dir=config.paths.agent_state_dir,
            clock=config.wall_clock,
            retry_backoff=config.reminder_retry_backoff,
            announce=reminder_announcer(self.nodes),
            elsewhere=self._elsewhere,
            hand_over=reminder_hand_over(self.nodes),
        )
        self.approvals = ApprovalQueue(
            db,
            self.broker,
            self.events,
            executors={
                ApprovalKind.SPAWN: self._approved_spawn,
                ApprovalKind.APPLY_COMMIT: self._approved_apply_commit,
                ApprovalKind.SCHEDULE: self._approved_schedule,
            },
            on_deny={ApprovalKind.APPLY_COMMIT: self._denied_apply_commit},
            prechecks={ApprovalKind.SPAWN: self._check_spawn},
            node=config.node,
            on_resolved=self._tell_resolved,
        )
        self.schedules = ScheduleBook(
            db,
            self.broker,
            live=self.registry.live,
            timezone=config.timezone or local_timezone(),
            clock=config.wall_clock,
            on_change=lambda info: self.events.emit(ScheduleChanged(schedule=info)),
            announce=schedule_announcer(self.nodes),
        )
        #: The hive's singleton duties, run while this node holds their lock.
        self.duties = Duties(
            db,
            self.nodes,
            questions=self.questions,
            reminders=self.reminders,
            schedules=self.schedules,
            is_local=self.registry.is_local,
            clock=config.wall_clock,
        )
        self._deploy_locks: dict[str, trio.Lock] = {}
        #: Held while an apply_commit is recorded and its proposal fetched (per agent).
        self._fetch_locks: dict[str, trio.Lock] = {}
        #: The spend ledger: every turn's tokens and cost, per agent (hyperhive/ledger.py).
        self.ledger = Ledger(db, clock=config.wall_clock)
        #: Each agent's ``[budget]``, read from its applied agent.toml when first needed.
        self._budgets: dict[str, BudgetSettings] = {}
        backends = config.container_backends
        self.containers = Containers(
            dict(backends) if backends is not None else real_backends(config),
            paths=config.paths,
            registry=self.registry,
            broker=self.broker,
            events=self.events,
            spec_for=self._spec_for,
            report_for=lambda name: agent_reporter(self.registry, self.broker, name),
            stop_on_exit=config.stop_agents_on_exit,
            clock=config.wall_clock,
            restart_backoff=config.restart_backoff,
            on_crash=sql_record_crash,
        )

    def _notify_wake(self, conn: Conn, names: list[str]) -> None:
        """(In the transaction) the nodes of ``names`` wake their parked receivers: one
        notification per ``WAKE_NAMES_PER_NOTE`` names (a broadcast's hundreds fit a few)."""
        for start in range(0, len(names), WAKE_NAMES_PER_NOTE):
            self.nodes.notify(conn, "wake", agents=names[start : start + WAKE_NAMES_PER_NOTE])

    def _on_wake(self, data: dict[str, Any]) -> None:
        """Another node committed something for agents of this one (``Broker.wake``)."""
        agents = data.get("agents")
        if data.get("from") == self.nodes.name or not isinstance(agents, list):
            return
        for agent in agents:
            if isinstance(agent, str) and self.registry.is_local(agent):
                self.broker.wake(agent)

    def _remote_pause_changed(self, name: str) -> None:
        """Another node paused or resumed ``name``: its parked receivers look again, and a
        resume starts its no-progress count over here too (where its turns are reported)."""
        if not self.registry.paused(name):
            self.ledger.note_resumed(name)
        self.broker.pause_changed(name)

    def _elsewhere(self, name: str) -> bool:
        """Whether ``name``'s files (its state dir) are on another node."""
        try:
            return self.registry.get(name).node != self.registry.node
        except RequestRefused:
            return False

    def refuse_if_disk_full(self, exc: OSError) -> None:
        """A file write that failed for lack of space is a refusal (``disk full: …``)."""
        if is_disk_full(exc):
            self.space.poke()
            what = exc.filename or f"a file in {self.config.paths.state_dir}"
            raise DiskFull(f"disk full: {what} could not be written") from None

    def problems_now(self) -> list[str]:
        """Everything wrong with the daemon itself: failed parts, low space, a full disk."""
        problems = self.problems.list()
        low = self.space.problem()
        if low is not None:
            problems.append(low)
        if self.db.full:
            problems.append(
                f"disk full: writes to {self.config.paths.broker_db} are refused until "
                "space is freed; reads go on working"
            )
        return problems

    async def _spec_for(self, name: str) -> AgentSpec:
        """What the agent's container runs, from the applied config (refused when invalid)."""
        record = self.registry.get(name)
        paths = self.config.paths
        settings = await load_applied_config(self.config.paths.applied_dir(name))
        return AgentSpec(
            name=name,
            role=record.role,
            socket_dir=paths.socket_dir(name),
            state_dir=paths.agent_state_dir(name),
            claude_dir=paths.claude_dir(name),
            log_file=self.config.paths.container_log(name),
            command=self.config.harness_command or default_harness_command(),
            env={**settings.env, **extra_mcp_env(settings), **session_env(settings)},
            cpu_quota=settings.cpu_quota,
            memory_max=settings.memory_max,
            agents_dir=self.config.paths.proposed_root if name == MANAGER else None,
        )

    # ------------------------------------------------------------ operations

    def _new_agent_name(self, name: str) -> str:
        try:
            name = parse_agent_name(name)
        except InvalidAgentName as exc:
            raise RequestRefused(str(exc)) from None
        if name in self.registry.live():
            raise RequestRefused(f"an agent named {name!r} already exists")
        return name

    async def request_spawn(
        self, name: str, description: str | None, requested_by: str, node: str | None = None
    ) -> ApprovalInfo:
        name = self._new_agent_name(name)
        if name in self.registry.known():
            raise RequestRefused(f"{name!r} is a tombstone with kept state: revive it instead")
        # The node asked for is checked now and recorded with the request: whichever node
        # approves it places the agent there (none asked: placed when approved).
        wanted = None if node is None else await self.place(node)

        def attach(conn: Conn, info: ApprovalInfo, created: bool) -> None:
            if created:
                sql_set_node(conn, info.id, wanted)

        return await self.approvals.request(
            name,
            ApprovalKind.SPAWN,
            requested_by=requested_by,
            description=description,
            attach=attach if wanted is not None else None,
        )

    async def revive(self, name: str) -> ApprovalInfo:
        record = self.registry.get(name)
        if record.state != AgentState.DESTROYED:
            raise RequestRefused(f"{name} is not destroyed; nothing to revive")
        return await self.approvals.request(
            name, ApprovalKind.SPAWN, requested_by=OPERATOR, description="revive kept state"
        )

    async def request_apply_commit(
        self, agent: str, commit_ref: str, description: str | None
    ) -> ApprovalInfo:
        record = self.registry.get(agent)
        if record.state == AgentState.DESTROYED:
            raise RequestRefused(f"{agent} is destroyed")
        # The approval is listed (and may be approved) as soon as it is recorded, before its
        # proposal is fetched: an approval waits for this lock (see _approved_apply_commit).
        async with self._fetch_lock(agent):
            info = await self.approvals.request(
                agent,
                ApprovalKind.APPLY_COMMIT,
                requested_by=MANAGER,
                commit_ref=check_commit_ref(commit_ref),
                description=description,
            )
            if info.fetched_sha is not None:
                return info  # the same request again: already fetched and tagged
            # Fetch into the applied repo and tag proposal/<id>: from here on the proposal
            # is immutable, whatever the manager does to its proposed repo.
            try:
                sha = await fetch_proposal(
                    await proposed_repo(self.config.paths, agent),
                    self.config.paths.applied_dir(agent),
                    info.commit_ref or commit_ref,
                    info.id,
                )
            except RequestRefused as exc:
                await self.approvals.fail(info.id, str(exc))
                raise
            # The approved agent.toml goes into the database too: the agent's node, if
            # another, deploys it from there (git repos are not shared between nodes).
            text: str | None = None
            try:
                text = await read_proposed_config(self.config.paths.applied_dir(agent), info.id)
            except RequestRefused as exc:
                if not self.registry.is_local(agent):
                    await self.approvals.fail(info.id, str(exc))
                    raise
            return await self.approvals.set_fetched_sha(info.id, sha, agent_toml=text)

    def _fetch_lock(self, agent: str) -> trio.Lock:
        return self._fetch_locks.setdefault(agent, trio.Lock())

    def _deploy_lock(self, agent: str) -> trio.Lock:
        return self._deploy_locks.setdefault(agent, trio.Lock())

    async def _approved_apply_commit(self, approval: ApprovalInfo) -> None:
        """Fast-forward applied main to the proposal, rebuild; tag deployed or failed."""
        agent, applied = approval.agent, self.config.paths.applied_dir(approval.agent)
        async with self._fetch_lock(agent):
            pass  # an approval made while its proposal was still being fetched waits for it
        if not self.registry.is_local(agent):
            await self._deploy_elsewhere(approval)  # its node deploys it and records that
        async with self._deploy_lock(agent):
            if not await has_proposal(applied, approval.id):
                # Fetched on the manager's node: the proposal comes through the database.
                sha, text = await self._approved_config(approval.id)
                await record_proposal(applied, approval.id, text, sha)
            previous: str | None = None
            # Carried out again after a crash: an outcome already tagged is the outcome.
            outcome = await recorded_outcome(applied, approval.id)
            if outcome is not None:
                await self.registry.reload_config(agent)
                if outcome[0] == "failed":
                    raise RequestRefused(outcome[1])
                return
            try:
                previous = await approve_proposal(applied, approval.id)
                crash_point("apply-commit-approved")
                # Validate before touching the agent: a bad config leaves it running as it is.
                config = parse_agent_config(await read_proposed_config(applied, approval.id))
                await self._deploy(agent, config)
                crash_point("apply-commit-rebuilt")
                await mark_deployed(applied, approval.id)
            except (RequestRefused, OSError) as exc:
                await mark_failed(applied, approval.id, previous, str(exc))
                await self.registry.reload_config(agent)
                raise RequestRefused(str(exc)) from None

    async def _deploy(self, agent: str, config: AgentConfig) -> None:
        await self.registry.set_model(agent, config.model)
        await self.registry.reload_config(agent)
        self._budgets[agent] = config.budget
        await self.lift_budget_pauses([agent])
        record = self.registry.get(agent)
        if record.backend != "external" and record.state != AgentState.DESTROYED:
            await self.containers.request(agent, "rebuild")

    async def _denied_apply_commit(self, approval: ApprovalInfo) -> None:
        await mark_denied(self.config.paths.applied_dir(approval.agent), approval.id, approval.note)

    def _check_spawn(self, approval: ApprovalInfo) -> None:
        if approval.agent in self.registry.live():
            raise RequestRefused(f"an agent named {approval.agent!r} already exists")

    async def _approved_spawn(self, approval: ApprovalInfo) -> None:
        # Idempotent: after a crash it finishes whatever part of the spawn happened.
        requested_by = await self.db.transaction(
            lambda conn: conn.execute(
                "SELECT requested_by FROM approvals WHERE id = ?", (approval.id,)
            ).fetchone()[0]
        )
        # Spawned at a lead's request: the lead's child (while the lead is live), else the
        # manager's.
        live = self.registry.live()
        parent = requested_by if requested_by in live and requested_by != MANAGER else MANAGER
        # On the node the request named, else placed now (a tombstone stays on its node).
        wanted = await self.db.transaction(lambda conn: sql_node(conn, approval.id))
        node = None if approval.agent in self.registry.known() else await self.place(wanted)
        await self._create(approval.agent, parent=parent, node=node)

    # ------------------------------------------------------------ nodes: placement, deploys

    async def place(self, node: str | None) -> str:
        """The node a new agent goes to: ``node`` (a valid, known node name), else this one
        on a store no other node shares, else the one up with the fewest live agents."""
        if node is not None:
            try:
                node = parse_node_name(node)
            except InvalidNodeName as exc:
                raise RequestRefused(str(exc)) from None
        return await self.nodes.place(node)

    def placed(self, name: str, first_start: str | None) -> None:
        """(From :meth:`Registry.follow`, synchronously.) Another node placed ``name``,
        revived it, or it is this node's and not served yet: :meth:`serve_placement`
        adopts it (an agent of this node) or seeds its proposed repo (the manager's node)."""
        self._placements[name] = self._placements.get(name) or first_start
        self._placements_changed.set()

    def _on_deploy_note(self, data: dict[str, Any]) -> None:
        approval_id = data.get("id")
        if data.get("node") == self.nodes.name and isinstance(approval_id, int):
            self._deploys.add(approval_id)
            self._placements_changed.set()

    def _on_approval_note(self, data: dict[str, Any]) -> None:
        approval_id = data.get("id")
        if isinstance(approval_id, int):
            event = self._resolved_elsewhere.pop(approval_id, None)
            if event is not None:
                event.set()

    def _tell_resolved(self, conn: Conn, info: ApprovalInfo) -> None:
        """(In the transaction recording a decision.) Tell the nodes waiting for it."""
        if self.nodes.shared:
            self.nodes.notify(conn, "approval", id=info.id)

    async def serve_placement(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Adopt the agents other nodes place on this one, seed the proposed repos of
        those placed elsewhere (on the manager's node), and deploy the apply_commits
        approved on other nodes for this node's agents. At start: those placed or
        approved while this node was away. Nothing to do on a store no other node shares."""
        if self.nodes.shared:
            for record in self.registry.all():
                if record.state == AgentState.DESTROYED or not self.registry.is_local(record.name):
                    continue
                applied = self.config.paths.applied_dir(record.name) / ".git"
                if record.transient == Transient.SPAWNING or not await trio.Path(applied).exists():
                    self.placed(record.name, "spawned")
            self._deploys.update(
                await self.db.transaction(lambda conn: sql_deploys_for(conn, self.nodes.name))
            )
            self._placements_changed.set()
        task_status.started()
        while True:
            await self._placements_changed.wait()
            self._placements_changed = trio.Event()
            placements, self._placements = self._placements, {}
            deploys, self._deploys = sorted(self._deploys), set()
            for name, first_start in placements.items():
                try:
                    await self._adopt(name, first_start)
                except (RequestRefused, OSError) as exc:
                    log.error("adopting %s placed on this node failed: %s", name, exc)
            for approval_id in deploys:
                try:
                    await self.approvals.resume(approval_id)
                except RequestRefused as exc:
                    log.warning("deploying approval %d here: %s", approval_id, exc)

    async def _adopt(self, name: str, first_start: str | None) -> None:
        """An agent another node placed here: its dirs, repos, socket, model, container
        (as :meth:`_create` makes them for one of its own). On the manager's node, one
        placed elsewhere: its proposed repo (the manager edits it in ``/agents``)."""
        if name not in self.registry.known():
            return
        record = self.registry.get(name)
        if record.state == AgentState.DESTROYED:
            return
        paths = self.config.paths
        if not self.registry.is_local(name):
            if self.registry.is_local(MANAGER) and first_start is not None:
                await prepare_agent_repos(paths, name, self.seed_toml)
            return
        self._budgets.pop(name, None)
        await self.registry.make_dirs(name)
        await prepare_agent_repos(paths, name, self.seed_toml)
        await self.registry.bind(name)
        await self._start_created(self.registry.get(name), first_start)

    async def _deploy_elsewhere(self, approval: ApprovalInfo) -> None:
        """An apply_commit of an agent of another node: ask that node to deploy it (it
        reads the approved agent.toml from the database and records the outcome on the
        approval); :class:`Delegated` makes the approval wait for that outcome."""
        node = self.registry.get(approval.agent).node

        def tx(conn: Conn) -> None:
            sql_set_deploy_node(conn, approval.id, node)
            self.nodes.notify(conn, "deploy", id=approval.id, node=node)

        await self.db.transaction(tx)
        raise Delegated(node, functools.partial(self._outcome_from, approval.id, node))

    async def _outcome_from(self, approval_id: int, node: str) -> ApprovalInfo:
        """The approval once ``node`` recorded its outcome; still pending (its note saying
        where it is being deployed) after ``DEPLOY_WAIT_SECONDS``."""
        deadline = trio.current_time() + DEPLOY_WAIT_SECONDS
        while True:
            event = self._resolved_elsewhere.setdefault(approval_id, trio.Event())
            info = await self.approvals.get(approval_id)
            remaining = deadline - trio.current_time()
            if info.status != ApprovalStatus.PENDING or remaining <= 0:
                self._resolved_elsewhere.pop(approval_id, None)
                if info.status != ApprovalStatus.PENDING:
                    return info
                return attrs.evolve(info, note=f"deploying on node {node}")
            # The notification wakes it; a look every second in case one went missing.
            with trio.move_on_after(min(remaining, 1.0)):
                await event.wait()

    async def _approved_config(self, approval_id: int) -> tuple[str, str]:
        """``(sha, agent_toml)`` of an apply_commit from the database, once the manager's
        node has fetched its proposal (waits up to ``DEPLOY_WAIT_SECONDS``)."""
        deadline = trio.current_time() + DEPLOY_WAIT_SECONDS
        while True:
            sha, text = await self.db.transaction(
                lambda conn: sql_approved_config(conn, approval_id)
            )
            if sha is not None and text is not None:
                return sha, text
            if (await self.approvals.get(approval_id)).status != ApprovalStatus.PENDING:
                raise RequestRefused(f"approval {approval_id} was decided meanwhile")
            if trio.current_time() >= deadline:
                raise RequestRefused(
                    f"the proposal of approval {approval_id} did not reach the database from "
                    "the manager's node; approve it again once it has"
                )
            await trio.sleep(0.2)

    async def proposal_diff(self, approval: ApprovalInfo) -> str:
        """An apply_commit's diff: from the applied ``main`` to its proposal where the
        proposal is tagged (the manager's node, or where it was deployed); elsewhere from
        the database, the agent.toml of the last apply_commit approved for the agent (or
        the seed) to the proposed one."""
        applied = self.config.paths.applied_dir(approval.agent)
        if not self.nodes.shared or await has_proposal(applied, approval.id):
            return await diff_proposal(applied, approval.id)

        def read(conn: Conn) -> tuple[str | None, str | None, tuple[int, str] | None]:
            sha, text = sql_approved_config(conn, approval.id)
            return sha, text, sql_last_approved_config(conn, approval.agent, approval.id)

        sha, text, base = await self.db.transaction(read)
        if sha is None or text is None:
            raise RequestRefused(
                f"approval {approval.id} has no proposal recorded yet (the manager's node "
                "fetches it)"
            )
        before, label = (self.seed_toml, "seed") if base is None else (base[1], f"#{base[0]}")
        lines = difflib.unified_diff(
            before.splitlines(keepends=True),
            text.splitlines(keepends=True),
            fromfile=f"a/agent.toml (approved {label})",
            tofile=f"b/agent.toml (proposal {sha[:12]})",
        )
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)

    # ------------------------------------------------------------ scheduled prompts

    async def request_schedule(self, requester: str, spec: Spec) -> ApprovalInfo:
        """An agent's (or the manager's) schedule: an approval of kind ``schedule``."""

        def attach(conn: Conn, info: ApprovalInfo, created: bool) -> None:
            if not created:
                raise RequestRefused(
                    f"your schedule request #{info.id} is still waiting for the operator; "
                    "ask again once it is decided"
                )
            sql_save_request(conn, info.id, spec)

        return await self.approvals.request(
            requester,
            ApprovalKind.SCHEDULE,
            requested_by=requester,
            description=spec.summary(),
            attach=attach,
        )

    async def _approved_schedule(self, approval: ApprovalInfo) -> None:
        # Idempotent: a schedule made from this approval already is the outcome.
        await self.schedules.create_from_request(approval.agent, approval.id)

    def in_subtree(self, root: str) -> Callable[[str], bool]:
        """Whether a name is ``root`` or below it in the hierarchy (``hyperhive.topology``)."""
        parents = self.registry.parents()
        return functools.partial(topology.in_subtree, parents, root)

    def schedule_check(self, caller: str) -> Callable[[ScheduleInfo], None]:
        """Refuses a schedule ``caller`` may not touch (see :func:`schedules.may_touch`)."""
        in_subtree = self.in_subtree(caller)

        def check(info: ScheduleInfo) -> None:
            if not may_touch(caller, info, in_subtree):
                raise RequestRefused(
                    f"schedule {info.id} belongs to {info.owner} and targets agents outside "
                    f"your subtree; you may touch only your own schedules and those for "
                    "yourself or the agents below you"
                )

        return check

    async def spawn(
        self, name: str, *, backend: str | None = None, node: str | None = None
    ) -> AgentRecord:
        """Operator's direct spawn: no approval; idempotent for an existing agent.

        ``node``: where it goes (default: :meth:`place`'s choice)."""
        try:
            name = parse_agent_name(name)
        except InvalidAgentName as exc:
            raise RequestRefused(str(exc)) from None
        if backend is not None:
            backend = resolve_backend(backend)
        placed = None if name in self.registry.known() else await self.place(node)
        return await self._create(name, backend=backend, node=placed)

    async def _create(
        self,
        name: str,
        *,
        role: str = "agent",
        backend: str | None = None,
        parent: str = MANAGER,
        node: str | None = None,
    ) -> AgentRecord:
        """Register (or revive) an agent and hand it to its supervisor, which starts it.

        Idempotent, and ordered so that a registered agent always has its directories and
        repos: they are made (or found) first, then the registry row is written.

        ``node``: where a new agent goes (default: this node; a known one stays on its
        own). An agent of another node gets its row only: that node learns of it and
        makes its directories, repos and socket and starts it (:meth:`placed`), and ends
        the ``spawning`` it shows until then.
        """
        self._budgets.pop(name, None)  # read again from its (possibly new) applied config
        before = self.registry.get(name).state if name in self.registry.known() else None
        where = self.registry.get(name).node if before is not None else node
        if where is not None and where != self.registry.node:
            if self.registry.is_local(MANAGER):
                # The manager edits every agent's proposed repo: it lives on its node.
                await prepare_agent_repos(self.config.paths, name, self.seed_toml)
            return await self.registry.register(
                name,
                role=role,
                backend=backend,
                transient=Transient.SPAWNING,
                parent=parent,
                node=where,
            )
        first_start = "revived" if before == AgentState.DESTROYED else None
        if before is None:
            first_start = "spawned"
        await self.registry.make_dirs(name)
        await prepare_agent_repos(self.config.paths, name, self.seed_toml)
        crash_point("spawn-prepared")
        record = await self.registry.register(
            name, role=role, backend=backend, transient=Transient.SPAWNING, parent=parent
        )
        return await self._start_created(record, first_start)

    async def _start_created(self, record: AgentRecord, first_start: str | None) -> AgentRecord:
        """A registered agent of this node (dirs and repos made): its config and model read,
        handed to its supervisor; the ``spawning`` transient ended."""
        name = record.name
        try:
            crash_point("spawn-registered")
            await self.registry.reload_config(name)
            if not self.config.paths.model_file(name).exists():
                config = await load_applied_config(self.config.paths.applied_dir(name))
                await self.registry.set_model(name, config.model)
            if record.backend != BackendName.EXTERNAL:
                # Its runner ends the spawning transient (and shows starting while it starts).
                await self.containers.ensure(name, first_start=first_start)
        finally:
            if self.registry.get(name).transient == Transient.SPAWNING:
                with trio.CancelScope(shield=True):
                    await self.registry.update(name, transient=None, transient_since=None)
        return self.registry.get(name)

    async def lifecycle(self, verb: str, name: str) -> None:
        record = self.registry.get(name)
        if record.state == AgentState.DESTROYED:
            raise RequestRefused(f"{name} is destroyed; revive it first")
        if record.backend == "external":
            raise RequestRefused(
                f"cannot {verb} {name}: the external backend starts nothing; "
                f"run its harness by hand against {self.config.paths.agent_socket(name)}"
            )
        await self.containers.request(name, "rebuild" if verb == "update" else verb)

    async def pause(self, name: str, reason: str, by: str) -> None:
        """Pause an agent: from now on the broker hands it no messages, so it runs no turns
        (a turn under way finishes); what is sent to it waits in its inbox, unacked.

        Persisted (it survives restarts of the daemon and of the agent), allowed on a
        stopped agent, idempotent (pausing a paused agent keeps the first pause). Publishes
        ``agent_paused``; a pause by anyone but the operator also tells the manager.
        """
        reason = check_pause_reason(reason)
        record = self.registry.get(name)
        if record.state == AgentState.DESTROYED:
            raise RequestRefused(f"{name} is destroyed; nothing to pause")
        if record.paused_at is not None:
            return
        now = self.config.wall_clock()
        tell = by != OPERATOR

        def tx(conn: Conn, outbox: Outbox) -> None:
            if tell:
                outbox.insert([system_messages.agent_paused(name, reason, by)])

        async def with_the_row(
            job: Callable[[Conn], tuple[None, list[SentMessage]]],
        ) -> tuple[None, list[SentMessage]]:
            _, result = await self.registry.set_paused(name, (now, reason, by), also=job)
            assert result is not None
            return result

        await self.broker.transaction(tx, now=now, run=with_the_row)
        self.broker.pause_changed(name)
        self.events.emit(AgentPaused(name=name, reason=reason, by=by, paused_at=now))

    async def resume(self, name: str, by: str) -> None:
        """Resume a paused agent (idempotent): a parked ``recv`` looks again, so what waits
        in its inbox is handed out at once, in order (with nothing waiting it returns empty
        at once: the receiver learns of the resume)."""
        record = self.registry.get(name)
        if record.paused_at is None:
            return
        await self.registry.set_paused(name, None)
        self.broker.pause_changed(name)
        self.ledger.note_resumed(name)
        self.events.emit(AgentResumed(name=name, by=by))

    async def destroy(self, name: str, *, purge: bool) -> None:
        record = self.registry.get(name)
        if name == MANAGER:
            raise RequestRefused("the manager cannot be destroyed or purged")
        if purge:
            await self._purge(name)
            return
        if record.state == AgentState.DESTROYED:
            raise RequestRefused(f"{name} is already destroyed")
        now = time.time()
        operation = await self.db.transaction(
            lambda conn: sql_begin(conn, OperationKind.DESTROY, name, now, node=self.config.node)
        )
        crash_point("destroy-claimed")
        try:
            await self._finish_destroy(name, operation.id)
        except (RequestRefused, OSError):
            # Nothing was recorded (the container could not be destroyed): it stays live.
            await self.db.transaction(functools.partial(sql_end, operation_id=operation.id))
            raise

    async def _purge(self, name: str) -> None:
        """Purge wipes state for good; it only takes a tombstone, never a live agent. What
        waited for it goes with it, in the transaction that deletes its row, so an agent
        made later with the same name starts empty: the questions it asked are closed (no
        one is left to hear the answer) and those it was asked are closed too, their askers
        told; the messages waiting for it and its pending reminders are deleted; the
        schedules it owns end, and it is taken off the others' targets."""
        now = time.time()

        Ended = tuple[list[QuestionInfo], list[ScheduleInfo]]

        def tx(conn: Conn, outbox: Outbox) -> Ended:
            closed = sql_close_for_purge(conn, outbox, name, now)
            sql_drop_inbox(conn, name)
            sql_drop_pending(conn, name)
            return closed, self.schedules.forget(conn, name)

        Job = Callable[[Conn], tuple[Ended, list[SentMessage]]]

        async def with_the_row(job: Job) -> tuple[Ended, list[SentMessage]]:
            result = await self.registry.purge(name, also=job)
            assert result is not None
            return result

        closed, schedules = await self.broker.transaction(tx, now=now, run=with_the_row)
        for question in closed:
            self.events.emit(QuestionResolved(question=question))
        self.schedules.forgotten(schedules)

    async def _finish_destroy(self, name: str, operation_id: int) -> None:
        """Stop the container, then in one transaction: the row DESTROYED, the agent's
        pending approvals failed, the journal entry ended. Idempotent."""
        record = self.registry.get(name)
        if record.state != AgentState.DESTROYED and record.backend != "external":
            await self.containers.request(name, "destroy")
            crash_point("destroy-stopped")
            record = self.registry.get(name)
        now = time.time()

        def tx(conn: Conn, outbox: Outbox) -> list[ApprovalInfo]:
            sql_end(conn, operation_id)
            return sql_fail_pending(conn, outbox, name, "agent destroyed", now)

        Job = Callable[[Conn], tuple[list[ApprovalInfo], list[SentMessage]]]

        async def with_the_row(job: Job) -> tuple[list[ApprovalInfo], list[SentMessage]]:
            _, result = await self.registry.destroy(name, also=job)
            assert result is not None
            return result

        live = record.state != AgentState.DESTROYED
        failed = await self.broker.transaction(tx, now=now, run=with_the_row if live else None)
        self.approvals.resolved(failed)

    async def finish_interrupted(self) -> None:
        """Finish every decision the previous daemon left half done (see hyperhive.journal).

        Runs at start-up, before the operator's socket listens.
        """
        # Another node's approvals being carried out are its own to finish.
        mine = self.config.node if self.db.shared else None
        unfinished = functools.partial(sql_unfinished, node=mine)
        for operation in await self.db.transaction(unfinished):
            log.warning(
                "finishing %s of %s interrupted by the last shutdown",
                operation.kind,
                operation.agent,
            )
            if operation.kind == OperationKind.APPROVE:
                assert operation.approval_id is not None
                await self.approvals.resume(operation.approval_id)
            elif operation.kind == OperationKind.PURGE:
                await self.registry.finish_purge(operation.agent, operation.id)
            elif operation.agent in self.registry.known():
                try:
                    await self._finish_destroy(operation.agent, operation.id)
                except (RequestRefused, OSError) as exc:
                    log.error("destroying %s failed again: %s", operation.agent, exc)
                    await self.db.transaction(functools.partial(sql_end, operation_id=operation.id))
            else:
                await self.db.transaction(functools.partial(sql_end, operation_id=operation.id))

    async def tombstones(self) -> list[Tombstone]:
        """Destroyed agents with what they keep on disk. The sizes are measured off the event
        loop, all in one thread hop, and kept for :data:`TOMBSTONE_SIZE_SECONDS` (or until the
        record changes): a listing never walks every kept directory."""
        dead = self.registry.destroyed()
        now = trio.current_time()
        sizes = self._tombstone_sizes
        stale = [
            r
            for r in dead
            if (cached := sizes.get(r.name)) is None
            or cached[0] != r.updated_at
            or now - cached[1] >= TOMBSTONE_SIZE_SECONDS
        ]
        if stale:
            measure = self.registry.tombstone_size
            measured = await trio.to_thread.run_sync(lambda: [measure(r.name) for r in stale])
            for record, (size, modified) in zip(stale, measured, strict=True):
                sizes[record.name] = (record.updated_at, now, size, modified)
        names = {r.name for r in dead}
        for name in [n for n in sizes if n not in names]:
            del sizes[name]  # revived or purged
        return [tombstone(r.name, sizes[r.name][2], sizes[r.name][3]) for r in dead]

    async def sweep_events(self) -> Reclaimed:
        """Events retention for every agent's events db: rows deleted, bytes given back."""
        total = Reclaimed()
        config = self.config
        for record in self.registry.all():
            path = config.paths.events_db(record.name)
            sweep = functools.partial(
                sweep_events_db,
                path,
                time.time(),
                max_age=config.events_max_age_seconds,
                keep=config.events_keep,
            )
            try:
                total += await trio.to_thread.run_sync(sweep)
            except sqlite3.Error as exc:
                log.warning("events retention for %s failed: %s", record.name, exc)
        return total

    async def retention(self) -> tuple[Reclaimed, Reclaimed]:
        """One retention pass: acked messages of broker.sqlite, then the agents' events dbs."""
        messages = await self.broker.vacuum(self.config.retention_seconds)
        return messages, await self.sweep_events()

    async def rotate_logs(self) -> int:
        """Rotate each live agent's container log that is over the cap; how many were."""
        policy = self.config.log_policy
        rotated = 0
        for record in self.registry.all():
            if record.state == AgentState.DESTROYED:
                continue
            log_file = self.config.paths.container_log(record.name)
            try:
                rotated += await trio.to_thread.run_sync(rotate_log, log_file, policy)
            except OSError as exc:
                log.warning("log rotation for %s failed: %s", record.name, exc)
        return rotated

    async def measure_disk_usage(self) -> DiskUsage:
        """The state dir's size and each agent's (a tree walk, off the event loop)."""
        paths = self.config.paths
        names = [r.name for r in self.registry.live_records()]

        def measure() -> DiskUsage:
            agents = {
                name: tree_bytes(paths.agent_dir(name)) + tree_bytes(paths.proposed_dir(name))
                for name in names
            }
            return DiskUsage(total=tree_bytes(paths.state_dir), agents=agents)

        usage = await trio.to_thread.run_sync(measure)
        if usage != self.disk_usage:
            self.disk_usage = usage
            self.events.emit(DiskUsageChanged(total=usage.total, agents=usage.agents))
        return usage

    async def operator_inbox(self, limit: int) -> list[RecentMessage]:
        return await self.broker.read_view(OPERATOR, limit)

    async def logs(self, name: str, lines: int) -> LogsReply:
        record = self.registry.get(name)
        if not 1 <= lines <= MAX_LOG_LINES:
            raise RequestRefused(f"lines must be between 1 and {MAX_LOG_LINES}")
        if record.backend == "external":
            raise RequestRefused(
                f"no logs for {name}: the external backend does not run it, so its output "
                "is wherever its harness was started by hand"
            )
        return LogsReply(lines=await trio.to_thread.run_sync(self.containers.logs, name, lines))

    # ------------------------------------------------------------ spend ledger

    async def turn_reported(self, agent: str, report: TurnReport) -> bool:
        """Record a turn of ``agent`` in the ledger; False when it was recorded before."""
        found = await self.ledger.record(agent, report)
        if not found.recorded:
            return False
        ctx = (await self.ledger.spend())[2]
        self.events.emit(
            SpendChanged(
                name=agent,
                cost_today_usd=found.today.cost_usd,
                cost_total_usd=found.total.cost_usd,
                tokens_today=found.today.tokens,
                tokens_total=found.total.tokens,
                ctx_tokens=ctx.get(agent),
                hive_cost_today_usd=found.hive_today.cost_usd,
                hive_cost_total_usd=found.hive_total.cost_usd,
            )
        )
        settings = await self._budget_settings(agent)
        verdict = limit_reached(
            found,
            agent=budget_of(settings),
            hive=self.hive_budget(),
            no_progress_turns=settings.no_progress_turns,
        )
        if verdict is not None and not self.is_paused(agent):
            reason, by = verdict
            await self.pause(agent, reason, by)
            await self.broker.inject([system_messages.limit_reached(agent, reason, by)])
        return True

    def hive_budget(self) -> Budget:
        config = self.config
        return Budget(
            daily_usd=config.budget_daily_usd,
            total_usd=config.budget_total_usd,
            daily_tokens=config.budget_daily_tokens,
            total_tokens=config.budget_total_tokens,
        )

    async def _budget_settings(self, agent: str) -> BudgetSettings:
        """The agent's ``[budget]`` from its applied agent.toml (defaults if unreadable)."""
        cached = self._budgets.get(agent)
        if cached is None:
            try:
                cached = (await load_applied_config(self.config.paths.applied_dir(agent))).budget
            except (RequestRefused, OSError):
                cached = BudgetSettings()
            self._budgets[agent] = cached
        return cached

    async def lift_budget_pauses(self, names: Iterable[str] | None = None) -> list[str]:
        """Resume the agents paused by a budget that are within every limit again (after a
        deploy raised theirs, or at start-up with the daemon's options); returns them."""
        lifted = []
        for name in list(names) if names is not None else [r.name for r in self.registry.all()]:
            record = self.registry.get(name)
            if record.paused_at is None or record.paused_by != BY_BUDGET:
                continue
            today, total, hive_today, hive_total = await self.ledger.sums(name)
            agent = budget_of(await self._budget_settings(name))
            if within_budget(
                today, total, hive_today, hive_total, agent=agent, hive=self.hive_budget()
            ):
                await self.resume(name, BY_BUDGET)
                lifted.append(name)
        return lifted

    def is_paused(self, name: str) -> bool:
        """True while ``name`` is paused (False for a name the registry does not know)."""
        try:
            return self.registry.get(name).paused_at is not None
        except RequestRefused:
            return False

    async def stats(self, name: str | None) -> StatsReply:
        names = None if name is None else [name]
        if name is not None:
            self.registry.get(name)  # refuses an unknown name
        agents, hive, start, now = await self.ledger.stats(names)
        return StatsReply(agents=agents, hive=hive, day_start=start, generated_at=now)

    # ------------------------------------------------------------ read models

    async def agent_infos(self) -> list[AgentInfo]:
        unread = await self.broker.unread_by_recipient()
        return await self.views.infos(unread, await self.agent_extras())

    async def agent_extras(self) -> dict[str, dict[str, Any]]:
        """The fields of the agents' views that change without an event naming the agent
        (spend, pending reminders, schedules, disk usage): a few aggregate queries per
        request and the last disk measurement, no file read; JSON-ready values."""
        reads = await gather(
            {
                "spend": self.ledger.spend,
                "reminders": self.reminders.pending_by_agent,
                "targeting": self.schedules.targeting_all,
            }
        )
        return self.extras_from(reads["spend"], reads["reminders"], reads["targeting"])

    def extras_from(
        self,
        spend: Spend,
        reminders: Mapping[str, int],
        targeting: Mapping[str, Iterable[Any]],
    ) -> dict[str, dict[str, Any]]:
        """:meth:`agent_extras` from its reads (for a caller that made them with its own).

        The last result is given again while its inputs are the same (the ledger's cached
        sums, equal reminder and schedule reads, the same disk measurement): a listing of
        a thousand agents then builds no dict. Read it, never change it.
        """
        today, total, ctx = spend
        usage = self.disk_usage
        last = self._last_extras
        if last is not None and last.same(spend, usage, reminders, targeting):
            return last.extras
        disk = usage.agents if usage else {}
        extras: dict[str, dict[str, Any]] = {}
        none = _NO_SUMS
        for name in {*today, *total, *ctx, *reminders, *targeting, *disk}:
            extras[name] = {
                "cost_today_usd": today.get(name, none).cost_usd,
                "cost_total_usd": total.get(name, none).cost_usd,
                "ctx_tokens": ctx.get(name),
                "pending_reminders": reminders.get(name, 0),
                "schedules": list(targeting.get(name, [])),
                "disk_bytes": disk.get(name),
            }
        self._last_extras = _ExtrasMemo(spend, usage, reminders, targeting, extras)
        return extras

    async def agent_info(self, record: AgentRecord, unread: int | None = None) -> AgentInfo:
        if unread is None:
            unread = await self.broker.unread(record.name)
        view = self._agent_view(record, await self.views.facts(record.name))
        extra = (await self.agent_extras()).get(record.name, {})
        return attrs.evolve(view, unread=unread, **extra)

    def node_views(self) -> list[NodeView]:
        """The hive's nodes as last read (``hyperhive nodes``, the dashboard), each with
        its live agents."""
        return self.node_watch.views(self.registry.live_per_node())

    def read_facts(self, name: str) -> AgentFacts:
        """What an agent's files say, for its view (blocking: :class:`AgentViews` runs it in
        a worker thread, never per request); another node's agent: what its node shared
        (:meth:`share_facts`)."""
        if not self.registry.is_local(name):
            shared = self._remote_facts.get(name)
            return AgentFacts(
                model=shared.model if shared is not None else self.registry.model(name),
                # The link that leads to its node's dashboard.
                ui_url=f"/agent/{name}/",
                logged_in=shared is not None and shared.logged_in,
                harness_connected=shared is not None and shared.harness,
                lead=shared is not None and shared.lead,
                credentials_ok=shared is None or shared.credentials_ok,
            )
        return AgentFacts(
            model=self.registry.model(name),
            ui_url=self.registry.ui_url(name),
            logged_in=self.config.paths.credentials_file(name).is_file(),
        )

    async def share_facts(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """On a shared store, every ``NODE_HEARTBEAT_SECONDS``: what this node knows of its
        own agents (their model and login from their files, their harness connected, the
        lead role, the credentials check) written to ``agent_facts`` where it changed, and
        what the other nodes wrote read back for their agents' views here (the 2-s refresh
        of :class:`AgentViews` picks it up). Nothing on a store no other node shares."""
        task_status.started()
        if not self.nodes.shared:
            await trio.sleep_forever()
        while True:
            mine: dict[str, SharedFacts] = {}
            for record in self.registry.all():
                facts = self.views.cached_facts(record.name)
                if (
                    facts is None
                    or record.state == AgentState.DESTROYED
                    or not self.registry.is_local(record.name)
                ):
                    continue
                mine[record.name] = SharedFacts(
                    model=facts.model,
                    logged_in=facts.logged_in,
                    harness=self.registry.harnesses[record.name] > 0,
                    lead=self.registry.is_lead(record.name),
                    credentials_ok=self._agent_credentials_warning(record, facts) is None,
                )
            changed = {n: f for n, f in mine.items() if self._published_facts.get(n) != f}
            node, now = self.nodes.name, self.config.wall_clock()
            rows = await self.db.transaction(
                functools.partial(sql_share_facts, node=node, changed=changed, now=now)
            )
            self._published_facts.update(changed)
            self._remote_facts = rows
            await trio.sleep(NODE_HEARTBEAT_SECONDS)

    def _agent_view(self, record: AgentRecord, facts: AgentFacts) -> AgentInfo:
        """An agent's view from its record and facts; ``unread`` and the extras of
        :meth:`agent_extras` are left at their defaults (sans-IO)."""
        return AgentInfo(
            name=record.name,
            role=record.role,
            state=record.state,
            backend=record.backend,
            created_at=record.created_at,
            parent=self.registry.parent(record.name),
            model=facts.model,
            status_text=record.status_text,
            unread=0,
            harness_connected=self.registry.harnesses[record.name] > 0
            if facts.harness_connected is None
            else facts.harness_connected,
            transient=record.transient,
            transient_since=record.transient_since,
            pid=record.pid,
            warning="; ".join(
                w for w in (self._agent_credentials_warning(record, facts), record.warning) if w
            )
            or None,
            ui_url=facts.ui_url,
            paused_at=record.paused_at,
            paused_reason=record.paused_reason,
            paused_by=record.paused_by,
            lead=self.registry.is_lead(record.name) if facts.lead is None else facts.lead,
            node=record.node,
            node_status=self.node_watch.status(record.node),
        )

    def _agent_credentials_warning(
        self, record: AgentRecord, facts: AgentFacts | None = None
    ) -> str | None:
        if record.backend == "external" or record.state == AgentState.DESTROYED:
            return None  # an external agent's credentials are not ours to see
        if facts is None:
            facts = self.views.cached_facts(record.name)
        if facts is not None and facts.credentials_ok is not None:
            # Another node's agent: checked against that node's environment, there.
            return None if facts.credentials_ok else credentials_warning({}, False)
        if facts is None:
            logged_in = self.config.paths.credentials_file(record.name).is_file()
        else:
            logged_in = facts.logged_in
        return credentials_warning(os.environ, logged_in)

    def credentials_warning(self) -> str | None:
        """Which agents have no API key in the daemon's environment and no claude login."""
        missing = [r.name for r in self.registry.all() if self._agent_credentials_warning(r)]
        if not missing:
            return None
        return f"{', '.join(missing)}: {credentials_warning({}, False)}"

    def isolation(self) -> dict[str, bool]:
        """Which backends isolate their agents (the dashboard warns about those that do not)."""
        return {name: backend.isolated for name, backend in self.containers.backends.items()}


def extra_mcp_env(settings: AgentConfig) -> dict[str, str]:
    """The agent's extra MCP servers for its harness. Passed in the container's environment,
    which the agent cannot change, not in its writable state dir."""
    if not settings.extra_mcp_servers:
        return {}
    document = {**settings.mcp_config(), "allowedTools": settings.mcp_allowed_tools()}
    return {contract.EXTRA_MCP_ENV: json.dumps(document, separators=(",", ":"))}


def check_pause_reason(reason: str) -> str:
    """A pause's reason: one line of at most ``MAX_PAUSE_REASON`` characters (may be empty)."""
    reason = reason.strip()
    if len(reason) > MAX_PAUSE_REASON:
        raise RequestRefused(f"the pause reason is longer than {MAX_PAUSE_REASON} characters")
    if not reason.isprintable():
        raise RequestRefused("the pause reason holds control characters")
    return reason


def session_env(settings: AgentConfig) -> dict[str, str]:
    """How the harness keeps claude's session (agent.toml ``[session]``)."""
    return {contract.COMPACT_AT_PERCENT_ENV: str(settings.compact_at_percent)}


def real_backends(config: Config) -> dict[str, Backend]:
    policy = config.log_policy
    return {
        "process": ProcessBackend(log_policy=policy),
        "nspawn": NspawnBackend(log_policy=policy),
    }


def resolve_backend(name: str) -> str:
    """``auto`` is nspawn when it can run (binary present, root), else the process backend."""
    if name not in BACKENDS:
        raise RequestRefused(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    if name == "auto":
        return "nspawn" if NspawnBackend.available() else "process"
    return name


def tombstone(name: str, size: int, modified: float) -> Tombstone:
    return Tombstone(name=name, size_bytes=size, modified_at=modified or time.time())


@attrs.frozen
class SharedFacts:
    """What an agent's node knows of it and shares with the other nodes (``agent_facts``)."""

    model: str
    logged_in: bool
    harness: bool
    lead: bool
    credentials_ok: bool


def sql_share_facts(
    conn: Conn, node: str, changed: Mapping[str, SharedFacts], now: float
) -> dict[str, SharedFacts]:
    """Write ``node``'s ``changed`` facts; return those the other nodes wrote."""
    if changed:
        conn.executemany(
            "INSERT INTO agent_facts (name, node, model, logged_in, harness, lead, "
            "credentials_ok, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE "
            "SET node = excluded.node, model = excluded.model, logged_in = excluded.logged_in, "
            "harness = excluded.harness, lead = excluded.lead, "
            "credentials_ok = excluded.credentials_ok, at = excluded.at",
            [
                (n, node, f.model, f.logged_in, f.harness, f.lead, f.credentials_ok, now)
                for n, f in changed.items()
            ],
        )
    rows = conn.execute("SELECT * FROM agent_facts WHERE node != ?", (node,))
    return {
        row["name"]: SharedFacts(
            model=row["model"],
            logged_in=bool(row["logged_in"]),
            harness=bool(row["harness"]),
            lead=bool(row["lead"]),
            credentials_ok=bool(row["credentials_ok"]),
        )
        for row in rows
    }

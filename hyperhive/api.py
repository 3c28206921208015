"""What each socket's requests do: one dispatcher, the caller's identity from the socket.

Agent and manager sockets act as the agent the socket belongs to; only the host socket
carries operator authority. Nothing in a request names its caller.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import hyperhive
from hyperhive.broker import Outgoing, check_body, check_wake_label
from hyperhive.config import MAX_STATUS_TEXT, PROTOCOL_VERSION
from hyperhive.errors import RequestRefused
from hyperhive.hive import Hive
from hyperhive.kinds import AgentState, BackendChoice, ConnectionRole, PeerRole
from hyperhive.loose_ends import Books, cancel, collect
from hyperhive.names import MANAGER, OPERATOR, InvalidAgentName, parse_agent_name
from hyperhive.protocol import (
    Ack,
    AckReply,
    AddSchedule,
    AgentMetaReply,
    AgentReply,
    AgentsReply,
    AgentStatsReply,
    Answer,
    ApprovalReply,
    Approvals,
    ApprovalsReply,
    Approve,
    Ask,
    CancelLooseEnd,
    CancelQuestion,
    CancelReminder,
    CancelSchedule,
    Compact,
    Deny,
    Destroy,
    EditSchedule,
    Empty,
    FireScheduleNow,
    GetAgentMeta,
    GetLogs,
    GetLooseEnds,
    GetStats,
    Hello,
    HelloReply,
    HostAnswer,
    HostRequestSpawn,
    HostSend,
    HostStatus,
    HostStatusReply,
    IdReply,
    Inbox,
    Kill,
    List,
    ListContainers,
    ListNodes,
    ListSchedules,
    Logs,
    NodesReply,
    Pause,
    Pending,
    QuestionReply,
    Questions,
    QuestionsReply,
    Rebuild,
    Recent,
    RecentReply,
    Recv,
    RecvReply,
    Remind,
    ReminderReply,
    Reminders,
    RemindersReply,
    Reply,
    Request,
    RequestApplyCommit,
    RequestSchedule,
    RequestSpawn,
    Restart,
    Resume,
    RetryReminder,
    Revive,
    ScheduleInfo,
    ScheduleReply,
    SchedulesReply,
    Send,
    SendReply,
    SetModel,
    SetParent,
    SetStatus,
    Spawn,
    Start,
    Stats,
    Status,
    StatusReply,
    Tombstones,
    TombstonesReply,
    TurnReport,
    TurnReportReply,
    Update,
    Vacuum,
    VacuumReply,
    Wake,
    Watch,
    WatchReply,
)
from hyperhive.protocol.event_payloads import HarnessConnected, HarnessDisconnected
from hyperhive.remote import NodeCommands, forwarded_agent
from hyperhive.runtime import agent_ui
from hyperhive.schedules import (
    SOURCE_OPERATOR,
    Changes,
    check_added_targets,
    check_agent_cadence,
    may_see,
)
from hyperhive.server import Connection, Principal, SocketKind
from hyperhive.store import DatabaseFailed
from hyperhive.topology import in_subtree
from hyperhive.watch import Feed


def _name(raw: str, *, allow_manager: bool = True) -> str:
    try:
        return parse_agent_name(raw, allow_manager=allow_manager)
    except InvalidAgentName as exc:
        raise RequestRefused(str(exc)) from None


def _selection(names: list[str], verb: str) -> list[str]:
    """The agents a verb on several agents names: at least one, each a valid name, each
    once (in the order given). An empty selection is refused, never taken as "all"."""
    if not names:
        raise RequestRefused(f"{verb} needs at least one agent name (there is no 'all')")
    return list(dict.fromkeys(_name(n) for n in names))


#: The schedule verbs :meth:`Api._schedules` serves on every socket.
_SCHEDULE_VERBS = (EditSchedule, CancelSchedule, FireScheduleNow, ListSchedules)


class Api:
    def __init__(
        self, hive: Hive, *, dashboard_url: Callable[[], str | None] = lambda: None
    ) -> None:
        self.hive = hive
        #: The dashboard's login URL for ``status``, kept by whoever serves the dashboard.
        self.dashboard_url = dashboard_url
        #: The operator's requests about another node's agents (``hyperhive.remote``).
        self.commands = NodeCommands(
            hive.db,
            hive.nodes,
            self.carry_out,
            clock=hive.config.wall_clock,
            timeout=hive.config.remote_command_seconds,
        )

    async def dispatch(self, conn: Connection, request: Request) -> Reply:
        try:
            return await self._dispatch(conn, request)
        except OSError as exc:
            self.hive.refuse_if_disk_full(exc)
            raise
        except DatabaseFailed:
            # The daemon is about to stop and says why once; the caller just learns it.
            raise RequestRefused("the daemon's database failed; it is stopping") from None

    async def carry_out(self, request: Request) -> Reply:
        """A command another node asked for, about an agent of this node: carried out as
        on the host socket, by the operator. Never forwarded again."""
        agent = forwarded_agent(request)
        assert agent is not None  # hyperhive.remote decodes only those
        registry = self.hive.registry
        if not registry.is_local(agent):
            await registry.refresh([agent])  # it may have been placed here a moment ago
        if agent in registry.known() and not registry.is_local(agent):
            node = registry.get(agent).node
            raise RequestRefused(f"{agent} runs on node {node}, not on {registry.node}")
        operator = Connection(Principal(SocketKind.HOST, OPERATOR), peer_pid=None)
        return await self.dispatch(operator, request)

    def _elsewhere(self, request: Request) -> tuple[str, str] | None:
        """``(node, agent)`` when ``request`` needs an agent another node serves."""
        name = forwarded_agent(request)
        if name is None:
            return None
        agent = _name(name)
        registry = self.hive.registry
        if agent not in registry.known() or registry.is_local(agent):
            return None
        return registry.get(agent).node, agent

    def _only_local(self, name: str, request: Request) -> None:
        """An agent's request acts on agents of its own node only: it never becomes a
        command to another node (only the operator's do)."""
        registry = self.hive.registry
        if name in registry.known() and not registry.is_local(name):
            raise RequestRefused(
                f"{name} runs on node {registry.get(name).node}: {request.CMD} from an agent "
                "reaches only agents of its own node; the operator can do it from any node"
            )

    async def _dispatch(self, conn: Connection, request: Request) -> Reply:
        if isinstance(request, Hello):
            return await self._hello(conn, request)
        if conn.principal.kind is SocketKind.HOST:
            return await self._host(conn, request)
        return await self._agent(conn.principal.name, conn.principal.kind, request)

    def _books(self) -> Books:
        hive = self.hive
        return Books(
            questions=hive.questions,
            reminders=hive.reminders,
            approvals=hive.approvals,
            schedules=hive.schedules,
            schedule_check=hive.schedule_check,
        )

    def blocks(self, request: Request) -> bool:
        return isinstance(request, Recv) and request.wait_seconds > 0

    async def dispatch_now(self, conn: Connection, request: Request) -> Reply | None:
        if not isinstance(request, Recv):  # the only request that blocks
            return None
        messages = await self.hive.broker.recv_now(
            conn.principal.name, limit=request.max, ack=request.ack
        )
        return RecvReply(messages=messages) if messages else None

    async def reply_lost(self, conn: Connection, request: Request, reply: Reply) -> None:
        # Messages handed out in a reply nobody read go back to the inbox, as they were.
        if isinstance(reply, RecvReply) and reply.messages:
            await self.hive.broker.undeliver(conn.principal.name, [m.id for m in reply.messages])

    def closed(self, conn: Connection) -> None:
        if conn.feed is not None:
            conn.feed.close()  # unsubscribed, whether or not its lines were ever read
        if conn.role == ConnectionRole.HARNESS:
            self.hive.registry.harnesses[conn.principal.name] -= 1
            if self.hive.registry.harnesses[conn.principal.name] <= 0:
                del self.hive.registry.harnesses[conn.principal.name]
                self.hive.events.emit(HarnessDisconnected(name=conn.principal.name))

    async def _hello(self, conn: Connection, request: Hello) -> HelloReply:
        if request.protocol != PROTOCOL_VERSION:
            raise RequestRefused(
                f"protocol {request.protocol} is not supported; "
                f"this daemon speaks {PROTOCOL_VERSION}"
            )
        principal = conn.principal
        if request.role == ConnectionRole.HARNESS:
            if principal.kind is SocketKind.HOST:
                raise RequestRefused("a harness connects to an agent socket, not the host socket")
            if conn.role != ConnectionRole.HARNESS:
                self.hive.registry.harnesses[principal.name] += 1
                self.hive.events.emit(HarnessConnected(name=principal.name))
            # A harness saying hello starts afresh: what it took but never acked comes again.
            await self.hive.broker.requeue_unacked(principal.name)
        conn.role = request.role
        role = {SocketKind.HOST: PeerRole.OPERATOR, SocketKind.MANAGER: PeerRole.MANAGER}.get(
            principal.kind, PeerRole.AGENT
        )
        if role is PeerRole.AGENT and self.hive.registry.is_lead(principal.name):
            role = PeerRole.LEAD
        return HelloReply(protocol=PROTOCOL_VERSION, name=principal.name, role=role)

    # ------------------------------------------------------------ agent and manager sockets

    async def _schedules(self, me: str, request: Request) -> Reply | None:
        """The schedule verbs every socket serves; ``me`` is the caller (or ``operator``)."""
        if not isinstance(request, _SCHEDULE_VERBS):
            return None  # before the checks below, which read the whole hierarchy
        schedules = self.hive.schedules
        check = self.hive.schedule_check(me)
        match request:
            case EditSchedule():
                check_added_targets(me, request.targets_add, self.hive.in_subtree(me))
                changes = Changes(
                    body=request.body,
                    description=request.description,
                    interval_seconds=request.interval_seconds,
                    cron=request.cron,
                    once=request.once,
                    next_at=request.next_at,
                    targets_add=tuple(request.targets_add),
                    targets_remove=tuple(request.targets_remove),
                )

                def may_edit(info: ScheduleInfo) -> None:
                    check(info)
                    check_agent_cadence(me, info, changes)

                return ScheduleReply(schedule=await schedules.edit(request.id, changes, may_edit))
            case CancelSchedule(id=sid, targets=targets):
                return ScheduleReply(schedule=await schedules.cancel(sid, targets, check))
            case FireScheduleNow(id=sid):
                return ScheduleReply(schedule=await schedules.fire_now(sid, check))
            case ListSchedules(include_ended=include_ended):
                every = await schedules.list(include_ended=include_ended)
                below = self.hive.in_subtree(me)
                return SchedulesReply(schedules=[s for s in every if may_see(me, s, below)])
        return None

    async def _agent(self, me: str, kind: SocketKind, request: Request) -> Reply:
        hive = self.hive
        # The broker's requests first: most of what agents send.
        match request:
            case Send(to=to, body=body, in_reply_to=in_reply_to):
                sent = await hive.broker.send(me, to, body, in_reply_to)
                hive.ledger.note_activity(me)
                return SendReply(id=sent[0].id, ids=[m.id for m in sent])
            case Recv(wait_seconds=wait, max=limit, ack=ack):
                messages = await hive.broker.recv(me, wait_seconds=wait, limit=limit, ack=ack)
                return RecvReply(messages=messages)
            case Ack(ids=ids):
                return AckReply(acked=await hive.broker.ack(me, ids))
            case Status():
                return StatusReply(unread=await hive.broker.unread(me))
        reply = await self._schedules(me, request)
        if reply is not None:
            return reply
        match request:
            case Recent(limit=limit):
                return RecentReply(messages=await hive.broker.recent(me, limit))
            case Ask(question=q, options=options, multi=multi, ttl_seconds=ttl, to=asked):
                info = await hive.questions.ask(me, q, options, multi, ttl, asked)
                hive.ledger.note_activity(me)
                return IdReply(id=info.id)
            case Answer(id=qid, answer=answer):
                await hive.questions.answer_as_agent(me, qid, answer)
                hive.ledger.note_activity(me)
                return Empty()
            case GetLooseEnds():
                manager = kind is SocketKind.MANAGER
                now = hive.config.wall_clock()
                return await collect(self._books(), me, manager=manager, now=now)
            case CancelLooseEnd(kind=what, id=item_id):
                await cancel(self._books(), me, what, item_id)
                return Empty()
            case Remind(body=body, in_seconds=in_seconds, at=at, file_path=file_path):
                reminder = await hive.reminders.remind(
                    me, body, in_seconds=in_seconds, at=at, file_path=file_path
                )
                return ReminderReply(reminder=reminder)
            case Wake(from_=label, body=body, transient=transient):
                check_wake_label(label, hive.registry.known())
                check_body(body)
                sent = await hive.broker.inject([Outgoing(label, me, body, transient=transient)])
                return IdReply(id=sent[0].id)
            case SetStatus(text=text):
                if len(text) > MAX_STATUS_TEXT:
                    raise RequestRefused(f"status text is longer than {MAX_STATUS_TEXT} characters")
                await hive.registry.set_status_text(me, text)
                return Empty()
            case GetAgentMeta(name=name):
                record = hive.registry.get(_name(name) if name is not None else me)
                return AgentMetaReply(
                    name=record.name,
                    role=record.role,
                    model=hive.registry.model(record.name),
                    status_text=record.status_text,
                    parent=hive.registry.parent(record.name),
                    state=record.state,
                    paused_at=record.paused_at,
                    paused_reason=record.paused_reason,
                    paused_by=record.paused_by,
                    schedules=await hive.schedules.targeting(record.name),
                    pending_reminders=await hive.reminders.pending_count(record.name),
                )
            case RequestSchedule():
                spec = hive.schedules.check(
                    request.targets,
                    request.body,
                    request.first_at,
                    request.interval_seconds,
                    request.cron,
                    request.description,
                )
                return ApprovalReply(approval=await hive.request_schedule(me, spec))
            case RequestSpawn(name=name, description=description, node=node):
                # A lead's spawn becomes its child once approved; the manager's, a top agent.
                requester = MANAGER if kind is SocketKind.MANAGER else self._lead(me, request)
                return ApprovalReply(
                    approval=await hive.request_spawn(name, description, requester, node)
                )
            case RequestApplyCommit(agent=agent, commit_ref=ref, description=description):
                return ApprovalReply(
                    approval=await hive.request_apply_commit(agent, ref, description)
                )
            case Kill(name=name) | Start(name=name) | Restart(name=name) | Update(name=name):
                if kind is not SocketKind.MANAGER:
                    self._lead(me, request, _name(name))
                elif _name(name) == MANAGER:
                    raise RequestRefused(f"the manager cannot {request.CMD} itself")
                self._only_local(_name(name), request)
                await hive.lifecycle(request.CMD, name)
                return Empty()
            case ListContainers():
                return AgentsReply(agents=await hive.agent_infos())
            case GetLogs(agent=agent, lines=lines):
                if kind is not SocketKind.MANAGER:
                    self._lead(me, request, _name(agent))
                self._only_local(_name(agent), request)
                return await hive.logs(_name(agent), lines)
            case TurnReport():
                return TurnReportReply(recorded=await hive.turn_reported(me, request))
            case GetStats():
                stats = await hive.stats(me)
                return AgentStatsReply(
                    stats=stats.agents[0],
                    day_start=stats.day_start,
                    generated_at=stats.generated_at,
                )
        raise RequestRefused(f"{request.CMD!r} is not served on this socket")

    def _lead(self, me: str, request: Request, target: str | None = None) -> str:
        """Refuse unless ``me`` is a lead and ``target`` is strictly below it; returns ``me``.

        A lead acts on its subtree without itself (as the manager never acts on itself).
        """
        registry = self.hive.registry
        if not registry.is_lead(me):
            raise RequestRefused(
                f"{request.CMD} is for the manager and leads: {me} is not a lead "
                "(lead = true in its agent.toml grants it)"
            )
        if target is not None:
            registry.get(target)  # an unknown name is refused as such
            if target == me:
                raise RequestRefused(f"a lead cannot {request.CMD} itself")
            if not in_subtree(registry.parents(), me, target):
                raise RequestRefused(f"{target} is not in your subtree")
        return me

    # ------------------------------------------------------------ host socket (operator)

    async def _host(self, conn: Connection, request: Request) -> Reply:
        hive = self.hive
        reply = await self._schedules(OPERATOR, request)
        if reply is not None:
            return reply
        elsewhere = self._elsewhere(request)
        if elsewhere is not None:
            # Its node has its container and files: it carries the request out.
            return await self.commands.call(*elsewhere, request)
        match request:
            case HostStatus():
                unread = await hive.broker.unread_by_recipient()
                return HostStatusReply(
                    version=hyperhive.__version__,
                    protocol=PROTOCOL_VERSION,
                    pid=os.getpid(),
                    backend=BackendChoice(hive.backend),
                    started_at=hive.started_at,
                    agents=len(hive.registry.live()),
                    pending_approvals=len(await hive.approvals.list(pending_only=True)),
                    open_questions=len(await hive.questions.list()),
                    operator_unread=unread.get(OPERATOR, 0),
                    parked_receivers=hive.broker.parked(),
                    dashboard_url=self.dashboard_url(),
                    problems=hive.problems_now(),
                    credentials_warning=hive.credentials_warning(),
                    state_dir_bytes=hive.disk_usage.total if hive.disk_usage else None,
                    node=hive.config.node,
                    holds_duties=hive.duties.held if hive.nodes.shared else None,
                )
            case List():
                return AgentsReply(agents=await hive.agent_infos())
            case ListNodes():
                await hive.node_watch.check()  # the operator asked: the statuses of now
                return NodesReply(node=hive.config.node, nodes=hive.node_views())
            case Tombstones():
                return TombstonesReply(tombstones=await hive.tombstones())
            case Pending():
                return ApprovalsReply(approvals=await hive.approvals.list(pending_only=True))
            case Approvals(include_resolved=include_resolved):
                pending_only = not include_resolved
                return ApprovalsReply(
                    approvals=await hive.approvals.list(pending_only=pending_only)
                )
            case Approve(id=aid):
                return ApprovalReply(approval=await hive.approvals.approve(aid))
            case Deny(id=aid, note=note):
                return ApprovalReply(approval=await hive.approvals.deny(aid, note))
            case HostRequestSpawn(name=name, description=description, node=node):
                return ApprovalReply(
                    approval=await hive.request_spawn(name, description, OPERATOR, node)
                )
            case Spawn(name=name, backend=backend, node=node):
                record = await hive.spawn(name, backend=backend, node=node)
                return AgentReply(agent=await hive.agent_info(record))
            case Start(name=name) | Kill(name=name) | Restart(name=name) | Rebuild(name=name):
                await hive.lifecycle(request.CMD, _name(name))
                return Empty()
            case Destroy(name=name, purge=purge):
                await hive.destroy(_name(name), purge=purge)
                return Empty()
            case Revive(name=name):
                return ApprovalReply(approval=await hive.revive(_name(name)))
            case Questions(include_answered=include_answered):
                return QuestionsReply(
                    questions=await hive.questions.list(include_answered=include_answered)
                )
            case HostAnswer(id=qid, answer=answer):
                return QuestionReply(question=await hive.questions.answer_as_operator(qid, answer))
            case CancelQuestion(id=qid):
                return QuestionReply(question=await hive.questions.cancel_as_operator(qid))
            case HostSend(to=to, body=body, in_reply_to=in_reply_to):
                sent = await hive.broker.send(OPERATOR, to, body, in_reply_to)
                return SendReply(id=sent[0].id, ids=[m.id for m in sent])
            case Inbox(limit=limit):
                return RecentReply(messages=await hive.operator_inbox(limit))
            case SetModel(name=name, model=model):
                if not model.strip() or len(model) > 100 or any(c.isspace() for c in model):
                    raise RequestRefused("model must be one word of at most 100 characters")
                await hive.registry.set_model(_name(name), model)
                return Empty()
            case Logs(name=name, lines=lines):
                return await hive.logs(_name(name), lines)
            case AddSchedule():
                spec = hive.schedules.check(
                    request.targets,
                    request.body,
                    request.first_at,
                    request.interval_seconds,
                    request.cron,
                    request.description,
                    request.timezone,
                )
                return ScheduleReply(
                    schedule=await hive.schedules.create(OPERATOR, spec, SOURCE_OPERATOR)
                )
            case Compact(name=name):
                agent = _name(name)
                hive.registry.get(agent)
                try:
                    status = await agent_ui.post(hive.config.paths.ui_socket(agent), "/api/compact")
                except agent_ui.AgentUiUnavailable as exc:
                    raise RequestRefused(f"{agent}'s harness cannot be reached: {exc}") from None
                if status != 200:
                    raise RequestRefused(f"{agent}'s harness refused the compaction ({status})")
                return Empty()
            case Vacuum():
                messages, events = await hive.retention()
                await hive.measure_disk_usage()
                return VacuumReply(
                    deleted=messages.deleted,
                    events_deleted=events.deleted,
                    freed_bytes=messages.freed + events.freed,
                )
            case Pause(names=names, reason=reason):
                selected = _selection(names, "pause")
                for name in selected:  # every name is checked before any agent is paused
                    if hive.registry.get(name).state == AgentState.DESTROYED:
                        raise RequestRefused(f"{name} is destroyed; nothing to pause")
                for name in selected:
                    await hive.pause(name, reason, OPERATOR)
                return await self._agents_reply(selected)
            case Resume(names=names):
                selected = _selection(names, "resume")
                for name in selected:
                    hive.registry.get(name)
                for name in selected:
                    await hive.resume(name, OPERATOR)
                return await self._agents_reply(selected)
            case Watch():
                if conn.feed is not None:
                    raise RequestRefused("this connection is watching already")
                # Subscribed before the reply: no change after ``seq`` is missed.
                conn.feed = Feed(hive.events.subscribe())
                return WatchReply(seq=hive.events.seq)
            case Stats(name=name):
                return await hive.stats(None if name is None else _name(name))
            case SetParent(child=child, parent=parent):
                await hive.registry.set_parent(
                    _name(child), None if parent is None else _name(parent)
                )
                return Empty()
            case Reminders(include_sent=include_sent):
                return RemindersReply(
                    reminders=await hive.reminders.list(include_sent=include_sent)
                )
            case RetryReminder(id=rid):
                return ReminderReply(reminder=await hive.reminders.retry(rid))
            case CancelReminder(id=rid):
                return ReminderReply(reminder=await hive.reminders.cancel(rid))
        raise RequestRefused(f"{request.CMD!r} is not served on the host socket")

    async def _agents_reply(self, names: list[str]) -> AgentsReply:
        hive = self.hive
        return AgentsReply(agents=[await hive.agent_info(hive.registry.get(n)) for n in names])
